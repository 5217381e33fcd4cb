"""`flask seed-demo`: creates the demo once, prints working credentials only that once."""

from __future__ import annotations

import json
import re

from sqlalchemy import func
from sqlalchemy import select

from app.cli.demo import DEMO_ADMIN
from app.cli.demo import DEMO_MEMBER
from app.extensions import db
from app.models import Account
from app.models import User
from app.services import accounts
from app.services import users

CREDENTIAL_LINE = re.compile(r"(\S+@\S+)\s+password:\s+(\S+)")


def counts(app) -> tuple[int, int]:
    with app.app_context():
        return (
            db.session.scalar(select(func.count()).select_from(Account)),
            db.session.scalar(select(func.count()).select_from(User)),
        )


def test_first_run_prints_credentials_that_sign_in(runner, app, auth, client):
    result = runner.invoke(args=["seed-demo"])

    assert result.exit_code == 0, result.output
    credentials = dict(CREDENTIAL_LINE.findall(result.stdout))
    assert set(credentials) == {DEMO_ADMIN, DEMO_MEMBER}
    assert credentials[DEMO_ADMIN] != credentials[DEMO_MEMBER]
    for email, password in credentials.items():
        assert auth.login(email, password).status_code == 303
        assert client.get("/whoami").json["email"] == email
        auth.logout()
        assert client.get("/whoami").json["authenticated"] is False


def test_first_run_creates_the_account_with_an_admin_and_a_member(runner, app):
    assert runner.invoke(args=["seed-demo"]).exit_code == 0

    assert counts(app) == (1, 2)
    with app.app_context():
        account = db.session.scalar(select(Account))
        assert account.slug == "demo"
        admin = users.find_by_email(DEMO_ADMIN)
        member = users.find_by_email(DEMO_MEMBER)
        assert accounts.role_in(admin, account.id).value == "admin"
        assert accounts.role_in(member, account.id).value == "member"


def test_second_run_creates_nothing_and_prints_no_password(runner, app, auth):
    first = runner.invoke(args=["seed-demo"])
    passwords = dict(CREDENTIAL_LINE.findall(first.stdout))

    second = runner.invoke(args=["seed-demo"])

    assert second.exit_code == 0
    assert counts(app) == (1, 2)
    assert "password:" not in second.stdout
    for password in passwords.values():
        assert password not in second.stdout
        assert password not in second.stderr
    # The first passwords still work: the second run did not reset them.
    assert auth.login(DEMO_ADMIN, passwords[DEMO_ADMIN]).status_code == 303


def test_passwords_differ_between_installs(runner, app):
    first = dict(CREDENTIAL_LINE.findall(runner.invoke(args=["seed-demo"]).stdout))
    with app.app_context():
        for email in (DEMO_ADMIN, DEMO_MEMBER):
            db.session.delete(users.find_by_email(email))
        db.session.delete(db.session.scalar(select(Account)))
        db.session.commit()

    second = dict(CREDENTIAL_LINE.findall(runner.invoke(args=["seed-demo"]).stdout))

    assert set(second) == {DEMO_ADMIN, DEMO_MEMBER}
    assert set(first.values()).isdisjoint(second.values())


def test_json_output(runner, app, auth):
    result = runner.invoke(args=["seed-demo", "--json"])

    assert result.exit_code == 0
    assert len(result.stdout.strip().splitlines()) == 1
    payload = json.loads(result.stdout)
    assert payload["created"] is True
    assert set(payload["account"]) == {"id", "name", "slug"}
    assert payload["account"]["slug"] == "demo"
    by_email = {u["email"]: u for u in payload["users"]}
    assert set(by_email) == {DEMO_ADMIN, DEMO_MEMBER}
    assert by_email[DEMO_ADMIN]["role"] == "admin"
    assert by_email[DEMO_MEMBER]["role"] == "member"
    assert auth.login(DEMO_MEMBER, by_email[DEMO_MEMBER]["password"]).status_code == 303

    again = runner.invoke(args=["seed-demo", "--json"])

    assert again.exit_code == 0
    assert json.loads(again.stdout) == {"created": False}
    assert counts(app) == (1, 2)


def test_seed_with_a_taken_demo_email_fails_cleanly(runner, app, make_user):
    make_user(DEMO_MEMBER)

    result = runner.invoke(args=["seed-demo", "--json"])

    assert result.exit_code != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert counts(app) == (0, 1)


def test_audit_trail_of_the_seed_holds_no_password(runner):
    payload = json.loads(runner.invoke(args=["seed-demo", "--json"]).stdout)

    result = runner.invoke(args=["audit", "list", "--all", "--json"])

    assert result.exit_code == 0
    assert "user.created" in result.stdout
    for user in payload["users"]:
        assert user["password"] not in result.stdout
    assert "argon2" not in result.stdout.lower()
