"""The requests an IdP sends most (bench/scim.py's Entra ID cycle: look-up, create, add to a
group, deactivate) run on prebuilt statements, and on PostgreSQL with several writes in one
statement: these tests pin what they write (rows, versions, audit events, sessions) and how
many statements they take, on whichever database the suite runs."""

from __future__ import annotations

import uuid
from urllib.parse import quote

from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent
from app.models import Group
from app.models import GroupMember
from app.models import Membership
from app.models import Session
from app.models import User
from app.services import sessions
from tests.scim.test_groups import StatementCounter
from tests.scim.test_groups import add_members_directly

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def entra_user(user_name: str, external_id: str = "ext-0001") -> dict:
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
        "externalId": external_id,
        "userName": user_name,
        "active": True,
        "displayName": "Bench User",
        "emails": [{"primary": True, "type": "work", "value": user_name}],
        "name": {"formatted": "Bench User", "familyName": "User", "givenName": "Bench"},
        ENTERPRISE: {"department": "Bench"},
    }


def events(app, action: str) -> list[AuditEvent]:
    with app.app_context():
        found = db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all()
        for event in found:
            db.session.expunge(event)
        return list(found)


def is_postgresql(app) -> bool:
    with app.app_context():
        return db.engine.dialect.name == "postgresql"


def test_entra_cycle_writes_what_it_always_wrote(app, scim, account):
    group = scim.post("/Groups", {"displayName": "Everyone"}).json
    user_name = "Alice@Example.com"

    lookup = scim.get("/Users?filter=" + quote(f'userName eq "{user_name}"'))
    assert lookup.status_code == 200
    assert lookup.json["totalResults"] == 0 and lookup.json["Resources"] == []

    created = scim.post("/Users", entra_user(user_name))
    assert created.status_code == 201, created.text
    body = created.json
    user_id = uuid.UUID(body["id"])
    assert created.headers["ETag"] == body["meta"]["version"] == 'W/"1"'
    assert body["meta"]["created"] == body["meta"]["lastModified"]
    assert body["userName"] == user_name and body["externalId"] == "ext-0001"
    assert body["active"] is True and "groups" not in body
    assert body[ENTERPRISE] == {"department": "Bench"}
    # The same resource as a later read returns.
    assert scim.get(f"/Users/{user_id}").json == body
    found = scim.get("/Users?filter=" + quote(f'userName eq "{user_name.upper()}"')).json
    assert found["totalResults"] == 1 and found["Resources"][0] == body

    with app.app_context():
        for method in ("oidc", "password"):
            sessions.insert_session(data={}, user_id=user_id, auth_method=method)
        db.session.commit()
        group_version = db.session.get(Group, uuid.UUID(group["id"])).version

    added = scim.patch(
        f"/Groups/{group['id']}?excludedAttributes=members",
        {
            "schemas": [PATCH],
            "Operations": [{"op": "Add", "path": "members", "value": [{"value": str(user_id)}]}],
        },
    )
    assert added.status_code == 200, added.text
    assert "members" not in added.json
    assert added.json["meta"]["version"] == f'W/"{group_version + 1}"'
    assert added.headers["ETag"] == added.json["meta"]["version"]
    # The user's groups changed, so did their ETag.
    read = scim.get(f"/Users/{user_id}").json
    assert read["meta"]["version"] == 'W/"2"'
    assert read["groups"] == [
        {
            "value": group["id"],
            "$ref": f"http://localhost/scim/v2/Groups/{group['id']}",
            "display": "Everyone",
            "type": "direct",
        }
    ]
    # Adding them again changes nothing (no new version, no event).
    again = scim.patch(
        f"/Groups/{group['id']}?excludedAttributes=members",
        {
            "schemas": [PATCH],
            "Operations": [{"op": "Add", "path": "members", "value": [{"value": str(user_id)}]}],
        },
    )
    assert again.json["meta"]["version"] == added.json["meta"]["version"]

    deactivated = scim.patch(
        f"/Users/{user_id}",
        {"schemas": [PATCH], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]},
    )
    assert deactivated.status_code == 200, deactivated.text
    assert deactivated.json["active"] is False
    # One version for the changed "active", one for the deactivation itself.
    assert deactivated.json["meta"]["version"] == 'W/"4"'
    assert deactivated.json["groups"] == read["groups"]
    assert scim.get(f"/Users/{user_id}").json == deactivated.json

    with app.app_context():
        user = db.session.get(User, user_id)
        assert user.active is False and user.version == 4
        assert user.email == "alice@example.com"
        assert user.user_name == user_name and user.user_name_key == "alice@example.com"
        assert user.given_name == "Bench" and user.family_name == "User"
        assert user.external_id == "ext-0001"
        assert user.managed_by_account_id == account.id
        assert user.scim_attributes == {
            "displayName": "Bench User",
            "emails": [{"primary": True, "type": "work", "value": user_name}],
            "name": {"formatted": "Bench User"},
            ENTERPRISE: {"department": "Bench"},
        }
        membership = db.session.scalar(select(Membership).where(Membership.user_id == user_id))
        assert membership.account_id == account.id and membership.role == "member"
        assert membership.active is False
        assert db.session.scalars(
            select(GroupMember.user_id).where(GroupMember.group_id == uuid.UUID(group["id"]))
        ).all() == [user_id]
        revoked = db.session.scalars(select(Session).where(Session.user_id == user_id)).all()
        assert sorted(row.revoked_reason for row in revoked) == ["scim_deactivated"] * 2
        assert all(row.revoked_at is not None for row in revoked)

    (created_event,) = events(app, "scim.user.created")
    token_id = created_event.details["token_id"]
    assert created_event.details == {"token_id": token_id, "userName": user_name}
    assert created_event.actor_label == "SCIM token Entra ID"
    assert created_event.account_id == account.id
    assert created_event.target_type == "user" and created_event.target_id == str(user_id)
    assert created_event.request_id and created_event.occurred_at is not None
    (group_event,) = events(app, "scim.group.updated")
    assert group_event.details == {
        "token_id": token_id,
        "attributes": ["members"],
        "via": "patch",
        "added": 1,
        "removed": 0,
    }
    assert group_event.target_type == "group" and group_event.target_id == group["id"]
    (deactivated_event,) = events(app, "scim.user.deactivated")
    assert deactivated_event.details == {
        "token_id": token_id,
        "managed": True,
        "sessions_ended": 2,
        "reason": "scim_deactivated",
    }
    assert deactivated_event.target_id == str(user_id)
    assert deactivated_event.account_id == account.id
    # Nothing else was written (no "updated" event for a change of "active" alone).
    assert events(app, "scim.user.updated") == []


