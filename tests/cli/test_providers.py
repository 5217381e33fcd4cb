"""`flask providers ...`: create/list/show/enable/disable/delete, built-ins, bad input."""

from __future__ import annotations

import uuid

import pytest

from tests.cli.helpers import assert_error
from tests.cli.helpers import run_json
from tests.conftest import base_config

AUTHORITY = "http://127.0.0.1:9"  # never contacted: check_url only vets the address


@pytest.fixture
def config(database_url):
    return base_config(database_url, OUTBOUND_ALLOW_PRIVATE="127.0.0.1:9")


def create(runner, account_id, *extra):
    return run_json(
        runner,
        "providers",
        "create",
        "--account",
        str(account_id),
        "--display-name",
        "Acme SSO",
        "--scheme",
        "AcmeSSO",
        "--authority",
        AUTHORITY,
        "--client-id",
        "keyward",
        "--client-secret",
        "s3cr3t-value",
        *extra,
    )


def test_create_prints_the_provider_with_callback_urls_and_no_secret(runner, make_account):
    account = make_account()
    provider = create(runner, account.id, "--jit", "--scopes", "openid profile email groups")
    assert provider["scheme"] == "AcmeSSO" and provider["protocol"] == "oidc"
    assert provider["enabled"] is True and provider["visible"] is True and provider["jit"] is True
    assert provider["scopes"] == "openid profile email groups"
    assert provider["sso_url"] == f"http://localhost/sso/{provider['id']}"
    assert provider["callback_urls"] == {
        "signin": "http://localhost/signin-AcmeSSO",
        "signout_callback": "http://localhost/signout-callback-AcmeSSO",
        "signout": "http://localhost/signout-AcmeSSO",
        "backchannel_logout": "http://localhost/backchannel-logout-AcmeSSO",
    }
    assert provider["health"] == {
        "last_success": None,
        "last_error": None,
        "key_ids": [],
        "cert_expiry": None,
    }
    assert provider["has_client_secret"] is True
    shown = runner.invoke(args=["providers", "show", provider["id"], "--json"])
    listed = runner.invoke(args=["providers", "list", "--json"])
    for output in (shown.stdout, listed.stdout):
        assert "s3cr3t-value" not in output


def test_secret_is_stored_encrypted(app, runner, make_account):
    from app.extensions import db
    from app.models import SsoProvider
    from app.services import providers

    created = create(runner, make_account().id)
    with app.app_context():
        row = db.session.get(SsoProvider, uuid.UUID(created["id"]))
        assert "s3cr3t-value" not in row.client_secret_encrypted
        assert providers.client_secret(row) == "s3cr3t-value"


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--scheme", "1bad"], "must start with a letter"),
        (["--scheme", "has space"], "must start with a letter"),
        (["--scheme", "google"], "reserved"),
        (["--authority", "http://idp.example.com"], "authority url"),
        (["--authority", "https://10.0.0.5"], "authority url"),
        (["--authorization-expression", "email.endsWith("], "line 1"),
        (["--icon-url", "javascript:alert(1)"], "icon url"),
        (["--client-id", ""], "client id"),
    ],
)
def test_bad_input_is_a_one_line_error_and_creates_nothing(runner, make_account, args, fragment):
    account = make_account()
    base = {
        "--display-name": "Acme SSO",
        "--scheme": "AcmeSSO",
        "--authority": AUTHORITY,
        "--client-id": "keyward",
    }
    overrides = dict(zip(args[::2], args[1::2], strict=True))
    merged = [item for key, value in {**base, **overrides}.items() for item in (key, value)]
    result = runner.invoke(
        args=["providers", "create", "--account", str(account.id), *merged, "--json"]
    )
    assert_error(result, fragment)
    assert run_json(runner, "providers", "list") == []


def test_scheme_is_unique_ignoring_case(runner, make_account):
    account = make_account()
    create(runner, account.id)
    result = runner.invoke(
        args=[
            "providers",
            "create",
            "--account",
            str(account.id),
            "--display-name",
            "X",
            "--scheme",
            "acmesso",
            "--authority",
            AUTHORITY,
            "--client-id",
            "k",
            "--json",
        ]
    )
    assert_error(result, "already in use")


def test_unknown_account_and_missing_account_are_errors(runner):
    result = runner.invoke(
        args=[
            "providers",
            "create",
            "--account",
            "999",
            "--display-name",
            "X",
            "--scheme",
            "X",
            "--authority",
            AUTHORITY,
            "--client-id",
            "k",
        ]
    )
    assert_error(result, "no account with id 999")
    result = runner.invoke(
        args=[
            "providers",
            "create",
            "--display-name",
            "X",
            "--scheme",
            "X",
            "--authority",
            AUTHORITY,
            "--client-id",
            "k",
        ]
    )
    assert_error(result, "--account is required")


def test_builtin_provider_has_no_account_and_takes_authority(runner):
    google = run_json(
        runner,
        "providers",
        "create",
        "--builtin",
        "google",
        "--client-id",
        "g-client",
        "--authority",
        AUTHORITY,
    )
    assert google["builtin"] == "google" and google["account_id"] is None
    assert google["scheme"] == "google" and google["authority"] == AUTHORITY
    again = runner.invoke(
        args=[
            "providers",
            "create",
            "--builtin",
            "google",
            "--client-id",
            "g",
            "--authority",
            AUTHORITY,
        ]
    )
    assert_error(again, "already exists")


def test_enable_disable_delete(runner, make_account):
    provider = create(runner, make_account().id)
    assert run_json(runner, "providers", "disable", provider["id"])["enabled"] is False
    assert run_json(runner, "providers", "enable", provider["id"])["enabled"] is True
    deleted = run_json(runner, "providers", "delete", provider["id"])
    assert deleted == {
        "id": provider["id"],
        "scheme": "AcmeSSO",
        "deleted": True,
        "logins_removed": 0,
    }
    assert_error(runner.invoke(args=["providers", "show", provider["id"]]), "no provider")
    assert_error(runner.invoke(args=["providers", "show", "not-a-guid"]), "no provider")


def test_refresh_of_an_unreachable_idp_fails_and_records_the_error(runner, make_account):
    provider = create(runner, make_account().id)
    result = runner.invoke(args=["providers", "refresh", provider["id"], "--json"])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("Error: 1 provider(s) could not be refreshed")
    health = run_json(runner, "providers", "show", provider["id"])["health"]
    assert health["last_error"] and health["last_success"] is None
