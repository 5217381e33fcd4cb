"""Multi-account rules (DESIGN "Accounts, users and SCIM"): isolation, managed users,
membership-only control, uniqueness without leaks."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from app.extensions import db
from app.models import Membership
from app.models import Session
from app.models import User
from app.services import accounts
from app.services import sessions
from tests.scim.conftest import user_body

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def ops(*operations):
    return {"schemas": [PATCH], "Operations": list(operations)}


def test_another_accounts_token_sees_and_changes_nothing(scim, other_scim):
    user = scim.post("/Users", user_body("alice@acme.example")).json
    group = scim.post(
        "/Groups", {"displayName": "Acme staff", "members": [{"value": user["id"]}]}
    ).json

    for method, path, body in [
        ("GET", f"/Users/{user['id']}", None),
        ("PUT", f"/Users/{user['id']}", user_body("mallory@globex.example")),
        ("PATCH", f"/Users/{user['id']}", ops({"op": "replace", "path": "active", "value": False})),
        ("DELETE", f"/Users/{user['id']}", None),
        ("GET", f"/Groups/{group['id']}", None),
        ("PUT", f"/Groups/{group['id']}", {"displayName": "x"}),
        ("PATCH", f"/Groups/{group['id']}", ops({"op": "remove", "path": "members"})),
        ("DELETE", f"/Groups/{group['id']}", None),
    ]:
        response = other_scim.request(method, path, body)
        assert response.status_code == 404, (method, path, response.text)
        # Exactly the answer for an id that exists nowhere.
        resource_id = path.rsplit("/", 1)[-1]
        missing = str(uuid.uuid4())
        nowhere = other_scim.request(method, path.replace(resource_id, missing), body)
        assert response.json == {
            **nowhere.json,
            "detail": nowhere.json["detail"].replace(missing, resource_id),
        }
    assert other_scim.get("/Users").json["totalResults"] == 0
    assert other_scim.get("/Groups").json["totalResults"] == 0
    assert (
        other_scim.get('/Users?filter=userName eq "alice@acme.example"').json["totalResults"] == 0
    )
    assert other_scim.post("/.search", {}).json["totalResults"] == 0
    # Nor can B put A's user into one of B's groups.
    theirs = other_scim.post(
        "/Groups", {"displayName": "Globex", "members": [{"value": user["id"]}]}
    )
    assert theirs.status_code == 400
    # A's resources are untouched.
    assert scim.get(f"/Users/{user['id']}").json["active"] is True
    assert scim.get(f"/Groups/{group['id']}").json["members"][0]["value"] == user["id"]


def test_user_name_of_someone_outside_the_account_is_409_without_details(
    scim, other_scim, make_user
):
    make_user("local@example.com")
    scim.post("/Users", user_body("alice@acme.example", externalId="secret-ext"))

    for user_name in ("local@example.com", "ALICE@acme.example"):
        response = other_scim.post("/Users", user_body(user_name))
        assert response.status_code == 409
        assert response.json == {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
            "status": "409",
            "detail": "userName is already taken",
            "scimType": "uniqueness",
        }


def test_a_member_the_account_does_not_manage_keeps_their_attributes(app, scim, account, make_user):
    local = make_user("owner@acme.example", account_id=account.id, role="admin")
    with app.app_context():
        sessions.insert_session(data={}, user_id=local.id, auth_method="password")
        db.session.commit()
    path = f"/Users/{local.id}"

    listed = scim.get('/Users?filter=userName eq "owner@acme.example"').json["Resources"]
    assert [r["id"] for r in listed] == [str(local.id)]
    assert listed[0]["emails"] == [{"value": "owner@acme.example", "primary": True}]
    # Attribute changes are ignored (PUT and PATCH alike); the answer shows what is true.
    patched = scim.patch(
        path,
        ops(
            {"op": "replace", "path": "userName", "value": "hijack@evil.example"},
            {"op": "replace", "path": "name.givenName", "value": "Mallory"},
            {"op": "add", "path": "password", "value": "a brand new password for me"},
        ),
    )
    assert patched.status_code == 200
    assert patched.json["userName"] == "owner@acme.example"
    put = scim.put(path, user_body("hijack@evil.example", active=True))
    assert put.json["userName"] == "owner@acme.example"
    with app.app_context():
        user = db.session.get(User, local.id)
        assert user.email == "owner@acme.example" and user.given_name is None
        assert user.password_hash is not None
    # active=false ends the membership's grant, not the user: other accounts and sessions stay.
    body = scim.patch(path, ops({"op": "replace", "value": {"active": False}})).json
    assert body["active"] is False
    with app.app_context():
        user = db.session.get(User, local.id)
        assert user.active is True
        assert accounts.role_in(user, account.id) is None
        assert (
            db.session.scalar(select(Session.revoked_at).where(Session.user_id == local.id)) is None
        )
    scim.patch(path, ops({"op": "replace", "path": "active", "value": True}))
    with app.app_context():
        assert accounts.role_in(db.session.get(User, local.id), account.id).value == "admin"
    # DELETE takes the user out of this account only.
    assert scim.delete(path).status_code == 204
    with app.app_context():
        user = db.session.get(User, local.id)
        assert user.active is True
        assert (
            db.session.scalars(select(Membership).where(Membership.user_id == local.id)).all() == []
        )


def test_a_managed_user_in_two_accounts(app, scim, other_scim, account, other_account):
    created = scim.post("/Users", user_body("alice@acme.example")).json
    user_id = uuid.UUID(created["id"])
    with app.app_context():
        accounts.add_member(
            accounts.get_account(other_account.id),
            db.session.get(User, user_id),
            accounts.Role.MEMBER,
        )
        db.session.commit()

    # Globex sees its member but controls only its membership.
    seen = other_scim.get(f"/Users/{user_id}").json
    assert seen["userName"] == "alice@acme.example"
    other_scim.patch(
        f"/Users/{user_id}", ops({"op": "replace", "path": "displayName", "value": "x"})
    )
    other_scim.patch(f"/Users/{user_id}", ops({"op": "replace", "path": "active", "value": False}))
    assert other_scim.get(f"/Users/{user_id}").json["active"] is False
    assert scim.get(f"/Users/{user_id}").json["active"] is True
    assert "displayName" not in scim.get(f"/Users/{user_id}").json
    # Acme (the manager) deletes: the user is deprovisioned everywhere.
    assert scim.delete(f"/Users/{user_id}").status_code == 204
    assert other_scim.get(f"/Users/{user_id}").status_code == 404
    with app.app_context():
        assert db.session.get(User, user_id).active is False
