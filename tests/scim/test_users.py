"""/scim/v2/Users: create, read, replace, patch, delete; ETags; pagination; projections;
malformed requests."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import Session
from app.models import User
from app.services import sessions
from tests.scim.conftest import user_body

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


def patch_ops(*operations: dict) -> dict:
    return {"schemas": [PATCH], "Operations": list(operations)}


def create(scim, user_name: str = "bjensen@example.com", **extra) -> dict:
    response = scim.post("/Users", user_body(user_name, **extra))
    assert response.status_code == 201, response.text
    return response.json


def test_create_answers_201_with_location_etag_and_meta(scim):
    response = scim.post(
        "/Users",
        user_body(
            "bjensen@example.com",
            externalId="ext-1",
            displayName="Babs",
            **{
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                    "employeeNumber": "701984",
                    "department": "Tour Operations",
                }
            },
        ),
    )

    assert response.status_code == 201
    assert response.mimetype == "application/scim+json"
    body = response.json
    assert response.headers["Location"] == f"http://localhost/scim/v2/Users/{body['id']}"
    assert response.headers["ETag"] == body["meta"]["version"] == 'W/"1"'
    assert body["schemas"] == [
        "urn:ietf:params:scim:schemas:core:2.0:User",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
    ]
    assert body["userName"] == "bjensen@example.com"
    assert body["externalId"] == "ext-1"
    assert body["displayName"] == "Babs"
    assert body["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"] == {
        "employeeNumber": "701984",
        "department": "Tour Operations",
    }
    assert body["meta"]["resourceType"] == "User"
    assert body["meta"]["created"] <= body["meta"]["lastModified"]
    assert scim.get(f"/Users/{body['id']}").json == body


def test_read_only_values_in_a_post_are_ignored(scim):
    body = create(
        scim,
        id="not-mine",
        groups=[{"value": "x"}],
        meta={"version": 'W/"99"'},
        password="a long enough password for the policy",
    )

    assert body["id"] != "not-mine"
    assert "groups" not in body
    assert "password" not in body
    assert body["meta"]["version"] == 'W/"1"'


def test_user_name_is_unique_case_insensitively(scim):
    create(scim, "Alice@Example.com")

    response = scim.post("/Users", user_body("alice@example.COM"))

    assert response.status_code == 409
    assert response.json["scimType"] == "uniqueness"
    assert response.json["schemas"] == [ERROR]


def test_missing_user_name_is_400_invalid_value(scim):
    response = scim.post("/Users", {"schemas": [], "name": {"givenName": "x"}})

    assert response.status_code == 400
    assert response.json["scimType"] == "invalidValue"


def test_wrong_types_are_400_invalid_value(scim):
    for bad in ({"active": "maybe"}, {"emails": "x"}, {"name": "x"}):
        response = scim.post("/Users", {**user_body("x@example.com"), **bad})
        assert response.status_code == 400, bad
        assert response.json["scimType"] == "invalidValue"


def test_put_replaces_every_attribute(scim):
    user = create(scim, displayName="Babs", title="Tour Guide")

    response = scim.put(f"/Users/{user['id']}", {"userName": "bjensen@example.com", "active": True})

    assert response.status_code == 200
    assert "displayName" not in response.json
    assert "title" not in response.json
    assert "name" not in response.json


def test_patch_add_replace_remove_with_and_without_paths(scim):
    user = create(scim)
    path = f"/Users/{user['id']}"

    body = scim.patch(
        path,
        patch_ops(
            {"op": "add", "path": "nickName", "value": "Babs"},
            {"op": "add", "value": {"title": "Guide", "name.middleName": "Q"}},
            {"op": "add", "path": "emails", "value": [{"value": "b@home.example", "type": "home"}]},
            {"op": "replace", "path": 'emails[type eq "home"].display', "value": "Home"},
            {"op": "remove", "path": 'emails[type eq "work"]'},
            {"op": "replace", "path": "name", "value": {"givenName": "Barb"}},
        ),
    ).json

    assert body["nickName"] == "Babs"
    assert body["title"] == "Guide"
    assert body["name"] == {"givenName": "Barb", "familyName": "Jensen", "middleName": "Q"}
    assert body["emails"] == [{"value": "b@home.example", "type": "home", "display": "Home"}]

    body = scim.patch(path, patch_ops({"op": "remove", "path": "name.middleName"})).json
    assert body["name"] == {"givenName": "Barb", "familyName": "Jensen"}
    body = scim.patch(path, patch_ops({"op": "remove", "path": "emails"})).json
    assert "emails" not in body


def test_patch_errors(scim):
    user = create(scim)
    path = f"/Users/{user['id']}"
    cases = [
        (patch_ops({"op": "replace", "path": "id", "value": "x"}), "mutability"),
        (patch_ops({"op": "add", "path": "groups", "value": [{"value": "x"}]}), "mutability"),
        (patch_ops({"op": "replace", "path": "meta.created", "value": "x"}), "mutability"),
        (patch_ops({"op": "remove"}), "noTarget"),
        (patch_ops({"op": "replace", "path": "nope", "value": 1}), "invalidPath"),
        (patch_ops({"op": "replace", "path": "emails[type eq", "value": 1}), "invalidPath"),
        (patch_ops({"op": "replace", "path": 'emails[type co "zzz"]', "value": {}}), "noTarget"),
        (patch_ops({"op": "explode", "path": "title"}), "invalidSyntax"),
        ({"schemas": [PATCH], "Operations": []}, "invalidSyntax"),
        (patch_ops({"op": "remove", "path": "userName"}), "invalidValue"),
    ]
    for body, scim_type in cases:
        response = scim.patch(path, body)
        assert response.status_code == 400, (body, response.text)
        assert response.json["scimType"] == scim_type, (body, response.json)
    # Nothing of the failed requests stuck.
    assert scim.get(path).json["meta"]["version"] == user["meta"]["version"]


def test_etag_if_match_and_if_none_match(scim):
    user = create(scim)
    path = f"/Users/{user['id']}"
    first = scim.get(path)
    etag = first.headers["ETag"]

    assert scim.get(path, headers={"If-None-Match": etag}).status_code == 304
    changed = scim.patch(
        path,
        patch_ops({"op": "add", "path": "title", "value": "Guide"}),
        headers={"If-Match": etag},
    )
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    stale = scim.patch(
        path, patch_ops({"op": "add", "path": "title", "value": "Boss"}), headers={"If-Match": etag}
    )
    assert stale.status_code == 412
    assert stale.json["schemas"] == [ERROR]
    assert (
        scim.put(path, user_body("bjensen@example.com"), headers={"If-Match": etag}).status_code
        == 412
    )
    assert scim.delete(path, headers={"If-Match": etag}).status_code == 412
    assert scim.get(path).json["title"] == "Guide"
    current = changed.headers["ETag"]
    assert scim.delete(path, headers={"If-Match": current}).status_code == 204


def test_deactivation_ends_every_session_and_reactivation_works(app, scim):
    user = create(scim)
    with app.app_context():
        sessions.insert_session(data={}, user_id=uuid.UUID(user["id"]), auth_method="oidc")
        sessions.insert_session(data={}, user_id=uuid.UUID(user["id"]), auth_method="password")
        db.session.commit()

    body = scim.patch(
        f"/Users/{user['id']}", patch_ops({"op": "Replace", "path": "active", "value": "False"})
    ).json

    assert body["active"] is False
    with app.app_context():
        rows = db.session.scalars(
            select(Session).where(Session.user_id == uuid.UUID(user["id"]))
        ).all()
        assert [row.revoked_reason for row in rows] == ["scim_deactivated"] * 2
        assert db.session.get(User, uuid.UUID(user["id"])).active is False
    body = scim.patch(
        f"/Users/{user['id']}", patch_ops({"op": "replace", "value": {"active": True}})
    ).json
    assert body["active"] is True
    with app.app_context():
        assert db.session.get(User, uuid.UUID(user["id"])).active is True


def test_delete_makes_the_resource_404_and_the_user_name_can_be_provisioned_again(app, scim):
    user = create(scim)

    assert scim.delete(f"/Users/{user['id']}").status_code == 204
    assert scim.get(f"/Users/{user['id']}").status_code == 404
    assert scim.delete(f"/Users/{user['id']}").status_code == 404
    assert scim.get('/Users?filter=userName eq "bjensen@example.com"').json["totalResults"] == 0
    again = create(scim)
    # The same person record, provisioned afresh (the audit trail keeps one id).
    assert again["id"] == user["id"]
    assert again["active"] is True


def test_pagination_and_sorting(scim):
    for n in range(5):
        create(scim, f"user{n}@example.com", name={"givenName": f"G{4 - n}", "familyName": "F"})

    page = scim.get("/Users?startIndex=2&count=2&sortBy=userName").json
    assert page["totalResults"] == 5
    assert page["startIndex"] == 2
    assert page["itemsPerPage"] == 2
    assert [r["userName"] for r in page["Resources"]] == ["user1@example.com", "user2@example.com"]
    page = scim.get("/Users?sortBy=name.givenName&sortOrder=descending&count=1").json
    assert page["Resources"][0]["userName"] == "user0@example.com"
    empty = scim.get("/Users?count=0").json
    assert empty["totalResults"] == 5 and empty["Resources"] == []
    beyond = scim.get("/Users?startIndex=50").json
    assert beyond["Resources"] == [] and beyond["totalResults"] == 5
    assert scim.get("/Users?count=abc").json["scimType"] == "invalidValue"
    assert scim.get("/Users?sortBy=emails").status_code == 400


@pytest.fixture
def small_pages(app):
    app.config["SCIM_MAX_RESULTS"] = 2


def test_count_is_capped_and_advertised(scim, small_pages):
    for n in range(3):
        create(scim, f"user{n}@example.com")

    assert scim.get("/ServiceProviderConfig").json["filter"] == {"supported": True, "maxResults": 2}
    page = scim.get("/Users?count=100").json
    assert page["itemsPerPage"] == 2 and page["totalResults"] == 3


def test_attributes_and_excluded_attributes(scim):
    user = create(
        scim,
        displayName="Babs",
        **{"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "D"}},
    )
    path = f"/Users/{user['id']}"

    only = scim.get(f"{path}?attributes=userName,name.givenName").json
    assert set(only) == {"schemas", "id", "userName", "name"}
    assert only["name"] == {"givenName": "Barbara"}
    without = scim.get(f"{path}?excludedAttributes=emails,name.familyName,meta").json
    assert "emails" not in without and "meta" not in without
    assert without["name"] == {"givenName": "Barbara"}
    extension = scim.get(
        f"{path}?attributes=urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"
    ).json
    assert extension["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"] == {
        "department": "D"
    }
    listed = scim.get("/Users?attributes=userName").json["Resources"][0]
    assert set(listed) == {"schemas", "id", "userName"}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("{not json", "application/scim+json"),
        ('{"userName": NaN}', "application/json"),
        ("[1, 2", "application/scim+json"),
        ("userName=x", "application/x-www-form-urlencoded"),
        ("\xff\xfe", "application/scim+json"),
        ("[]", "application/scim+json"),
        ("[" * 100000, "application/scim+json"),
    ],
)
def test_malformed_requests_are_400_with_a_scim_error(scim, body, content_type):
    response = scim.client.post(
        "/scim/v2/Users", data=body, headers=scim.headers(), content_type=content_type
    )

    assert response.status_code == 400, response.text
    assert response.mimetype == "application/scim+json"
    assert response.json["schemas"] == [ERROR]
    assert response.json["status"] == "400"
    assert response.json["scimType"] in ("invalidSyntax", "invalidValue")


def test_oversized_body_is_413(scim, app):
    app.config["SCIM_MAX_PAYLOAD"] = 1000
    response = scim.post("/Users", user_body("x@example.com", displayName="x" * 2000))

    assert response.status_code == 413
    assert response.json["schemas"] == [ERROR]


def test_unknown_paths_methods_and_ids_are_scim_errors(scim):
    for method, path, status in [
        ("GET", "/Nope", 404),
        ("GET", "/Users/not-a-uuid", 404),
        ("GET", f"/Users/{uuid.uuid4()}", 404),
        ("PATCH", f"/Groups/{uuid.uuid4()}", 404),
        ("DELETE", "/ServiceProviderConfig", 405),
        ("PUT", "/Users", 405),
        ("GET", "/Me", 501),
    ]:
        response = scim.request(method, path, {} if method in ("PATCH",) else None)
        assert response.status_code == status, (method, path, response.text)
        assert response.json["schemas"] == [ERROR]
        assert response.json["status"] == str(status)


def test_discovery_documents(scim):
    config = scim.get("/ServiceProviderConfig").json
    assert config["patch"]["supported"] and config["etag"]["supported"]
    assert config["bulk"] == {"supported": True, "maxOperations": 100, "maxPayloadSize": 1048576}
    types = scim.get("/ResourceTypes").json
    assert {t["id"] for t in types["Resources"]} == {"User", "Group"}
    assert scim.get("/ResourceTypes/User").json["schemaExtensions"] == [
        {"schema": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User", "required": False}
    ]
    schemas = scim.get("/Schemas").json
    assert len(schemas["Resources"]) == 3
    user = scim.get("/Schemas/urn:ietf:params:scim:schemas:core:2.0:User").json
    password = next(a for a in user["attributes"] if a["name"] == "password")
    assert password["returned"] == "never" and password["mutability"] == "writeOnly"
