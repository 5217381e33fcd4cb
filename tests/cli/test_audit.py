"""`flask audit list`: newest first, filters, limits, and no secrets in the output."""

from __future__ import annotations

from datetime import timedelta

from app.extensions import db
from app.models.base import utcnow
from app.services import audit
from tests.cli.helpers import run_json
from tests.conftest import DEFAULT_PASSWORD


def actions(events: list[dict]) -> list[str]:
    return [e["action"] for e in events]


def add_events(app, *specs: tuple[str, int | None]) -> None:
    """Record events one second apart, oldest first: (action, account_id)."""
    start = utcnow() - timedelta(hours=1)
    with app.app_context():
        for offset, (action, account_id) in enumerate(specs):
            event = audit.record(action, account_id=account_id)
            event.occurred_at = start + timedelta(seconds=offset)
        db.session.commit()


def test_list_is_a_json_array_newest_first(runner, app):
    add_events(app, ("test.first", None), ("test.second", None), ("test.third", None))

    events = run_json(runner, "audit", "list")

    assert actions(events) == ["test.third", "test.second", "test.first"]
    assert events[0]["occurred_at"] > events[1]["occurred_at"] > events[2]["occurred_at"]
    assert {"id", "occurred_at", "action", "actor", "account_id", "details"} <= set(events[0])


def test_events_of_one_command_are_listed_newest_first(runner, make_account):
    account = make_account()

    run_json(runner, "users", "create", "--email", "a@example.com", "--account", str(account.id))

    assert actions(run_json(runner, "audit", "list")) == [
        "membership.created",
        "user.created",
        "account.created",
    ]


def test_empty_log_is_an_empty_array(runner):
    assert run_json(runner, "audit", "list") == []


def test_text_output_without_json(runner, app):
    assert runner.invoke(args=["audit", "list"]).stdout.strip() == "No events."
    add_events(app, ("test.event", None))

    result = runner.invoke(args=["audit", "list"])

    assert result.exit_code == 0
    assert "test.event" in result.stdout


def test_account_filter(runner, make_account, make_user):
    acme = make_account("Acme", "acme")
    other = make_account("Other", "other")
    make_user("a@example.com", account_id=acme.id)
    make_user("b@example.com", account_id=other.id)

    events = run_json(runner, "audit", "list", "--account", str(acme.id))

    assert actions(events) == ["membership.created", "account.created"]
    assert {e["account_id"] for e in events} == {acme.id}


def test_action_prefix_filter(runner, app):
    add_events(
        app,
        ("auth.signin.succeeded", None),
        ("auth.signout", None),
        ("authz.denied", None),
        ("user.created", None),
        ("auth.signin.refused", None),
    )

    assert actions(run_json(runner, "audit", "list", "--action", "auth.signin")) == [
        "auth.signin.refused",
        "auth.signin.succeeded",
    ]
    assert actions(run_json(runner, "audit", "list", "--action", "auth.")) == [
        "auth.signin.refused",
        "auth.signout",
        "auth.signin.succeeded",
    ]
    assert run_json(runner, "audit", "list", "--action", "nothing") == []


def test_action_prefix_treats_like_wildcards_literally(runner, app):
    add_events(app, ("auth.signin", None), ("authXsignin", None))

    assert actions(run_json(runner, "audit", "list", "--action", "auth_signin")) == []
    assert actions(run_json(runner, "audit", "list", "--action", "%signin")) == []


def test_limit_all_and_the_default_of_100(runner, app):
    add_events(app, *[(f"test.e{i:03d}", None) for i in range(105)])

    assert actions(run_json(runner, "audit", "list", "--limit", "3")) == [
        "test.e104",
        "test.e103",
        "test.e102",
    ]
    default = run_json(runner, "audit", "list")
    assert len(default) == 100
    assert default[-1]["action"] == "test.e005"
    everything = run_json(runner, "audit", "list", "--all")
    assert len(everything) == 105
    assert everything[-1]["action"] == "test.e000"
    assert len(run_json(runner, "audit", "list", "--all", "--limit", "2")) == 105


def test_limit_combines_with_filters(runner, app):
    # Events keep an account id without a foreign key: the log outlives deleted accounts.
    add_events(app, ("test.a", 1), ("other.b", 1), ("test.c", 1), ("test.d", None))

    events = run_json(runner, "audit", "list", "--account", "1", "--action", "test", "--limit", "1")

    assert actions(events) == ["test.c"]


def test_bad_limit_is_refused(runner):
    for value in ("0", "-1", "many"):
        result = runner.invoke(args=["audit", "list", "--limit", value, "--json"])
        assert result.exit_code == 2
        assert result.stdout == ""
        assert "--limit" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1  # one-line error


def test_failed_sign_in_is_listed_as_refused(runner, auth, make_user):
    user = make_user("alice@example.com")

    assert auth.login(user.email, "not the right password").status_code == 401
    assert auth.login("nobody@example.com", "not the right password").status_code == 401

    events = run_json(runner, "audit", "list", "--action", "auth.signin")
    assert actions(events) == ["auth.signin.refused", "auth.signin.refused"]
    unknown, wrong = events
    assert wrong["actor"] == "alice@example.com"
    assert wrong["actor_user_id"] == str(user.id)
    assert wrong["details"]["reason"] == "bad_password"
    assert unknown["actor"] == "nobody@example.com"
    assert unknown["actor_user_id"] is None
    assert unknown["details"]["reason"] == "unknown_email"
    assert unknown["ip_address"]


def test_output_holds_no_password_or_hash(runner, auth, make_account):
    account = make_account()
    create = [
        "users",
        "create",
        "--email",
        "alice@example.com",
        "--password",
        DEFAULT_PASSWORD,
        "--account",
        str(account.id),
    ]
    assert runner.invoke(args=create).exit_code == 0
    assert auth.login("alice@example.com", DEFAULT_PASSWORD).status_code == 303
    auth.logout()
    assert auth.login("alice@example.com", "a wrong guess of a password").status_code == 401
    for args in (["audit", "list", "--all", "--json"], ["audit", "list", "--all"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 0
        output = result.stdout
        assert "auth.signin.succeeded" in output
        assert "auth.signin.refused" in output
        for secret in (DEFAULT_PASSWORD, "a wrong guess of a password"):
            assert secret not in output
        assert "argon2" not in output.lower()
