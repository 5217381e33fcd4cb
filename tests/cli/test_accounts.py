"""`flask accounts create/list`: JSON output, slug derivation and rules, errors on stderr."""

from __future__ import annotations

import json

import pytest

from tests.cli.helpers import assert_error
from tests.cli.helpers import run_json


def list_accounts(runner) -> list[dict]:
    accounts = run_json(runner, "accounts", "list")
    assert isinstance(accounts, list)
    return accounts


def test_create_prints_the_account_as_one_json_object(runner):
    account = run_json(runner, "accounts", "create", "--name", "Acme Corp.")

    assert set(account) == {"id", "name", "slug"}
    assert isinstance(account["id"], int)
    assert account["name"] == "Acme Corp."
    assert account["slug"] == "acme-corp"
    assert list_accounts(runner) == [account]


def test_create_without_json_prints_a_line_of_text(runner):
    result = runner.invoke(args=["accounts", "create", "--name", "Initech"])

    assert result.exit_code == 0
    assert "initech" in result.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


def test_derived_slug_gets_a_numeric_suffix_when_taken(runner):
    first = run_json(runner, "accounts", "create", "--name", "Acme Corp.")
    second = run_json(runner, "accounts", "create", "--name", "ACME corp")
    third = run_json(runner, "accounts", "create", "--name", "acme   corp!")

    assert [first["slug"], second["slug"], third["slug"]] == [
        "acme-corp",
        "acme-corp-2",
        "acme-corp-3",
    ]
    assert len({first["id"], second["id"], third["id"]}) == 3


def test_derived_slug_of_a_reserved_word_is_moved_aside(runner):
    account = run_json(runner, "accounts", "create", "--name", "Admin")

    assert account["slug"] != "admin"
    assert account["slug"].startswith("admin-")


def test_derived_slug_is_ascii(runner):
    account = run_json(runner, "accounts", "create", "--name", "Café Müller")

    assert account["slug"] == "cafe-muller"


def test_explicit_slug_is_used(runner):
    account = run_json(runner, "accounts", "create", "--name", "Acme Corp.", "--slug", "acme")

    assert account["slug"] == "acme"


def test_slug_of_63_characters_is_accepted(runner):
    slug = "a" * 63
    account = run_json(runner, "accounts", "create", "--name", "Long", "--slug", slug)

    assert account["slug"] == slug


def test_explicit_duplicate_slug_is_refused(runner, make_account):
    existing = make_account("Acme", "acme")

    result = runner.invoke(
        args=["accounts", "create", "--name", "Other", "--slug", "acme", "--json"]
    )

    assert_error(result, "already in use")
    assert [a["id"] for a in list_accounts(runner)] == [existing.id]


@pytest.mark.parametrize("slug", ["Bad Slug", "-x", "x-", "a_b", "x" * 64])
def test_invalid_slug_is_refused_and_nothing_is_created(runner, slug):
    result = runner.invoke(args=["accounts", "create", "--name", "Acme", "--slug", slug, "--json"])

    assert_error(result, "slug")
    assert list_accounts(runner) == []


@pytest.mark.parametrize("slug", ["admin", "login", "API"])
def test_reserved_slug_is_refused_and_nothing_is_created(runner, slug):
    result = runner.invoke(args=["accounts", "create", "--name", "Acme", "--slug", slug, "--json"])

    assert_error(result, "reserved")
    assert list_accounts(runner) == []


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name_is_refused_and_nothing_is_created(runner, name):
    result = runner.invoke(args=["accounts", "create", "--name", name, "--json"])

    assert_error(result, "name")
    assert list_accounts(runner) == []


def test_missing_name_is_a_usage_error(runner):
    result = runner.invoke(args=["accounts", "create", "--json"])

    assert result.exit_code == 2
    assert result.stdout == ""
    assert "--name" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one-line error
    assert list_accounts(runner) == []


def test_a_refused_create_records_no_audit_event(runner, make_account):
    make_account("Acme", "acme")

    runner.invoke(args=["accounts", "create", "--name", "Other", "--slug", "acme"])

    events = run_json(runner, "audit", "list", "--action", "account.created")
    assert len(events) == 1


def test_list_is_a_json_array_in_id_order(runner, make_account):
    assert list_accounts(runner) == []
    first = make_account("Beta", "beta")
    second = make_account("Alpha", "alpha")

    assert list_accounts(runner) == [
        {"id": first.id, "name": "Beta", "slug": "beta"},
        {"id": second.id, "name": "Alpha", "slug": "alpha"},
    ]
