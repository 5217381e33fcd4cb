"""SCIM filters (RFC 7644 §3.4.2.2): the parser, and the SQL it becomes on a real database."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC
from datetime import datetime

import pytest
from sqlalchemy import Boolean
from sqlalchemy import Engine
from sqlalchemy import Float
from sqlalchemy import ForeignKey
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import Uuid
from sqlalchemy import and_
from sqlalchemy import create_engine
from sqlalchemy import false
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from app.models.base import UTCDateTime
from app.services.scim_filter import And
from app.services.scim_filter import AttributeMap
from app.services.scim_filter import AttrPath
from app.services.scim_filter import Column
from app.services.scim_filter import Compare
from app.services.scim_filter import Constant
from app.services.scim_filter import FilterError
from app.services.scim_filter import MultiValued
from app.services.scim_filter import Not
from app.services.scim_filter import Or
from app.services.scim_filter import Present
from app.services.scim_filter import ValuePath
from app.services.scim_filter import parse_attr_path
from app.services.scim_filter import parse_datetime
from app.services.scim_filter import parse_filter
from app.services.scim_filter import to_sql

CORE = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"

# RFC 7644 §3.4.2.2, the example filters, in the RFC's order.
RFC_EXAMPLES = [
    'userName eq "bjensen"',
    'name.familyName co "O\'Malley"',
    'userName sw "J"',
    'urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J"',
    "title pr",
    'meta.lastModified gt "2011-05-13T04:42:34Z"',
    'meta.lastModified ge "2011-05-13T04:42:34Z"',
    'meta.lastModified lt "2011-05-13T04:42:34Z"',
    'meta.lastModified le "2011-05-13T04:42:34Z"',
    'title pr and userType eq "Employee"',
    'title pr or userType eq "Intern"',
    'schemas eq "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"',
    'userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")',
    'userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")',
    'userType eq "Employee" and (emails.type eq "work")',
    'userType eq "Employee" and emails[type eq "work" and value co "@example.com"]',
    'emails[type eq "work" and value co "@example.com"] or '
    'ims[type eq "xmpp" and value co "@foo.com"]',
]


def p(name: str, sub: str | None = None, urn: str | None = None) -> AttrPath:
    return AttrPath(urn, name, sub)


# --- parser ------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"])
def test_every_comparison_operator(op):
    assert parse_filter(f'title {op} "x"') == Compare(p("title"), op, "x")


def test_present_operator():
    assert parse_filter("title pr") == Present(p("title"))


@pytest.mark.parametrize(
    "text",
    [
        'userName EQ "x"',
        'UserName Eq "x"',
        'USERNAME eQ "x"',
    ],
)
def test_operators_are_case_insensitive_and_names_are_kept_as_written(text):
    node = parse_filter(text)
    assert isinstance(node, Compare)
    assert node.op == "eq"
    assert node.path.attr == text.split()[0]


def test_logical_keywords_are_case_insensitive():
    a, b, c = Present(p("a")), Present(p("b")), Present(p("c"))
    assert parse_filter("a PR AND b Pr OR NOT (c pR)") == Or(And(a, b), Not(c))
    assert parse_filter("a pr And b pr oR c pr") == Or(And(a, b), c)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # "and" binds tighter than "or", both are left-associative (RFC 7644 §3.4.2.2).
        ("a pr or b pr and c pr", Or(Present(p("a")), And(Present(p("b")), Present(p("c"))))),
        ("a pr and b pr or c pr", Or(And(Present(p("a")), Present(p("b"))), Present(p("c")))),
        ("a pr and b pr and c pr", And(And(Present(p("a")), Present(p("b"))), Present(p("c")))),
        ("a pr or b pr or c pr", Or(Or(Present(p("a")), Present(p("b"))), Present(p("c")))),
        ("(a pr or b pr) and c pr", And(Or(Present(p("a")), Present(p("b"))), Present(p("c")))),
        ("a pr and (b pr or c pr)", And(Present(p("a")), Or(Present(p("b")), Present(p("c"))))),
        # "not" takes precedence over "and": it applies to its parentheses only.
        ("not (a pr) and b pr", And(Not(Present(p("a"))), Present(p("b")))),
        ("not (a pr and b pr)", Not(And(Present(p("a")), Present(p("b"))))),
        ("not(a pr)", Not(Present(p("a")))),
        ("not (not (a pr))", Not(Not(Present(p("a"))))),
        ("((a pr))", Present(p("a"))),
        ("(((a pr) or (b pr)))", Or(Present(p("a")), Present(p("b")))),
    ],
)
def test_precedence_and_grouping(text, expected):
    assert parse_filter(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'emails[type eq "work"]',
            ValuePath(p("emails"), Compare(p("type"), "eq", "work")),
        ),
        (
            'emails[type eq "work" and (value co "a" or value co "b")]',
            ValuePath(
                p("emails"),
                And(
                    Compare(p("type"), "eq", "work"),
                    Or(Compare(p("value"), "co", "a"), Compare(p("value"), "co", "b")),
                ),
            ),
        ),
        (
            'emails[not (type eq "work")] and title pr',
            And(
                ValuePath(p("emails"), Not(Compare(p("type"), "eq", "work"))),
                Present(p("title")),
            ),
        ),
        (
            "not (emails[primary eq true])",
            Not(ValuePath(p("emails"), Compare(p("primary"), "eq", True))),
        ),
        (
            f'{CORE}:emails[type eq "work"]',
            ValuePath(p("emails", urn=CORE), Compare(p("type"), "eq", "work")),
        ),
        ('members[$ref eq "x"]', ValuePath(p("members"), Compare(p("$ref"), "eq", "x"))),
    ],
)
def test_value_paths(text, expected):
    assert parse_filter(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'{CORE}:userName sw "J"', Compare(p("userName", urn=CORE), "sw", "J")),
        (
            f'{CORE}:name.familyName eq "x"',
            Compare(p("name", "familyName", urn=CORE), "eq", "x"),
        ),
        (
            f'{ENTERPRISE}:employeeNumber eq "701984"',
            Compare(p("employeeNumber", urn=ENTERPRISE), "eq", "701984"),
        ),
        (f"{ENTERPRISE}:manager.value pr", Present(p("manager", "value", urn=ENTERPRISE))),
        (
            "urn:acme:ext:1.0:User:x-Flag_2 eq true",
            Compare(p("x-Flag_2", urn="urn:acme:ext:1.0:User"), "eq", True),
        ),
        ('name.givenName eq "x"', Compare(p("name", "givenName"), "eq", "x")),
    ],
)
def test_urn_qualified_and_dotted_names(text, expected):
    assert parse_filter(text) == expected


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (r'"plain"', "plain"),
        (r'""', ""),
        (r'"say \"hi\""', 'say "hi"'),
        (r'"back\\slash"', "back\\slash"),
        (r'"a\/b"', "a/b"),
        (r'"caf\u00e9"', "café"),
        (r'"CAF\u00C9"', "CAFÉ"),
        (r'"\ud83d\ude00"', "😀"),
        (r'"tab\there\nnl\r\b\f"', "tab\there\nnl\r\b\f"),
        ('"café 😀 raw"', "café 😀 raw"),
        ('"O\'Malley"', "O'Malley"),
        ('"with ] and ) and [ ( inside"', "with ] and ) and [ ( inside"),
        ("0", 0),
        ("-1", -1),
        ("42", 42),
        ("1.5", 1.5),
        ("-0.25", -0.25),
        ("1e3", 1000.0),
        ("2E-2", 0.02),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
        ("true", True),
        ("false", False),
        ("null", None),
        ("TRUE", True),
        ("Null", None),
    ],
)
def test_values_follow_json(literal, value):
    node = parse_filter(f"x eq {literal}")
    assert isinstance(node, Compare)
    assert node.value == value
    assert type(node.value) is type(value)


@pytest.mark.parametrize(
    "text",
    [
        '  userName eq "x"  ',
        'userName\teq\t"x"',
        'userName\n eq \r\n "x"',
        'userName    eq     "x"',
        'userName eq"x"',
    ],
)
def test_whitespace_separates_tokens(text):
    assert parse_filter(text) == Compare(p("userName"), "eq", "x")


def test_whitespace_around_parentheses_and_brackets_is_optional():
    assert parse_filter("(a pr)and(b pr)") == parse_filter("( a pr ) and ( b pr )")
    assert parse_filter('emails[ type eq "w" ]') == parse_filter('emails[type eq "w"]')
    assert parse_filter("not(a pr)") == parse_filter("not ( a pr )")


def test_whitespace_inside_strings_is_kept():
    assert parse_filter('x eq "  two  spaces "').value == "  two  spaces "  # type: ignore[union-attr]


def test_rfc_examples_parse():
    for text in RFC_EXAMPLES:
        parse_filter(text)
    assert parse_filter(RFC_EXAMPLES[13]) == And(
        Compare(p("userType"), "ne", "Employee"),
        Not(
            Or(
                Compare(p("emails"), "co", "example.com"),
                Compare(p("emails", "value"), "co", "example.org"),
            )
        ),
    )
    assert parse_filter(RFC_EXAMPLES[16]) == Or(
        ValuePath(
            p("emails"),
            And(Compare(p("type"), "eq", "work"), Compare(p("value"), "co", "@example.com")),
        ),
        ValuePath(
            p("ims"), And(Compare(p("type"), "eq", "xmpp"), Compare(p("value"), "co", "@foo.com"))
        ),
    )
    assert parse_filter(RFC_EXAMPLES[5]) == Compare(
        p("meta", "lastModified"), "gt", "2011-05-13T04:42:34Z"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Empty filter"),
        ("   \t ", "Empty filter"),
        ('userName eq "bjensen', "Unterminated string starting at position 13"),
        ('userName eq "bjensen\\"', "Unterminated string"),
        ('userName like "x"', "Unknown operator 'like' at position 10"),
        ('userName == "x"', "Unexpected character '='"),
        ("userName eq", "Missing value after 'eq'"),
        ("userName eq   ", "Missing value after 'eq'"),
        ("userName eq bjensen", "Expected a value after 'eq'"),
        ("userName eq )", "Expected a value after 'eq'"),
        ("userName", "Expected an operator after 'userName'"),
        ('userName "x"', "Expected an operator after 'userName'"),
        ('userName eq "x" extra', "Expected 'and', 'or' or the end of the filter"),
        ('userName eq "x" "y"', "Expected 'and', 'or' or the end of the filter"),
        ('userName eq "x" and', "Expected an attribute name, 'not' or '('"),
        (
            'or userName eq "x"',
            "Expected an attribute name, 'not' or '(' at position 1, found 'or'",
        ),
        ("a pr and or b pr", "Expected an attribute name, 'not' or '(' at position 10"),
        ('(userName eq "x"', "Missing ')' for the '(' at position 1"),
        ("((a pr) or b pr", "Missing ')' for the '(' at position 1"),
        ('userName eq "x")', "found ')'"),
        ("()", "Expected an attribute name"),
        ('emails[type eq "work"', "Missing ']' for the '[' at position 7"),
        ('emails[type eq "work")', "Missing ']'"),
        ('emails type eq "work"]', "Unknown operator 'type'"),
        ('emails[type eq "work"]]', "found ']'"),
        ("emails[]", "Expected an attribute name"),
        ('emails[type[value eq "x"]]', "cannot nest"),
        ('emails[emails.type eq "x"]', "Inside '[...]' name a sub-attribute"),
        (f'emails[{CORE}:type eq "x"]', "Inside '[...]' name a sub-attribute"),
        ('name.givenName[value eq "x"]', "must follow a multi-valued attribute"),
        ('emails[type eq "work"].value eq "x"', "only valid in a PATCH path"),
        ('title pr "x"', "'pr' takes no value"),
        ("title pr true", "'pr' takes no value"),
        ("title pr 1", "'pr' takes no value"),
        ("not title pr", "'not' at position 1 must be followed by a filter in parentheses"),
        ("not", "'not' at position 1 must be followed"),
        ("not ()", "Expected an attribute name"),
        ("x eq 01", "Invalid number '01'"),
        ("x eq 1.", "Invalid number '1.'"),
        ("x eq .5", "Unexpected '.'"),
        ("x eq -", "Invalid number '-'"),
        ("x eq 1.5.2", "Invalid number"),
        ("x eq 12abc", "Invalid number '12abc'"),
        ("x eq +1", "Unexpected character '+'"),
        ("x eq 1e999", "out of range"),
        ("x eq 9223372036854775808", "out of range"),
        ("x eq " + "9" * 4000, "out of range"),
        (r'x eq "\x"', "Invalid escape"),
        (r'x eq "\u12"', "Invalid \\u escape"),
        (r'x eq "\u12G4"', "Invalid \\u escape"),
        (r'x eq "\ud800"', "Unpaired surrogate"),
        (r'x eq "\ud800\u0041"', "Unpaired surrogate"),
        (r'x eq "\udc00"', "Unpaired surrogate"),
        (r'x eq "\u0000"', "NUL"),
        ('x eq "a\x01b"', "Control character"),
        ('x eq "two\nlines"', "Control character"),
        ('x eq "\ud800"', "not valid Unicode"),
        ("x\x00 eq 1", "Unexpected character"),
        ("1abc eq 1", "Invalid number"),
        ("a..b eq 1", "Invalid attribute name 'a..b'"),
        ("a.b.c eq 1", "Invalid attribute name 'a.b.c'"),
        ("a. eq 1", "Invalid attribute name"),
        ("foo:bar eq 1", "Invalid attribute name 'foo:bar'"),
        ("urn::x eq 1", "Invalid attribute name"),
        ("urn:a: eq 1", "Invalid attribute name"),
        ("$foo eq 1", "Invalid attribute name"),
        ("a-b_c é eq 1", "Unexpected character 'é'"),
        ("x co 5", "'co' needs a string value"),
        ("x sw true", "'sw' needs a string value"),
        ("x ew null", "'ew' needs a string value"),
        ("x gt null", "'gt' needs a string, number or dateTime value"),
        ("x le false", "'le' needs a string, number or dateTime value"),
    ],
)
def test_invalid_filters_raise_filter_error(text, message):
    with pytest.raises(FilterError) as info:
        parse_filter(text)
    assert message in str(info.value)


def test_filter_error_is_a_value_error():
    assert issubclass(FilterError, ValueError)


def test_non_string_filter():
    with pytest.raises(FilterError):
        parse_filter(None)  # type: ignore[arg-type]


def test_length_limit():
    text = "title pr"
    assert parse_filter(text.ljust(4096)) == Present(p("title"))
    with pytest.raises(FilterError, match="longer than 4096 characters"):
        parse_filter(text.ljust(4097))
    with pytest.raises(FilterError, match="longer than 5 characters"):
        parse_filter(text, max_length=5)


@pytest.mark.parametrize(
    ("opening", "closing"),
    [("(", ")"), ("not (", ")")],
)
def test_depth_limit(opening, closing):
    assert parse_filter(opening * 32 + "a pr" + closing * 32)
    with pytest.raises(FilterError, match="nests more than 32 levels deep"):
        parse_filter(opening * 33 + "a pr" + closing * 33)
    with pytest.raises(FilterError, match="nests more than 3 levels deep"):
        parse_filter(opening * 4 + "a pr" + closing * 4, max_depth=3)


def test_brackets_count_towards_the_depth():
    assert parse_filter("(" * 31 + 'emails[type eq "x"]' + ")" * 31)
    with pytest.raises(FilterError, match="nests more than 32 levels deep"):
        parse_filter("(" * 31 + 'emails[(type eq "x")]' + ")" * 31)


def test_deep_nesting_past_the_interpreter_stack_is_a_filter_error():
    text = "(" * 5000 + "a pr" + ")" * 5000
    with pytest.raises(FilterError, match="nests too deeply"):
        parse_filter(text, max_length=20_000, max_depth=100_000)


def test_long_and_chains_do_not_recurse_per_term():
    text = " and ".join(["a pr"] * 400)
    node = parse_filter(text)
    depth = 0
    while isinstance(node, And):
        node, depth = node.left, depth + 1
    assert depth == 399


def test_parse_attr_path():
    assert parse_attr_path("name.familyName") == p("name", "familyName")
    assert parse_attr_path(f" {ENTERPRISE}:manager ") == p("manager", urn=ENTERPRISE)
    for bad in ("", "a b", "a[", "name.", '"x"', "a.b.c", None):
        with pytest.raises(FilterError):
            parse_attr_path(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2011-05-13T04:42:34Z", datetime(2011, 5, 13, 4, 42, 34, tzinfo=UTC)),
        ("2011-05-13t04:42:34z", datetime(2011, 5, 13, 4, 42, 34, tzinfo=UTC)),
        ("2011-05-13T06:42:34+02:00", datetime(2011, 5, 13, 4, 42, 34, tzinfo=UTC)),
        ("2011-05-12T23:42:34-05:00", datetime(2011, 5, 13, 4, 42, 34, tzinfo=UTC)),
        ("2011-05-13T04:42:34.5Z", datetime(2011, 5, 13, 4, 42, 34, 500000, tzinfo=UTC)),
        ("2011-05-13T04:42:34.1234567Z", datetime(2011, 5, 13, 4, 42, 34, 123456, tzinfo=UTC)),
        ("2011-05-13T04:42:34", datetime(2011, 5, 13, 4, 42, 34, tzinfo=UTC)),
    ],
)
def test_parse_datetime(text, expected):
    assert parse_datetime(text) == expected
    assert parse_datetime(text).tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2011-05-13",
        "2011-05-13 04:42:34Z",
        "2011-13-01T00:00:00Z",
        "2011-02-30T00:00:00Z",
        "2011-05-13T24:00:00Z",
        "2011-05-13T04:42:60Z",
        "2011-05-13T04:42:34+24:00",
        "2011-05-13T04:42:34+0200",
        "0001-01-01T00:00:00+01:00",
        "yesterday",
        "２０１１-05-13T04:42:34Z",
    ],
)
def test_parse_datetime_rejects(text):
    with pytest.raises(ValueError):
        parse_datetime(text)


# --- fuzzing -----------------------------------------------------------------------------
FUZZ_SEEDS = [
    *RFC_EXAMPLES,
    'emails[type eq "work" and (value co "a" or not (value sw "b"))].value',
    'x eq "caf\\u00e9 \\"q\\" \\\\" and y ge -1.5e3 or z le 0',
    "not (a pr) and ((b pr)) or c[d eq null]",
]
PIECES = [
    *'abcdeqnotrpwsgxyz ()[]".\\:-_$0123456789eE+/%\t\n\x00\x7fé😀',
    " and ",
    " or ",
    "not ",
    " eq ",
    " pr",
    ' "x"',
    "\\u",
    "\\ud800",
    "\\u0000",
    "urn:",
    "1e999",
    "[",
    "]",
    "(",
    ")",
]


def _mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        i = rng.randint(0, len(text))
        j = rng.randint(i, min(len(text), i + 6))
        action = rng.randrange(6)
        if action == 0:
            text = text[:i] + text[j:]
        elif action == 1:
            text = text[:i] + rng.choice(PIECES) + text[i:]
        elif action == 2:
            text = text[:i] + rng.choice(PIECES) + text[j:]
        elif action == 3:
            text = text[:i] + text[i:j] * 2 + text[j:]
        elif action == 4:
            text = text[:i]
        else:
            text = text[i:] + text[:i]
    return text


def fuzz_inputs(count: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for n in range(count):
        if n % 4 == 0:
            yield "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        else:
            yield _mutate(rng, rng.choice(FUZZ_SEEDS))


def test_fuzzed_input_raises_only_filter_error():
    parsed = 0
    for text in fuzz_inputs(6000, seed=7644):
        try:
            parse_filter(text)
        except FilterError:
            continue
        parsed += 1
    # The mutations must exercise both outcomes, or the test proves nothing.
    assert 100 < parsed < 5000


# --- translation to SQL on a real database -----------------------------------------------
class _Base(DeclarativeBase):
    metadata = MetaData()


class Person(_Base):
    __tablename__ = "scim_test_people"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    handle: Mapped[str] = mapped_column(String(40))  # the tests' name for the row
    uid: Mapped[uuid.UUID] = mapped_column(Uuid)
    user_name: Mapped[str] = mapped_column(String(100))
    external_id: Mapped[str | None] = mapped_column(String(100))
    given_name: Mapped[str | None] = mapped_column(String(100))
    family_name: Mapped[str | None] = mapped_column(String(100))
    title: Mapped[str | None] = mapped_column(String(100))
    user_type: Mapped[str | None] = mapped_column(String(100))
    employee_number: Mapped[str | None] = mapped_column(String(100))
    active: Mapped[bool | None] = mapped_column(Boolean)
    login_count: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    last_modified: Mapped[datetime | None] = mapped_column(UTCDateTime)
    email: Mapped[str | None] = mapped_column(String(100))


class Email(_Base):
    __tablename__ = "scim_test_emails"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("scim_test_people.id"))
    value: Mapped[str | None] = mapped_column(String(100))
    type: Mapped[str | None] = mapped_column(String(20))
    primary: Mapped[bool | None] = mapped_column(Boolean)


class Group(_Base):
    __tablename__ = "scim_test_groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    display_name: Mapped[str] = mapped_column(String(100))


class GroupMember(_Base):
    __tablename__ = "scim_test_group_members"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("scim_test_groups.id"))
    person_id: Mapped[int] = mapped_column(ForeignKey("scim_test_people.id"))


UIDS = {
    "bjensen": uuid.UUID("2819c223-7f76-453a-919d-413861904646"),
    "omalley": uuid.UUID("902c246b-6245-4190-8e05-00816be7344a"),
    "underscore": uuid.UUID("00000000-0000-4000-8000-000000000003"),
    "axb": uuid.UUID("00000000-0000-4000-8000-000000000004"),
    "slash": uuid.UUID("00000000-0000-4000-8000-000000000005"),
    "nobody": uuid.UUID("00000000-0000-4000-8000-000000000006"),
}


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


PEOPLE_ROWS = [
    dict(
        handle="bjensen",
        user_name="bjensen",
        external_id="ABC-1",
        given_name="Barbara",
        family_name="Jensen",
        title="Tour Guide",
        user_type="Employee",
        employee_number="701984",
        active=True,
        login_count=10,
        score=4.5,
        last_modified=_at("2011-05-13T04:42:34+00:00"),
        email="bjensen@example.com",
    ),
    dict(
        handle="omalley",
        user_name="JOMalley",
        external_id="abc-1",
        given_name="Jo",
        family_name="O'Malley",
        title="100% sure",
        user_type="Intern",
        active=False,
        login_count=0,
        score=1.25,
        last_modified=_at("2020-01-01T00:00:00.500000+00:00"),
        email="jo@x.org",
    ),
    dict(
        handle="underscore",
        user_name="a_b",
        title="a_b",
        user_type="Contractor",
        active=True,
        login_count=3,
        last_modified=_at("2015-06-01T12:00:00+00:00"),
    ),
    dict(
        handle="axb",
        user_name="axb",
        title="1000 units",
        user_type="Employee",
        employee_number="42",
        active=True,
        login_count=7,
        score=2.0,
    ),
    dict(
        handle="slash",
        user_name="back/slash\\x",
        external_id="",
        title="",
        user_type="",
        last_modified=_at("2011-05-13T04:42:33.999999+00:00"),
    ),
    dict(handle="nobody", user_name="nobody"),
]
EMAIL_ROWS = [
    ("bjensen", "work", "bjensen@example.com", True),
    ("bjensen", "home", "babs@jensen.org", False),
    # The work address is not at example.com; the home one is.
    ("omalley", "work", "jo@x.org", True),
    ("omalley", "home", "jo@example.com", None),
    ("axb", "work", "AXB@EXAMPLE.COM", None),
]
GROUP_ROWS = {"admins": ["bjensen", "omalley"], "staff": ["bjensen"], "empty": []}
EVERYONE = sorted(row["handle"] for row in PEOPLE_ROWS)


def _emails_exist(clause):
    return select(Email.id).where(Email.person_id == Person.id, clause).exists()


PEOPLE: AttributeMap = {
    "id": Column(Person.uid, "string", case_exact=True),
    "username": Column(Person.user_name, "string"),
    "externalid": Column(Person.external_id, "string", case_exact=True),
    "name.givenname": Column(Person.given_name, "string"),
    "name.familyname": Column(Person.family_name, "string"),
    "title": Column(Person.title, "string"),
    "usertype": Column(Person.user_type, "string"),
    "active": Column(Person.active, "boolean"),
    "logincount": Column(Person.login_count, "integer"),
    "score": Column(Person.score, "decimal"),
    "meta.lastmodified": Column(Person.last_modified, "dateTime"),
    "meta.resourcetype": Constant("User", "string"),
    "schemas": Constant((CORE, ENTERPRISE), "reference"),
    f"{ENTERPRISE.lower()}:employeenumber": Column(Person.employee_number, "string"),
    "emails": MultiValued(
        _emails_exist,
        {
            "value": Column(Email.value, "string"),
            "type": Column(Email.type, "string"),
            "primary": Column(Email.primary, "boolean"),
        },
    ),
    # Never stored: every filter on it is false (how a service maps unsupported attributes).
    "ims": MultiValued(
        lambda clause: false(),
        {"value": Constant(None, "string"), "type": Constant(None, "string")},
    ),
}

# The one-row shape a User without an emails table has: value from a column, the rest fixed.
ONE_ROW_EMAILS: AttributeMap = {
    "emails": MultiValued(
        lambda clause: and_(Person.email.is_not(None), clause),
        {
            "value": Column(Person.email, "string"),
            "type": Constant("work", "string"),
            "primary": Constant(True, "boolean"),
        },
    ),
}

GROUPS: AttributeMap = {
    "displayname": Column(Group.display_name, "string"),
    "members": MultiValued(
        lambda clause: (
            select(GroupMember.id)
            .join(Person, Person.id == GroupMember.person_id)
            .where(GroupMember.group_id == Group.id, clause)
            .exists()
        ),
        {
            "value": Column(Person.uid, "reference", case_exact=True),
            "display": Column(Person.user_name, "string"),
            "type": Constant("User", "string"),
        },
    ),
}


@pytest.fixture(scope="module")
def engine(database_url) -> Iterator[Engine]:
    """The test database (SQLite, or PostgreSQL with TEST_DATABASE_URL) with this module's
    own tables, dropped at the end."""
    engine = create_engine(database_url)
    _Base.metadata.drop_all(engine)
    _Base.metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            ids = {}
            for n, row in enumerate(PEOPLE_ROWS, start=1):
                conn.execute(Person.__table__.insert().values(id=n, uid=UIDS[row["handle"]], **row))
                ids[row["handle"]] = n
            for handle, type_, value, primary in EMAIL_ROWS:
                conn.execute(
                    Email.__table__.insert().values(
                        person_id=ids[handle], type=type_, value=value, primary=primary
                    )
                )
            for n, (name, members) in enumerate(GROUP_ROWS.items(), start=1):
                conn.execute(Group.__table__.insert().values(id=n, display_name=name))
                for handle in members:
                    conn.execute(
                        GroupMember.__table__.insert().values(group_id=n, person_id=ids[handle])
                    )
        yield engine
    finally:
        _Base.metadata.drop_all(engine)
        engine.dispose()


def matching(engine: Engine, text: str, attributes: AttributeMap = PEOPLE) -> list[str]:
    clause = to_sql(parse_filter(text), attributes, default_urn=CORE)
    if attributes is GROUPS:
        query = select(Group.display_name).where(clause)
    else:
        query = select(Person.handle).where(clause)
    with engine.connect() as conn:
        return sorted(conn.execute(query).scalars())


def but(*handles: str) -> list[str]:
    return [h for h in EVERYONE if h not in handles]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('userName eq "bjensen"', ["bjensen"]),
        # caseExact=false (RFC 7643 §2.1): operators and values ignore case.
        ('USERNAME EQ "BJENSEN"', ["bjensen"]),
        ('userName sw "J"', ["omalley"]),
        ('userName sw "j"', ["omalley"]),
        ('userName ew "LEY"', ["omalley"]),
        ('userName co "MAL"', ["omalley"]),
        ('name.familyName co "o\'malley"', ["omalley"]),
        ('userName gt "b"', ["bjensen", "nobody", "omalley", "slash"]),
        ('userName le "AXB"', ["axb", "underscore"]),
        ('userName ne "BJensen"', but("bjensen")),
        # caseExact=true: externalId "ABC-1" and "abc-1" are different values.
        ('externalId eq "abc-1"', ["omalley"]),
        ('externalId eq "ABC-1"', ["bjensen"]),
        ('externalId ne "ABC-1"', but("bjensen")),
        ('externalId co "BC"', ["bjensen"]),
        ('externalId co "bc"', ["omalley"]),
        ('externalId sw "abc"', ["omalley"]),
        ('externalId sw "ABC"', ["bjensen"]),
        ('externalId ew "C-1"', ["bjensen"]),
        ('externalId ew "c-1"', ["omalley"]),
        ('externalId ew "xabc-1"', []),
        ('externalId co ""', ["bjensen", "omalley", "slash"]),
        ('externalId gt "B"', ["omalley"]),
        # LIKE wildcards in the value are literal characters.
        ('title co "100%"', ["omalley"]),
        ('title sw "100"', ["axb", "omalley"]),
        ('title ew "%"', []),
        ('userName co "a_b"', ["underscore"]),
        ('userName sw "_"', []),
        ('userName co "/"', ["slash"]),
        ('userName co "k/s"', ["slash"]),
        ('userName ew "\\\\x"', ["slash"]),
        ('userName co "\\\\"', ["slash"]),
        # pr: assigned and not empty.
        ("title pr", ["axb", "bjensen", "omalley", "underscore"]),
        ("not (title pr)", ["nobody", "slash"]),
        ('title eq ""', ["slash"]),
        ("title eq null", ["nobody", "slash"]),
        ("title ne null", ["axb", "bjensen", "omalley", "underscore"]),
        # ne and not() include rows where the attribute is unassigned (NULL).
        ('title ne "Tour Guide"', but("bjensen")),
        ('not (title eq "Tour Guide")', but("bjensen")),
        ('userType ne "Employee"', ["nobody", "omalley", "slash", "underscore"]),
        ('not (userType ne "Employee")', ["axb", "bjensen"]),
        ('not (userType co "e")', ["nobody", "slash", "underscore"]),
        ("not (not (title pr))", ["axb", "bjensen", "omalley", "underscore"]),
        # Booleans.
        ("active eq true", ["axb", "bjensen", "underscore"]),
        ("active eq false", ["omalley"]),
        ("active ne true", ["nobody", "omalley", "slash"]),
        ("not (active eq true)", ["nobody", "omalley", "slash"]),
        ("active pr", ["axb", "bjensen", "omalley", "underscore"]),
        # Numbers.
        ("loginCount gt 5", ["axb", "bjensen"]),
        ("loginCount le 3", ["omalley", "underscore"]),
        ("loginCount eq 0", ["omalley"]),
        ("loginCount ne 10", but("bjensen")),
        ("loginCount ge 7.5", ["bjensen"]),
        ("loginCount lt -1", []),
        ("score ge 2", ["axb", "bjensen"]),
        ("score lt 1.5", ["omalley"]),
        ("score eq 2.0", ["axb"]),
        ("not (score gt 2)", but("bjensen")),
        # dateTime: compared as instants, whatever the offset written.
        ('meta.lastModified gt "2011-05-13T04:42:34Z"', ["omalley", "underscore"]),
        ('meta.lastModified ge "2011-05-13T04:42:34Z"', ["bjensen", "omalley", "underscore"]),
        ('meta.lastModified lt "2011-05-13T04:42:34Z"', ["slash"]),
        ('meta.lastModified le "2011-05-13T04:42:34Z"', ["bjensen", "slash"]),
        ('meta.lastModified eq "2011-05-13T06:42:34+02:00"', ["bjensen"]),
        ('meta.lastModified eq "2011-05-13T04:42:34.000Z"', ["bjensen"]),
        ('meta.lastModified lt "2011-05-12T23:42:34.000001-05:00"', ["bjensen", "slash"]),
        ('meta.lastModified gt "2020-01-01T00:00:00Z"', ["omalley"]),
        ('meta.lastModified gt "2020-01-01T01:00:00.4+01:00"', ["omalley"]),
        ('meta.lastModified le "2019-12-31T19:00:00.4-05:00"', ["bjensen", "slash", "underscore"]),
        ('meta.lastModified eq "2015-06-01T12:00:00"', ["underscore"]),
        ('meta.lastModified ne "2011-05-13T04:42:34Z"', but("bjensen")),
        ("meta.lastModified pr", ["bjensen", "omalley", "slash", "underscore"]),
        ('META.LASTMODIFIED GT "2015-01-01T00:00:00Z"', ["omalley", "underscore"]),
        # URN-qualified names: the core schema's are optional, extensions' are needed.
        (f'{CORE}:userName sw "J"', ["omalley"]),
        (f'{CORE.upper()}:USERNAME eq "bjensen"', ["bjensen"]),
        (f'{CORE}:name.givenName eq "barbara"', ["bjensen"]),
        (f'{ENTERPRISE}:employeeNumber eq "701984"', ["bjensen"]),
        (f"{ENTERPRISE.lower()}:EMPLOYEENUMBER pr", ["axb", "bjensen"]),
        # Constants are the same for every row.
        ('meta.resourceType eq "user"', EVERYONE),
        ('meta.resourceType eq "Group"', []),
        ('meta.resourceType co "se"', EVERYONE),
        (f'schemas eq "{ENTERPRISE}"', EVERYONE),
        ('schemas eq "urn:other"', []),
        ("meta.resourceType pr", EVERYONE),
        # Identifiers stored as UUIDs.
        (f'id eq "{UIDS["bjensen"]}"', ["bjensen"]),
        (f'id eq "{str(UIDS["omalley"]).upper()}"', ["omalley"]),
        ('id eq "not-a-uuid"', []),
        (f'id ne "{UIDS["bjensen"]}"', but("bjensen")),
        ('id ne "not-a-uuid"', EVERYONE),
        # Multi-valued: without brackets, any value matches (RFC 7644 §3.4.2.2).
        ('emails co "example.com"', ["axb", "bjensen", "omalley"]),
        ('emails.value co "jensen.org"', ["bjensen"]),
        ('emails.value eq "jo@example.com"', ["omalley"]),
        ('emails.type eq "work" and emails.value co "@example.com"', ["axb", "bjensen", "omalley"]),
        ("emails pr", ["axb", "bjensen", "omalley"]),
        ("not (emails pr)", ["nobody", "slash", "underscore"]),
        ("emails eq null", ["nobody", "slash", "underscore"]),
        ("emails.primary ne true", ["axb", "bjensen", "omalley"]),
        ("emails.primary eq false", ["bjensen"]),
        # With brackets, one value must satisfy the whole inner filter.
        ('emails[type eq "work" and value co "@example.com"]', ["axb", "bjensen"]),
        ('emails[type eq "home"]', ["bjensen", "omalley"]),
        ('emails[type eq "home" and primary eq true]', []),
        ("emails[not (primary eq true)]", ["axb", "bjensen", "omalley"]),
        ('emails[primary eq true and type eq "work"]', ["bjensen", "omalley"]),
        ('emails[value ew ".org" or type eq "other"]', ["bjensen", "omalley"]),
        ('not (emails[type eq "home"])', ["axb", "nobody", "slash", "underscore"]),
        ('emails[type eq "work"] and emails[type eq "home"]', ["bjensen", "omalley"]),
        # The RFC's examples.
        ('title pr and userType eq "Employee"', ["axb", "bjensen"]),
        ('title pr or userType eq "Intern"', ["axb", "bjensen", "omalley", "underscore"]),
        (RFC_EXAMPLES[12], ["axb", "bjensen"]),
        (RFC_EXAMPLES[13], ["nobody", "slash", "underscore"]),
        (RFC_EXAMPLES[14], ["axb", "bjensen"]),
        (RFC_EXAMPLES[15], ["axb", "bjensen"]),
        (RFC_EXAMPLES[16], ["axb", "bjensen"]),
        ('ims[type eq "xmpp"]', []),
        ("not (ims pr)", EVERYONE),
        # Precedence reaches the SQL: "and" before "or", parentheses first.
        (
            'userType eq "Intern" or userType eq "Employee" and active eq true',
            ["axb", "bjensen", "omalley"],
        ),
        ('(userType eq "Intern" or userType eq "Employee") and active eq true', ["axb", "bjensen"]),
    ],
)
def test_to_sql_selects_exactly(engine, text, expected):
    assert matching(engine, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('emails[type eq "work" and value co "@example.com"]', ["bjensen"]),
        ('emails[type eq "home"]', []),
        ('emails co "X.ORG"', ["omalley"]),
        ("emails.primary eq true", ["bjensen", "omalley"]),
        ('emails.type eq "work"', ["bjensen", "omalley"]),
        ("emails pr", ["bjensen", "omalley"]),
        ('not (emails[type eq "work"])', ["axb", "nobody", "slash", "underscore"]),
    ],
)
def test_to_sql_with_one_row_and_constant_sub_attributes(engine, text, expected):
    assert matching(engine, text, ONE_ROW_EMAILS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'members[value eq "{UIDS["bjensen"]}"]', ["admins", "staff"]),
        (f'members[value eq "{str(UIDS["omalley"]).upper()}"]', ["admins"]),
        (f'members.value eq "{UIDS["omalley"]}"', ["admins"]),
        ('members.value eq "not-a-uuid"', []),
        ('members.value ne "not-a-uuid"', ["admins", "staff"]),
        (f'members.value ne "{UIDS["bjensen"]}"', ["admins"]),
        (f'not (members.value eq "{UIDS["omalley"]}")', ["empty", "staff"]),
        ("members pr", ["admins", "staff"]),
        ("not (members pr)", ["empty"]),
        ('members.display co "JOM"', ["admins"]),
        (f'members[display sw "b" and value eq "{UIDS["omalley"]}"]', []),
        (f'members.display sw "b" and members.value eq "{UIDS["omalley"]}"', ["admins"]),
        ('members[type eq "User"]', ["admins", "staff"]),
        ('displayName eq "ADMINS"', ["admins"]),
    ],
)
def test_to_sql_on_group_members(engine, text, expected):
    assert matching(engine, text, GROUPS) == expected


def test_bracket_filter_is_one_exists_over_the_whole_inner_clause():
    clause = to_sql(
        parse_filter('emails[type eq "work" and value co "@x" and not (primary eq true)]'),
        PEOPLE,
        default_urn=CORE,
    )
    assert str(clause.compile()).count("EXISTS") == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('nickName eq "x"', "Unknown attribute 'nickName'"),
        ("name pr", "Attribute 'name' is complex"),
        ('name eq "x"', "Attribute 'name' is complex"),
        ('name.middleName eq "x"', "Unknown attribute 'name.middleName'"),
        ('emails.display eq "x"', "Unknown attribute 'emails.display'"),
        ('emails[display eq "x"]', "Unknown attribute 'emails.display'"),
        ('userName[value eq "x"]', "'[...]' needs a multi-valued attribute"),
        (f'{ENTERPRISE}:userName eq "x"', "Unknown attribute"),
        ('urn:acme:other:title eq "x"', "Unknown attribute"),
        ('active eq "true"', "needs true or false"),
        ("active eq 1", "needs true or false"),
        ('active co "t"', "'co' is not supported for the boolean attribute 'active'"),
        ('loginCount eq "10"', "needs a number"),
        ("loginCount eq true", "needs a number"),
        ('loginCount co "1"', "'co' is not supported for the integer attribute"),
        ("userName eq 5", "needs a string value"),
        ("title eq true", "needs a string value"),
        ('meta.lastModified gt "yesterday"', "is not a valid dateTime"),
        ('meta.lastModified gt "2011-13-01T00:00:00Z"', "is not a valid dateTime"),
        ('meta.lastModified gt "2011-05-13"', "is not a valid dateTime"),
        ('meta.lastModified eq "2011-05-13T04:42:34+25:00"', "is not a valid dateTime"),
        ('meta.lastModified co "2011"', "'co' is not supported for the dateTime attribute"),
        ("meta.lastModified eq 5", "needs a dateTime string"),
        ("meta.resourceType eq 1", "needs a string value"),
        ('members.value eq "x"', "Unknown attribute 'members.value'"),
        ('id co "2819"', "'co' is not supported for the identifier 'id'"),
        ('id gt "2819"', "'gt' is not supported for the identifier 'id'"),
    ],
)
def test_to_sql_rejects(text, message):
    with pytest.raises(FilterError) as info:
        to_sql(parse_filter(text), PEOPLE, default_urn=CORE)
    assert message in str(info.value)


def test_to_sql_rejects_hand_built_trees():
    with pytest.raises(FilterError, match="cannot nest"):
        to_sql(
            ValuePath(p("emails"), ValuePath(p("emails"), Present(p("value")))),
            PEOPLE,
            default_urn=CORE,
        )
    with pytest.raises(FilterError, match="cannot compare with null"):
        to_sql(Compare(p("title"), "gt", None), PEOPLE, default_urn=CORE)
    with pytest.raises(FilterError, match="Unknown operator"):
        to_sql(Compare(p("title"), "like", "x"), PEOPLE, default_urn=CORE)


def test_attribute_types_are_checked_when_the_map_is_built():
    with pytest.raises(ValueError, match="unknown SCIM attribute type"):
        Column(Person.title, "text")
    with pytest.raises(ValueError, match="unknown SCIM attribute type"):
        Constant("x", "datetime")


def test_longest_filter_runs(engine):
    terms = []
    while len(" or ".join(terms)) < 4000:
        terms.append(f'emails[value eq "{len(terms)}" and type eq "w"]')
    assert matching(engine, " or ".join(terms[:-1])) == []
    chain = " and ".join(['title ne "x"'] * 240)
    assert len(chain) <= 4096
    assert matching(engine, chain) == EVERYONE


def test_fuzzed_filters_translate_and_run_or_raise_filter_error(engine):
    ran = 0
    with engine.connect() as conn:
        for text in fuzz_inputs(1500, seed=3):
            try:
                clause = to_sql(parse_filter(text), PEOPLE, default_urn=CORE)
            except FilterError:
                continue
            conn.execute(select(Person.handle).where(clause)).all()
            ran += 1
    assert ran > 20
