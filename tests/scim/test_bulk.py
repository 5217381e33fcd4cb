"""/scim/v2/Bulk (RFC 7644 §3.7): bulkId references, failOnErrors, limits (413)."""

from __future__ import annotations

import pytest

BULK = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


def bulk(scim, operations, **extra):
    return scim.post("/Bulk", {"schemas": [BULK], "Operations": operations, **extra})


def test_bulk_ids_reference_earlier_creations(scim):
    response = bulk(
        scim,
        [
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": "u1",
                "data": {"userName": "alice@example.com"},
            },
            {
                "method": "POST",
                "path": "/Groups",
                "bulkId": "g1",
                "data": {
                    "displayName": "Tour Guides",
                    "members": [{"type": "User", "value": "bulkId:u1"}],
                },
            },
            {
                "method": "PATCH",
                "path": "/Groups/bulkId:g1",
                "data": {
                    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "replace", "path": "displayName", "value": "Guides"}],
                },
            },
            {"method": "DELETE", "path": "/Users/bulkId:u1"},
        ],
    )

    assert response.status_code == 200
    body = response.json
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:BulkResponse"]
    statuses = [op["status"] for op in body["Operations"]]
    assert statuses == ["201", "201", "200", "204"]
    user_location, group_location = (
        body["Operations"][0]["location"],
        body["Operations"][1]["location"],
    )
    assert body["Operations"][0]["bulkId"] == "u1"
    assert body["Operations"][1]["version"]
    group = scim.get(group_location.removeprefix("http://localhost/scim/v2")).json
    assert group["displayName"] == "Guides"
    # The user was deleted by the last operation: gone, and gone from the group.
    assert scim.get(user_location.removeprefix("http://localhost/scim/v2")).status_code == 404
    assert "members" not in group


def test_failed_operations_leave_no_trace_and_fail_on_errors_stops(scim):
    response = bulk(
        scim,
        [
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": "a",
                "data": {"userName": "a@example.com"},
            },
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": "b",
                "data": {"userName": "A@example.com"},
            },
            {"method": "PATCH", "path": "/Users/bulkId:nope", "data": {}},
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": "c",
                "data": {"userName": "c@example.com"},
            },
        ],
        failOnErrors=2,
    )

    operations = response.json["Operations"]
    assert [op["status"] for op in operations] == ["201", "409", "409"]
    assert operations[1]["response"]["scimType"] == "uniqueness"
    assert operations[2]["response"]["scimType"] == "invalidValue"
    listed = scim.get("/Users").json
    assert [r["userName"] for r in listed["Resources"]] == ["a@example.com"]


def test_bulk_errors_per_operation(scim):
    response = bulk(
        scim,
        [
            {"method": "GET", "path": "/Users"},
            {"method": "POST", "path": "/Users", "data": {"userName": "x@example.com"}},
            {"method": "POST", "path": "/Nope", "bulkId": "n", "data": {}},
            {
                "method": "PUT",
                "path": "/Users/00000000-0000-0000-0000-000000000000",
                "data": {"userName": "y"},
            },
        ],
    )
    assert [op["status"] for op in response.json["Operations"]] == ["400", "400", "400", "404"]


def test_bulk_limits_are_advertised_and_enforced(scim, app):
    app.config["SCIM_BULK_MAX_OPERATIONS"] = 2
    app.config["SCIM_BULK_MAX_PAYLOAD"] = 2000
    config = scim.get("/ServiceProviderConfig").json["bulk"]
    assert config == {"supported": True, "maxOperations": 2, "maxPayloadSize": 2000}

    too_many = bulk(scim, [{"method": "DELETE", "path": f"/Users/{n}"} for n in range(3)])
    assert too_many.status_code == 413
    assert too_many.json["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    too_big = bulk(
        scim,
        [{"method": "POST", "path": "/Users", "bulkId": "x", "data": {"userName": "x" * 3000}}],
    )
    assert too_big.status_code == 413


@pytest.mark.parametrize(
    "body",
    [
        {"Operations": []},
        {"schemas": [BULK]},
        [],
        {"schemas": [BULK], "Operations": [], "failOnErrors": 0},
    ],
)
def test_malformed_bulk_requests_are_400(scim, body):
    response = scim.post("/Bulk", body)
    assert response.status_code == 400
    assert response.json["status"] == "400"
