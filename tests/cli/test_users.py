"""`flask users create/show/deactivate`: JSON output, validation, roles and sessions."""

from __future__ import annotations

import json
import uuid

import pytest

from app.services import accounts
from app.services import users
from tests.cli.helpers import assert_error
from tests.cli.helpers import run_json
from tests.conftest import DEFAULT_PASSWORD


def user_count(app) -> int:
    from sqlalchemy import func
    from sqlalchemy import select

    from app.extensions import db
    from app.models import User

    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(User))


# --- create ------------------------------------------------------------------------------
def test_create_prints_the_user_as_one_json_object(runner, app):
    user = run_json(
        runner, "users", "create", "--email", "Alice@Example.COM", "--password", DEFAULT_PASSWORD
    )

    assert {"id", "email"} <= set(user)
    assert user["email"] == "alice@example.com"
    assert "password" not in json.dumps(user)
    with app.app_context():
        stored = users.get_user(uuid.UUID(user["id"]))
        assert stored.email == "alice@example.com"
        assert stored.password_hash is not None
        assert DEFAULT_PASSWORD not in stored.password_hash


def test_created_user_signs_in_with_the_password(runner, auth, client):
    run_json(
        runner, "users", "create", "--email", "Alice@Example.com", "--password", DEFAULT_PASSWORD
    )

    assert auth.login("alice@example.com", DEFAULT_PASSWORD).status_code == 303
    assert client.get("/whoami").json["email"] == "alice@example.com"


def test_show_finds_the_user_by_email_and_by_id(runner):
    created = run_json(runner, "users", "create", "--email", "alice@example.com")

    assert run_json(runner, "users", "show", "ALICE@example.com")["id"] == created["id"]
    assert run_json(runner, "users", "show", created["id"])["email"] == "alice@example.com"
    assert_error(runner.invoke(args=["users", "show", "bob@example.com", "--json"]), "no user")


@pytest.mark.parametrize("email", ["alice@example.com", "ALICE@EXAMPLE.COM", " Alice@example.com "])
def test_duplicate_email_is_refused(runner, app, make_user, email):
    make_user("alice@example.com")

    result = runner.invoke(args=["users", "create", "--email", email, "--json"])

    assert_error(result, "already exists")
    assert user_count(app) == 1


@pytest.mark.parametrize("email", ["not-an-email", "alice@", "@example.com", "a b@example.com", ""])
def test_invalid_email_is_refused(runner, app, email):
    result = runner.invoke(args=["users", "create", "--email", email, "--json"])

    assert_error(result, "email")
    assert user_count(app) == 0


@pytest.mark.parametrize(
    ("password", "fragment"),
    [
        ("short-pw", "at least"),
        ("password1234", "too common"),
        ("PASSWORD1234", "too common"),
        ("aaaaaaaaaaaaaaaa", "too common"),
        ("my-alice-secret-2026", "email"),
        ("x" * 257, "at most"),
    ],
)
def test_weak_password_is_refused_and_no_user_created(runner, app, password, fragment):
    result = runner.invoke(
        args=["users", "create", "--email", "alice@example.com", "--password", password, "--json"]
    )

    assert_error(result, fragment)
    assert password not in result.stderr
    assert user_count(app) == 0


def test_unknown_account_is_refused_and_no_user_created(runner, app):
    result = runner.invoke(
        args=["users", "create", "--email", "alice@example.com", "--account", "999999", "--json"]
    )

    assert_error(result, "999999")
    assert user_count(app) == 0


def test_role_without_account_is_refused(runner, app):
    result = runner.invoke(
        args=["users", "create", "--email", "alice@example.com", "--role", "admin", "--json"]
    )

    assert_error(result, "--account")
    assert user_count(app) == 0


def test_unknown_role_is_a_usage_error(runner, app, make_account):
    account = make_account()

    result = runner.invoke(
        args=[
            "users",
            "create",
            "--email",
            "alice@example.com",
            "--account",
            str(account.id),
            "--role",
            "superuser",
        ]
    )

    assert result.exit_code == 2
    assert result.stdout == ""
    assert "--role" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one-line error
    assert user_count(app) == 0


