"""SCIM PATCH paths (RFC 7644 §3.5.2): ``attrPath / valuePath [subAttr]``."""

from __future__ import annotations

import random

import pytest

from app.services.scim_filter import And
from app.services.scim_filter import AttrPath
from app.services.scim_filter import Compare
from app.services.scim_filter import FilterError
from app.services.scim_filter import Not
from app.services.scim_filter import Or
from app.services.scim_filter import PatchPath
from app.services.scim_filter import PathError
from app.services.scim_filter import Present
from app.services.scim_filter import parse_path

CORE = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
MEMBER_ID = "2819c223-7f76-453a-919d-413861904646"


def p(name: str, sub: str | None = None, urn: str | None = None) -> AttrPath:
    return AttrPath(urn, name, sub)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("userName", PatchPath(p("userName"))),
        ("USERNAME", PatchPath(p("USERNAME"))),
        ("name.givenName", PatchPath(p("name", "givenName"))),
        ("active", PatchPath(p("active"))),
        ("members", PatchPath(p("members"))),
        ("  displayName ", PatchPath(p("displayName"))),
        (
            'emails[type eq "work"].value',
            PatchPath(p("emails"), Compare(p("type"), "eq", "work"), "value"),
        ),
        (
            'addresses[type eq "work"].streetAddress',
            PatchPath(p("addresses"), Compare(p("type"), "eq", "work"), "streetAddress"),
        ),
        (
            f'members[value eq "{MEMBER_ID}"]',
            PatchPath(p("members"), Compare(p("value"), "eq", MEMBER_ID)),
        ),
        (
            'emails[type eq "work" and primary eq true].display',
            PatchPath(
                p("emails"),
                And(Compare(p("type"), "eq", "work"), Compare(p("primary"), "eq", True)),
                "display",
            ),
        ),
        (
            'emails[not (type eq "work") or value pr]',
            PatchPath(p("emails"), Or(Not(Compare(p("type"), "eq", "work")), Present(p("value")))),
        ),
        (
            'Emails[Type EQ "work"].Value',
            PatchPath(p("Emails"), Compare(p("Type"), "eq", "work"), "Value"),
        ),
        (
            'members[$ref eq "https://example.com/Users/1"]',
            PatchPath(p("members"), Compare(p("$ref"), "eq", "https://example.com/Users/1")),
        ),
        (f"{ENTERPRISE}:manager", PatchPath(p("manager", urn=ENTERPRISE))),
        (f"{ENTERPRISE}:manager.value", PatchPath(p("manager", "value", urn=ENTERPRISE))),
        (f"{ENTERPRISE}:employeeNumber", PatchPath(p("employeeNumber", urn=ENTERPRISE))),
        (f"{CORE}:name.familyName", PatchPath(p("name", "familyName", urn=CORE))),
        (
            f'{CORE}:emails[type eq "work"].value',
            PatchPath(p("emails", urn=CORE), Compare(p("type"), "eq", "work"), "value"),
        ),
    ],
)
def test_valid_paths(text, expected):
    assert parse_path(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Empty path"),
        ("   ", "Empty path"),
        ("emails[", "Expected an attribute name"),
        ('emails[type eq "work"', "Missing ']' for the '[' at position 7"),
        ("emails[type eq]", "Expected a value after 'eq'"),
        ('emails[type eq "work]', "Unterminated string"),
        ('emails[type eq "work"]value', "Expected the end of the path"),
        ('emails[type eq "work"] .value', "Expected the end of the path"),
        (
            'emails[type eq "work"].value.x',
            "Expected the end of the path at position 29, found '.x'",
        ),
        ('emails[type eq "work"][value pr]', "Expected the end of the path"),
        ('emails[type[value eq "x"]]', "cannot nest"),
        ('emails[emails.type eq "x"]', "Inside '[...]' name a sub-attribute"),
        ('emails.value[type eq "x"]', "must follow a multi-valued attribute"),
        ("emails]", "Expected the end of the path"),
        (".value", "Expected an attribute name at position 1, found '.value'"),
        ("name..givenName", "Invalid attribute name"),
        ("name.givenName.x", "Invalid attribute name"),
        ("name.", "Invalid attribute name"),
        ("urn:x", "Invalid attribute name"),
        (f"{ENTERPRISE}:", "Invalid attribute name"),
        ('userName eq "x"', "Expected the end of the path"),
        ("not (a pr)", "Expected the end of the path"),
        ("(userName)", "Expected an attribute name"),
        ("user name", "Expected the end of the path"),
        ('"userName"', "Expected an attribute name"),
        ("1userName", "Invalid number"),
        ("userName!", "Unexpected character '!'"),
        ("emails[type pr 1]", "'pr' takes no value"),
        ("emails[" * 40 + "x pr" + "]" * 40, "cannot nest"),
        ("x" * 5000, "longer than 4096 characters"),
    ],
)
def test_invalid_paths_raise_path_error(text, message):
    with pytest.raises(PathError) as info:
        parse_path(text)
    assert message in str(info.value)
    assert not isinstance(info.value, FilterError)


def test_non_string_path():
    with pytest.raises(PathError):
        parse_path(None)  # type: ignore[arg-type]


def test_path_error_is_a_value_error():
    assert issubclass(PathError, ValueError)
    assert not issubclass(PathError, FilterError)


def test_fuzzed_paths_raise_only_path_error():
    seeds = [
        'emails[type eq "work"].value',
        f'members[value eq "{MEMBER_ID}"]',
        f"{ENTERPRISE}:manager.value",
        "name.givenName",
    ]
    pieces = [*'abcdeqprtvwxyz .[]()"\\:$-_0123456789\t\x00é', " eq ", " and ", "[", "]"]
    rng = random.Random(3552)
    parsed = 0
    for _ in range(4000):
        text = rng.choice(seeds)
        for _ in range(rng.randint(1, 3)):
            i = rng.randint(0, len(text))
            j = rng.randint(i, min(len(text), i + 4))
            text = text[:i] + (rng.choice(pieces) if rng.random() < 0.7 else "") + text[j:]
        try:
            parse_path(text)
        except PathError:
            continue
        parsed += 1
    assert 100 < parsed < 3900
