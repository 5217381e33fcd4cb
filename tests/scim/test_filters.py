"""Filters (RFC 7644 §3.4.2.2) run as SQL on both databases; bad ones are 400 invalidFilter."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.scim.conftest import user_body

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


@pytest.fixture
def people(scim) -> dict[str, str]:
    ids = {}
    for user_name, extra in [
        (
            "alice@acme.example",
            {
                "name": {"givenName": "Alice", "familyName": "Liddell"},
                "emails": [
                    {"value": "alice@acme.example", "type": "work", "primary": True},
                    {"value": "alice@home.example", "type": "home"},
                ],
                "title": "Engineer",
                "externalId": "ext-alice",
                ENTERPRISE: {"department": "R&D", "employeeNumber": "100"},
            },
        ),
        (
            "bob@acme.example",
            {
                "name": {"givenName": "Bob", "familyName": "Builder"},
                "emails": [{"value": "bob@ACME.example", "type": "home"}],
                "active": False,
                ENTERPRISE: {"department": "Sales"},
            },
        ),
        ("Carol.X@globex.example", {"name": {"givenName": "Carol"}, "emails": []}),
    ]:
        response = scim.post("/Users", user_body(user_name, **extra))
        assert response.status_code == 201, response.text
        ids[user_name.split("@")[0].lower()] = response.json["id"]
    return ids


def names(scim, text: str) -> list[str]:
    response = scim.get(f"/Users?filter={quote(text)}&sortBy=userName")
    assert response.status_code == 200, (text, response.text)
    return [r["userName"].split("@")[0].lower() for r in response.json["Resources"]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('userName eq "ALICE@acme.example"', ["alice"]),
        ('userName ne "alice@acme.example"', ["bob", "carol.x"]),
        ('userName co "ACME"', ["alice", "bob"]),
        ('userName sw "carol"', ["carol.x"]),
        ('userName ew ".example"', ["alice", "bob", "carol.x"]),
        ('userName gt "b"', ["bob", "carol.x"]),
        ('userName le "bob@acme.example"', ["alice", "bob"]),
        ("title pr", ["alice"]),
        ("not (title pr)", ["bob", "carol.x"]),
        ('externalId eq "ext-alice"', ["alice"]),
        ('externalId eq "EXT-ALICE"', []),  # caseExact
        ("active eq false", ["bob"]),
        ('active eq true and name.givenName sw "a"', ["alice"]),
        ('name.familyName eq "builder" or name.givenName eq "carol"', ["bob", "carol.x"]),
        ('emails co "home.example"', ["alice"]),
        ('emails.value ew "@acme.example"', ["alice", "bob"]),
        ('emails[type eq "work" and value co "@acme"]', ["alice"]),
        ('emails[type eq "home" and value co "@acme"]', ["bob"]),
        ("emails[primary eq true]", ["alice"]),
        ("emails pr", ["alice", "bob"]),
        (f'{ENTERPRISE}:department eq "sales"', ["bob"]),
        ('meta.created gt "2000-01-01T00:00:00Z"', ["alice", "bob", "carol.x"]),
        ('meta.lastModified lt "2000-01-01T00:00:00Z"', []),
        ('meta.resourceType eq "User"', ["alice", "bob", "carol.x"]),
        ('(userName sw "a" or userName sw "b") and not (active eq false)', ["alice"]),
        ('id eq "not-a-uuid"', []),
    ],
)
def test_filter(scim, people, text, expected):
    assert names(scim, text) == expected


def test_filter_by_id_and_groups(scim, people):
    group = scim.post("/Groups", {"displayName": "Eng", "members": [{"value": people["alice"]}]})
    group_id = group.json["id"]

    assert names(scim, f'id eq "{people["bob"]}"') == ["bob"]
    assert names(scim, f'groups[value eq "{group_id}"]') == ["alice"]
    assert names(scim, 'groups.display eq "eng"') == ["alice"]
    member_filter = quote('members[value eq "{}"]'.format(people["alice"]))
    groups = scim.get(f"/Groups?filter={member_filter}").json
    assert [g["displayName"] for g in groups["Resources"]] == ["Eng"]
    assert scim.get("/Groups?filter=" + quote('displayName co "n"')).json["totalResults"] == 1


@pytest.mark.parametrize(
    "text",
    [
        "userName",
        "userName eq",
        'userName eq "unterminated',
        'userName xx "a"',
        'nosuch eq "a"',
        'name eq "a"',  # complex: needs a sub-attribute
        'emails[type eq "work"',
        'emails[value[type eq "x"]]',
        "active gt true",
        'active eq "yes"',
        'meta.created gt "yesterday"',
        "title co 3",
        "(" * 200 + "title pr" + ")" * 200,
        'userName eq "a" and',
        'urn:x:y:z eq "a"',
        'department eq "R&D"',  # extension attributes need their URN
        '"a" eq userName',
        "title pr \x00",
    ],
)
def test_invalid_filters_are_400_invalid_filter(scim, people, text):
    response = scim.get(f"/Users?filter={quote(text)}")

    assert response.status_code == 400, (text, response.text)
    assert response.json["scimType"] == "invalidFilter"
    assert response.json["status"] == "400"


def test_search_endpoint_takes_the_same_parameters(scim, people):
    body = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
        "filter": 'userName sw "a"',
        "attributes": ["userName"],
        "count": 10,
    }
    response = scim.post("/Users/.search", body)
    assert response.status_code == 200
    assert response.json["Resources"] == [
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": people["alice"],
            "userName": "alice@acme.example",
        }
    ]
    scim.post("/Groups", {"displayName": "Admins"})
    root = scim.post("/.search", {"filter": 'displayName eq "Admins"'}).json
    # At the root a filter naming a Group attribute finds groups, not users.
    assert [r["schemas"][0].rsplit(":", 1)[-1] for r in root["Resources"]] == ["Group"]
    everything = scim.post("/.search", {"count": 2, "startIndex": 4}).json
    assert everything["totalResults"] == 4
    assert [r["displayName"] for r in everything["Resources"]] == ["Admins"]
    bad = scim.post("/.search", {"filter": "nosuch pr"})
    assert bad.status_code == 400 and bad.json["scimType"] == "invalidFilter"