@pytest.mark.parametrize("role", ["owner", "admin", "member"])
def test_role_in_the_account_is_recorded(runner, app, make_account, role):
    account = make_account()

    user = run_json(
        runner,
        "users",
        "create",
        "--email",
        "alice@example.com",
        "--account",
        str(account.id),
        "--role",
        role,
    )

    assert user["account_id"] == account.id
    assert user["role"] == role
    with app.app_context():
        stored = users.get_user(uuid.UUID(user["id"]))
        assert accounts.role_in(stored, account.id).value == role
    events = run_json(runner, "audit", "list", "--action", "membership.created")
    assert len(events) == 1
    assert events[0]["account_id"] == account.id
    assert events[0]["target_id"] == user["id"]
    assert events[0]["details"]["role"] == role


def test_account_without_role_makes_a_member(runner, app, make_account):
    account = make_account()

    user = run_json(
        runner, "users", "create", "--email", "alice@example.com", "--account", str(account.id)
    )

    assert user["role"] == "member"
    with app.app_context():
        stored = users.get_user(uuid.UUID(user["id"]))
        assert accounts.role_in(stored, account.id).value == "member"


def test_weak_password_with_account_creates_no_membership(runner, app, make_account):
    account = make_account()

    result = runner.invoke(
        args=[
            "users",
            "create",
            "--email",
            "alice@example.com",
            "--password",
            "password1234",
            "--account",
            str(account.id),
            "--role",
            "owner",
        ]
    )

    assert_error(result, "too common")
    assert user_count(app) == 0
    assert run_json(runner, "audit", "list", "--action", "membership") == []
    assert run_json(runner, "audit", "list", "--action", "user") == []


def test_user_without_password_cannot_sign_in(runner, app, auth, client):
    created = run_json(runner, "users", "create", "--email", "sso-only@example.com")

    with app.app_context():
        assert users.get_user(uuid.UUID(created["id"])).password_hash is None
    assert auth.login("sso-only@example.com", DEFAULT_PASSWORD).status_code == 401
    assert client.get("/whoami").json["authenticated"] is False
    refused = run_json(runner, "audit", "list", "--action", "auth.signin.refused")
    assert refused[0]["details"]["reason"] == "no_password"


# --- deactivate --------------------------------------------------------------------------
def test_deactivate_ends_the_users_sessions(runner, auth, client, make_user):
    user = make_user("alice@example.com")
    assert auth.login(user.email).status_code == 303
    assert client.get("/whoami").json["authenticated"] is True

    result = run_json(runner, "users", "deactivate", "Alice@Example.com")

    assert result["email"] == "alice@example.com"
    assert result["id"] == str(user.id)
    assert result["active"] is False
    assert result["sessions_ended"] == 1
    assert client.get("/whoami").json["authenticated"] is False


def test_deactivated_user_cannot_sign_in_and_reactivate_restores(runner, auth, make_user):
    user = make_user("alice@example.com")

    run_json(runner, "users", "deactivate", str(user.id))
    assert auth.login(user.email).status_code == 403

    assert run_json(runner, "users", "reactivate", user.email)["active"] is True
    assert auth.login(user.email).status_code == 303


def test_deactivate_leaves_other_users_signed_in(runner, app, auth, client, make_user):
    alice = make_user("alice@example.com")
    bob = make_user("bob@example.com")
    other = app.test_client()
    assert auth.login(alice.email).status_code == 303
    assert type(auth)(other).login(bob.email).status_code == 303

    assert run_json(runner, "users", "deactivate", alice.email)["sessions_ended"] == 1

    assert client.get("/whoami").json["authenticated"] is False
    assert other.get("/whoami").json["email"] == bob.email


def test_deactivate_is_audited(runner, make_user):
    user = make_user("alice@example.com")

    run_json(runner, "users", "deactivate", user.email)

    events = run_json(runner, "audit", "list", "--action", "user.deactivated")
    assert len(events) == 1
    assert events[0]["target_id"] == str(user.id)


@pytest.mark.parametrize("who", ["nobody@example.com", "not-a-uuid", str(uuid.uuid4())])
def test_deactivate_unknown_user_is_an_error(runner, who):
    assert_error(runner.invoke(args=["users", "deactivate", who, "--json"]), "no user")