def test_removing_members_bumps_versions_and_is_audited(app, scim, account):
    ids = add_members_directly(app, account.id, 3)
    group = scim.post("/Groups", {"displayName": "G", "members": [{"value": u} for u in ids]}).json

    body = scim.patch(
        f"/Groups/{group['id']}?excludedAttributes=members",
        {
            "schemas": [PATCH],
            "Operations": [
                {"op": "Remove", "path": "members", "value": [{"value": ids[0]}]},
                {"op": "remove", "path": f'members[value eq "{ids[1]}"]'},
                {"op": "Add", "path": "members", "value": [{"value": ids[0]}]},
            ],
        },
    ).json

    # ids[0] removed then added again: in the group, untouched; ids[1] removed.
    assert body["meta"]["version"] == 'W/"2"'
    members = scim.get(f"/Groups/{group['id']}").json["members"]
    assert sorted(m["value"] for m in members) == sorted([ids[0], ids[2]])
    assert scim.get(f"/Users/{ids[1]}").json["meta"]["version"] == 'W/"3"'
    assert scim.get(f"/Users/{ids[0]}").json["meta"]["version"] == 'W/"2"'
    updated = events(app, "scim.group.updated")
    assert [e.details["added"] for e in updated] == [0]
    assert [e.details["removed"] for e in updated] == [1]


def test_member_patch_errors_come_in_order(scim, other_scim, account):
    group = scim.post("/Groups", {"displayName": "G"}).json
    theirs = other_scim.post("/Users", entra_user("bob@example.com")).json
    path = f"/Groups/{group['id']}"
    add_theirs = {
        "schemas": [PATCH],
        "Operations": [{"op": "add", "path": "members", "value": [{"value": theirs["id"]}]}],
    }
    add_bad_id = {
        "schemas": [PATCH],
        "Operations": [{"op": "add", "path": "members", "value": [{"value": "not-an-id"}]}],
    }
    not_patch = {"schemas": [PATCH], "Operations": "nope"}

    # The group first: another account's group, or none, is 404 whatever the body.
    assert other_scim.patch(path, add_theirs).status_code == 404
    assert scim.patch(f"/Groups/{uuid.uuid4()}", not_patch).status_code == 404
    assert scim.patch("/Groups/not-a-uuid", add_bad_id).status_code == 404
    # Then the body, then If-Match, then the members.
    assert scim.patch(path, not_patch).json["scimType"] == "invalidSyntax"
    stale = {"If-Match": 'W/"99"'}
    assert scim.patch(path, add_bad_id, headers=stale).status_code == 412
    assert scim.patch(path, add_theirs, headers=stale).status_code == 412
    refused = scim.patch(path, add_bad_id)
    assert refused.status_code == 400 and refused.json["scimType"] == "invalidValue"
    # Another account's user reads like a missing one.
    refused = scim.patch(path, add_theirs)
    assert refused.status_code == 400 and refused.json["scimType"] == "invalidValue"
    assert scim.get(path).json["meta"]["version"] == group["meta"]["version"]


