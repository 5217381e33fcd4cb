"""CEL authorisation expressions: compile errors, what allows, what refuses, limits, cache."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.services import authz
from app.services.authz import AuthorizationResult
from app.services.errors import ValidationError

SECRET = "s3cr3t-value-never-shown"

CLAIMS = {
    "sub": "00u1",
    "email": "ada@acme.com",
    "email_verified": True,
    "tid": "t1",
    "groups": ["admins", "staff"],
    "https://example.com/roles": ["sso", "billing"],
    "org": {"id": "o1", "tier": 2},
    "zero": 0,
    "int": 5,
    "secret": SECRET,
}


@pytest.fixture(autouse=True)
def _fresh_cache():
    authz.compile_expression.cache_clear()
    yield
    authz.compile_expression.cache_clear()


def compile_error(expression: str) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        authz.compile_expression(expression)
    assert info.value.field == "authorization_expression"
    return info.value


# --- allow ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        'email.endsWith("@acme.com")',
        'claims.email.endsWith("@acme.com")',
        '"admins" in claims.groups',
        '"admins" in groups',
        'has(claims.groups) && "staff" in claims.groups',
        'claims["https://example.com/roles"].exists(r, r == "sso")',
        'email_verified == true && tid == "t1"',
        'org.id == "o1" && claims.org.tier >= 2',
        "claims.groups.all(g, g.size() > 3) && size(groups) == 2",
        'email.matches("^[a-z]+@acme\\\\.com$")',
        "claims.int == 5 && type(1) == int",  # a claim named like a type stays in claims only
        'has(claims.department) ? claims.department == "it" : true',
        "nope || email_verified",  # CEL: an error on one side of || is ignored if the other is true
    ],
)
def test_allows_when_the_expression_returns_true(expression):
    assert authz.evaluate(expression, CLAIMS) == AuthorizationResult(True, None)


# --- refuse --------------------------------------------------------------------------------


def test_refuses_when_the_expression_returns_false():
    result = authz.evaluate('email.endsWith("@evil.example")', CLAIMS)
    assert result == AuthorizationResult(False, "returned false")
    assert authz.evaluate("has(claims.department)", CLAIMS).reason == "returned false"


@pytest.mark.parametrize(
    ("expression", "type_name"),
    [
        ('"true"', "string"),
        ("1", "int"),
        ("1u", "uint"),
        ("1.0", "double"),
        ("null", "null"),
        ("[true]", "list"),
        ('{"ok": true}', "map"),
        ('b"true"', "bytes"),
        ("email", "string"),
        ("claims.groups", "list"),
    ],
)
def test_refuses_any_non_boolean_result(expression, type_name):
    result = authz.evaluate(expression, CLAIMS)
    assert result == AuthorizationResult(False, f"returned a non-boolean value: {type_name}")


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ('department == "it"', "undeclared reference to 'department'"),
        ('claims.department == "it"', "no such key 'department'"),
        ('claims["department"] == "it"', "no such key"),
        ('claims["https://example.com/teams"].exists(t, t == "x")', "no such key"),
        ("claims.groups[5] == 1", "index out of range"),
        ("nope && true", "undeclared reference to 'nope'"),
    ],
)
def test_refuses_a_missing_claim(expression, reason):
    result = authz.evaluate(expression, CLAIMS)
    assert not result.allowed
    assert result.reason.startswith(f"evaluation error: {reason}")


@pytest.mark.parametrize(
    "expression",
    ["email == 1", "email + 1 == 2", "groups > 3", "email.endsWith(1)", "!email", "-email == 1"],
)
def test_refuses_a_type_error(expression):
    result = authz.evaluate(expression, CLAIMS)
    assert not result.allowed
    assert result.reason.startswith("evaluation error: no matching overload")


def test_refuses_a_division_by_zero():
    result = authz.evaluate("1 / zero == 1", CLAIMS)
    assert result == AuthorizationResult(
        False, "evaluation error: division by zero at line 1, column 1"
    )
    assert authz.evaluate("1 % zero == 1", CLAIMS).reason.startswith(
        "evaluation error: division by zero"
    )


@pytest.mark.parametrize(
    "expression",
    [
        'int("not a number") == 1',
        "9223372036854775807 + 1 > 0",
        'email.matches("(")',
        'timestamp("yesterday") < timestamp("2030-01-01T00:00:00Z")',
        'string(groups) == ""',  # cel-python would return Python's repr of the list
        "[].min() == 1",
    ],
)
def test_refuses_other_evaluation_errors(expression):
    result = authz.evaluate(expression, CLAIMS)
    assert not result.allowed
    assert result.reason.startswith("evaluation error: ")


def test_refuses_an_invalid_or_blank_expression_instead_of_raising():
    assert authz.evaluate("email ==", CLAIMS) == AuthorizationResult(False, "invalid expression")
    assert authz.evaluate("", CLAIMS) == AuthorizationResult(False, "invalid expression")


def test_reasons_and_logs_never_contain_claim_values(caplog):
    caplog.set_level(logging.DEBUG)  # celpy logs activations at DEBUG; the module mutes it
    reasons = [
        authz.evaluate(expression, CLAIMS).reason
        for expression in (
            "secret == 1",
            "nope == secret",
            "secret.field == 1",
            "claims[secret] == 1",
            'secret + 1 == "x"',
            "int(secret) == 1",
        )
    ]
    assert all(reason and reason.startswith("evaluation error: ") for reason in reasons)
    assert not any(SECRET in reason for reason in reasons)
    assert SECRET not in caplog.text
    warnings = [r for r in caplog.records if r.name == "app.services.authz"]
    assert warnings and all(r.levelno == logging.WARNING for r in warnings)
    assert "CELEvalError" in warnings[0].getMessage()


# --- claims --------------------------------------------------------------------------------


def test_claims_that_are_not_identifiers_are_only_in_the_claims_map():
    claims = {"https://example.com/roles": ["sso"], "claims": "shadowed", "google": "g"}
    assert authz.evaluate('claims["https://example.com/roles"] == ["sso"]', claims).allowed
    assert authz.evaluate('claims.claims == "shadowed"', claims).allowed
    assert authz.evaluate('claims.google == "g"', claims).allowed


def test_refuses_claims_that_are_too_large():
    claims = {"email": "ada@acme.com", "blob": "x" * authz.MAX_CLAIMS_BYTES}
    result = authz.evaluate("true", claims)
    assert result == AuthorizationResult(False, "claims too large")


def test_refuses_claims_that_are_not_json():
    assert authz.evaluate("true", {"x": float("nan")}).reason == "claims are not JSON"
    assert authz.evaluate("true", {"x": object()}).reason == "claims are not JSON"
    assert authz.evaluate("true", {"x": 2**70}).reason == "claims cannot be converted to CEL values"


def test_json_round_trip_normalises_claims():
    claims = {"groups": ("a", "b"), "n": 3}
    assert authz.evaluate('groups == ["a", "b"] && n == 3 && n + 1 == 4', claims).allowed


# --- compile errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "column", "problem"),
    [
        ("email.endsWith(", 15, "unexpected end of expression"),
        ("email ==", 7, "unexpected end of expression"),
        ("1 +", 3, "unexpected end of expression"),
        ('"unterminated', 1, "unexpected character '\"'"),
        ("email = 1", 7, "unexpected character '='"),
        ('email.endswith("@acme.com")', 7, "unknown function 'endswith'"),
        ("groups.exists(g)", 8, "exists() takes 2 arguments"),
        ("groups.exists(1, true)", 8, "exists() needs a variable name"),
        ("has(a, b)", 1, "has() takes 1 argument"),
        ("99999999999999999999 > 1", 1, "invalid literal"),
    ],
)
def test_compile_errors_show_the_position(expression, column, problem):
    message = compile_error(expression).message
    first, excerpt, caret = message.split("\n")
    assert first.startswith(f"Line 1, column {column}: {problem}")
    assert excerpt == expression
    assert caret == " " * (column - 1) + "^"


def test_compile_error_on_a_later_line_shows_that_line():
    message = compile_error('email_verified &&\n  email.endsWith("@acme.com") &&\n  tid ==').message
    assert message == "Line 3, column 7: unexpected end of expression.\n  tid ==\n      ^"


def test_compile_error_excerpt_is_clipped_around_the_column():
    expression = "true && " * 30 + "email ==" + " && true" * 30
    first, excerpt, caret = compile_error(expression).message.split("\n")
    assert first == "Line 1, column 250: unexpected '&&'."
    assert len(excerpt) <= 81 and "email ==" in excerpt
    assert excerpt[len(caret) - 1] == "&"


def test_expressions_longer_than_the_limit_are_rejected():
    at_limit = '"' + "a" * (authz.MAX_EXPRESSION_LENGTH - 2) + '"'
    authz.compile_expression(at_limit)
    message = compile_error(at_limit + " ").message
    assert "longer than 4096 characters" in message


def test_deeply_nested_expressions_are_rejected():
    assert "nested too deeply" in compile_error("(" * 100 + "true" + ")" * 100).message
    # ...but long chains of alternatives, as admins write them, are fine.
    chain = " || ".join(f'tid == "t{i}"' for i in range(150))
    assert authz.evaluate(chain + ' || tid == "t1"', CLAIMS).allowed


def test_blank_expressions():
    for blank in ("", "   ", "\n\t"):
        assert authz.is_blank(blank)
        assert "empty" in compile_error(blank).message
    assert authz.is_blank(None)
    assert not authz.is_blank("true")


# --- limits --------------------------------------------------------------------------------


def test_step_limit_refuses_and_is_not_swallowed_by_or(monkeypatch):
    monkeypatch.setattr(authz, "MAX_EVALUATION_STEPS", 2_000)
    claims = {"groups": [f"g{i}" for i in range(100)]}
    expression = "groups.all(a, groups.all(b, a != b || a == b)) || true"
    result = authz.evaluate(expression, claims)
    assert result == AuthorizationResult(False, "evaluation error: step limit exceeded")
    assert authz.evaluate("groups.exists(g, g == 'g99')", claims).allowed


def test_time_limit_refuses(monkeypatch):
    monkeypatch.setattr(authz, "MAX_EVALUATION_SECONDS", 0.0)
    claims = {"groups": [f"g{i}" for i in range(500)]}
    result = authz.evaluate('groups.exists(g, g == "none")', claims)
    assert result == AuthorizationResult(False, "evaluation error: time limit exceeded")


def test_values_cannot_grow_without_bound():
    expression = '["' + "x" * 64 + '"]' + ".map(a, a + a)" * 20 + " == []"
    result = authz.evaluate(expression, {})
    assert result == AuthorizationResult(False, "evaluation error: value too large")


# --- cache and threads ---------------------------------------------------------------------


def test_the_same_expression_is_compiled_once():
    expression = 'email.endsWith("@acme.com")'
    assert authz.evaluate(expression, CLAIMS).allowed
    assert not authz.evaluate(expression, {"email": "eve@evil.example"}).allowed
    info = authz.compile_expression.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    assert authz.compile_expression(expression) is authz.compile_expression(expression)


def test_a_compiled_expression_is_safe_to_share_between_threads():
    compiled = authz.compile_expression('groups.exists(g, g == "admins") && email != ""')

    def check(i: int) -> bool:
        groups = ["admins"] if i % 2 else ["staff"]
        return compiled.evaluate({"email": f"u{i}@acme.com", "groups": groups}).allowed

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(check, range(64)))
    assert results == [bool(i % 2) for i in range(64)]
