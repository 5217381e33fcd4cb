"""/scim/v2/Groups, and the 1,000-member membership PATCH Entra ID sends, written set-based."""

from __future__ import annotations

import uuid

from sqlalchemy import event
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select

from app.extensions import db
from app.models import GroupMember
from app.models import Membership
from app.models import User
from app.models.base import utcnow

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def add_members_directly(app, account_id: int, count: int) -> list[str]:
    """``count`` users of the account, inserted in two statements (the test is about the
    PATCH, not about creating users)."""
    now = utcnow()
    ids = [uuid.uuid4() for _ in range(count)]
    with app.app_context():
        db.session.execute(
            insert(User),
            [
                {
                    "id": uid,
                    "email": f"member{n}@example.com",
                    "user_name_key": f"member{n}@example.com",
                    "active": True,
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for n, uid in enumerate(ids)
            ],
        )
        db.session.execute(
            insert(Membership),
            [
                {"user_id": uid, "account_id": account_id, "role": "member", "created_at": now}
                for uid in ids
            ],
        )
        db.session.commit()
    return [str(uid) for uid in ids]


class StatementCounter:
    def __init__(self, app) -> None:
        self.app = app
        self.count = 0

    def __enter__(self):
        with self.app.app_context():
            self.engine = db.engine
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def _count(self, *args) -> None:
        self.count += 1

    def __exit__(self, *exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)


def member_count(app, group_id: str) -> int:
    with app.app_context():
        return db.session.scalar(
            select(func.count()).where(GroupMember.group_id == uuid.UUID(group_id))
        )


def test_group_crud(scim, make_user, account):
    alice = scim.post("/Users", {"userName": "alice@example.com"}).json["id"]

    created = scim.post(
        "/Groups",
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "Engineering",
            "externalId": "g-1",
            "members": [{"value": alice, "type": "User"}],
        },
    )
    assert created.status_code == 201
    group = created.json
    assert created.headers["ETag"] == group["meta"]["version"]
    assert group["members"] == [
        {"value": alice, "$ref": f"http://localhost/scim/v2/Users/{alice}", "type": "User"}
    ]
    path = f"/Groups/{group['id']}"
    assert scim.get(path).json == group
    replaced = scim.put(path, {"displayName": "Eng", "members": []}).json
    assert replaced["displayName"] == "Eng" and "members" not in replaced
    assert "externalId" not in replaced
    assert scim.get(f"/Users/{alice}").json.get("groups") is None
    assert scim.delete(path).status_code == 204
    assert scim.get(path).status_code == 404


def test_group_errors(scim):
    assert scim.post("/Groups", {"members": []}).json["scimType"] == "invalidValue"
    unknown = scim.post("/Groups", {"displayName": "x", "members": [{"value": str(uuid.uuid4())}]})
    assert unknown.status_code == 400 and unknown.json["scimType"] == "invalidValue"
    junk = scim.post("/Groups", {"displayName": "x", "members": [{"value": "junk"}]})
    assert junk.status_code == 400
    group = scim.post("/Groups", {"displayName": "x"}).json
    nested = scim.patch(
        f"/Groups/{group['id']}",
        {
            "schemas": [PATCH],
            "Operations": [
                {"op": "add", "path": "members", "value": [{"value": group["id"], "type": "Group"}]}
            ],
        },
    )
    assert nested.status_code == 400
    read_only = scim.patch(
        f"/Groups/{group['id']}",
        {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "id", "value": "x"}]},
    )
    assert read_only.json["scimType"] == "mutability"


def test_a_thousand_members_in_one_patch_is_a_handful_of_statements(app, scim, account):
    ids = add_members_directly(app, account.id, 1000)
    group = scim.post("/Groups", {"displayName": "Everyone"}).json
    path = f"/Groups/{group['id']}"
    body = {
        "schemas": [PATCH],
        "Operations": [{"op": "Add", "path": "members", "value": [{"value": uid} for uid in ids]}],
    }

    with StatementCounter(app) as counter:
        response = scim.patch(path + "?excludedAttributes=members", body)

    assert response.status_code == 200, response.text
    assert member_count(app, group["id"]) == 1000
    # Token, group, current members, 2 membership checks, one executemany INSERT, 2 version
    # UPDATEs, audit... : a constant, not one statement per member.
    assert counter.count < 40, counter.count
    assert "members" not in response.json
    # Entra's removal of 500 of them, also as one operation with a value list.
    remove = {
        "schemas": [PATCH],
        "Operations": [
            {"op": "Remove", "path": "members", "value": [{"value": uid} for uid in ids[:500]]}
        ],
    }
    with StatementCounter(app) as counter:
        assert scim.patch(path + "?excludedAttributes=members", remove).status_code == 200
    assert member_count(app, group["id"]) == 500
    assert counter.count < 40, counter.count
    # The users' groups (and so their ETags) changed with the membership.
    assert scim.get(f"/Users/{ids[0]}").json.get("groups") is None
    assert scim.get(f"/Users/{ids[999]}").json["groups"][0]["value"] == group["id"]
    listed = scim.get('/Groups?filter=displayName eq "Everyone"').json["Resources"][0]
    assert len(listed["members"]) == 500


def test_member_filters_in_patch_paths(app, scim, account):
    ids = add_members_directly(app, account.id, 3)
    group = scim.post("/Groups", {"displayName": "G", "members": [{"value": u} for u in ids]}).json
    path = f"/Groups/{group['id']}"

    body = scim.patch(
        path,
        {
            "schemas": [PATCH],
            "Operations": [
                {"op": "remove", "path": f'members[value eq "{ids[0]}" or value eq "{ids[1]}"]'}
            ],
        },
    ).json
    assert [m["value"] for m in body["members"]] == [ids[2]]
    body = scim.patch(
        path, {"schemas": [PATCH], "Operations": [{"op": "remove", "path": "members"}]}
    ).json
    assert "members" not in body
    body = scim.patch(
        path,
        {
            "schemas": [PATCH],
            "Operations": [{"op": "replace", "value": {"members": [{"value": ids[1]}]}}],
        },
    ).json
    assert [m["value"] for m in body["members"]] == [ids[1]]