def test_create_checks_user_name_external_id_and_email_in_one_go(app, scim, make_user):
    make_user("taken@example.com")
    first = scim.post("/Users", entra_user("first@example.com", external_id="ext-1")).json

    # The externalId of another member of the account: 409, nothing written.
    clash = scim.post("/Users", entra_user("second@example.com", external_id="ext-1"))
    assert clash.status_code == 409 and clash.json["scimType"] == "uniqueness"
    # A userName held by anyone, in any case: 409.
    taken = scim.post("/Users", entra_user("FIRST@example.com", external_id="ext-2"))
    assert taken.status_code == 409
    assert scim.post("/Users", entra_user("Taken@Example.com", "ext-3")).status_code == 409
    # An address that belongs to another user is not claimed: the next candidate, or a
    # placeholder when there is none.
    body = entra_user("third@example.com", external_id="ext-4")
    body["emails"] = [{"primary": True, "type": "work", "value": "taken@example.com"}]
    third = scim.post("/Users", body)
    assert third.status_code == 201
    with app.app_context():
        assert db.session.get(User, uuid.UUID(third.json["id"])).email == "third@example.com"
    body = entra_user("fourth", external_id="ext-5")
    body["emails"] = [{"primary": True, "type": "work", "value": "TAKEN@example.com"}]
    fourth = scim.post("/Users", body)
    assert fourth.status_code == 201
    with app.app_context():
        email = db.session.get(User, uuid.UUID(fourth.json["id"])).email
        assert email == f"{uuid.UUID(fourth.json['id']).hex}@scim.invalid"
    assert [e.details["userName"] for e in events(app, "scim.user.created")] == [
        "first@example.com",
        "third@example.com",
        "fourth",
    ]
    assert first["meta"]["version"] == 'W/"1"'


def test_created_inactive_user_is_deactivated_at_once(app, scim):
    body = entra_user("late@example.com")
    body["active"] = False

    created = scim.post("/Users", body)

    assert created.status_code == 201
    assert created.json["active"] is False
    user_id = uuid.UUID(created.json["id"])
    with app.app_context():
        assert db.session.get(User, user_id).active is False
        membership = db.session.scalar(select(Membership).where(Membership.user_id == user_id))
        assert membership.active is False
    (event,) = events(app, "scim.user.deactivated")
    assert event.details["sessions_ended"] == 0 and event.details["managed"] is True


def test_the_entra_cycle_takes_a_handful_of_statements(app, scim, account):
    group = scim.post("/Groups", {"displayName": "Everyone"}).json
    scim.get("/Users")  # the token's last_used_at is written once; not part of the counts
    user_name = "counted@example.com"
    counts = {}

    with StatementCounter(app) as counter:
        scim.get("/Users?filter=" + quote(f'userName eq "{user_name}"'))
    counts["lookup"] = counter.count
    with StatementCounter(app) as counter:
        user_id = scim.post("/Users", entra_user(user_name)).json["id"]
    counts["create"] = counter.count
    with StatementCounter(app) as counter:
        scim.patch(
            f"/Groups/{group['id']}?excludedAttributes=members",
            {
                "schemas": [PATCH],
                "Operations": [{"op": "Add", "path": "members", "value": [{"value": user_id}]}],
            },
        )
    counts["membership"] = counter.count
    with StatementCounter(app) as counter:
        scim.patch(
            f"/Users/{user_id}",
            {
                "schemas": [PATCH],
                "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
            },
        )
    counts["deactivate"] = counter.count

    # Token and user; token, one check, the inserts, the event; token, group with the
    # members' state, the writes...; token, user with groups, the writes, the event.
    if is_postgresql(app):
        assert counts == {"lookup": 2, "create": 3, "membership": 3, "deactivate": 4}
    else:
        assert counts == {"lookup": 2, "create": 5, "membership": 6, "deactivate": 6}
