"""The password sign-in path without ORM objects: what it reads, writes and still offers.

check_password_sign_in reads one row of columns, sign_in_without_record writes the session
row with one INSERT, login_buttons returns plain rows, and the ORM objects (the user, the
session row) are still there for the callers that ask for them.
"""

from __future__ import annotations

import uuid

import pytest
from flask import session as flask_session
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent
from app.models import Session
from app.models import User
from app.services import accounts
from app.services import audit
from app.services import outbound
from app.services import providers
from app.services import sessions
from app.services import users
from app.services.providers import ProviderFields
from app.services.users import SignInRefusal
from app.session_interface import current_record
from app.session_interface import sign_in
from app.session_interface import sign_in_without_record
from tests.conftest import DEFAULT_PASSWORD
from tests.helpers import session_cookie
from tests.helpers import session_row


def _events(action: str) -> list[AuditEvent]:
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_check_gives_the_user_id_and_loads_the_user_only_when_asked(app, make_user):
    made = make_user("Ada@Example.com")
    with app.app_context():
        check = users.check_password_sign_in(
            " ADA@example.COM ", DEFAULT_PASSWORD, meta=audit.NO_REQUEST
        )
        assert check.ok and check.user_id == made.id
        assert not any(isinstance(obj, User) for obj in db.session.identity_map.values())
        assert check.user.email == "ada@example.com"
        [event] = _events("auth.signin.succeeded")
        assert (event.actor_user_id, event.actor_label) == (made.id, "ada@example.com")
        assert event.target_id == str(made.id) and event.details == {"method": "password"}


@pytest.mark.parametrize(
    ("email", "password", "refusal"),
    [
        ("nobody@example.com", DEFAULT_PASSWORD, SignInRefusal.UNKNOWN_EMAIL),
        ("not an email", DEFAULT_PASSWORD, SignInRefusal.UNKNOWN_EMAIL),
        ("user@example.com", "wrong password here", SignInRefusal.BAD_PASSWORD),
    ],
)
def test_refusals_are_audited_with_who_was_meant(app, make_user, email, password, refusal):
    made = make_user()
    with app.app_context():
        check = users.check_password_sign_in(email, password, meta=audit.NO_REQUEST)
        assert check.refusal is refusal
        [event] = _events("auth.signin.refused")
        assert event.details == {"method": "password", "reason": refusal.value}
        if refusal is SignInRefusal.UNKNOWN_EMAIL:
            assert check.user_id is None and check.user is None
            assert event.actor_user_id is None and event.actor_label == email
        else:
            assert check.user_id == made.id
            assert event.actor_user_id == made.id and event.target_id == str(made.id)


def test_deactivated_user_is_refused_as_inactive(app, make_user):
    made = make_user()
    with app.app_context():
        users.deactivate_user(users.get_user(made.id))
        db.session.commit()
        check = users.check_password_sign_in(made.email, made.password, meta=audit.NO_REQUEST)
        assert check.refusal is SignInRefusal.INACTIVE and check.user_id == made.id


def test_sign_in_without_record_writes_the_row_and_a_view_can_still_load_it(app, make_user):
    made = make_user()
    with app.test_request_context("/login", method="POST"):
        flask_session["next"] = "/account"
        flask_session["csrf_token"] = "pre-login"
        sign_in_without_record(made.id, auth_method="password")
        db.session.commit()
        assert flask_session.user_id == made.id
        assert dict(flask_session) == {"next": "/account"}  # the CSRF token is not carried
        record = current_record()  # loaded on demand
        assert isinstance(record, Session)
        assert (record.user_id, record.auth_method) == (made.id, "password")
        assert record.authenticated_at is not None and record.revoked_at is None
        assert record.data == {"next": "/account"}
        token = flask_session.new_token
    assert session_row(app, token).id == record.id


def test_sign_in_returns_the_new_row_with_the_federated_fields(app, make_user, monkeypatch):
    monkeypatch.setattr(outbound, "check_url", lambda url: None)
    made = make_user()
    provider_id = _provider(app)
    with app.test_request_context("/signin-idp"):
        user = users.get_user(made.id)
        record = sign_in(
            user,
            auth_method="oidc",
            provider_id=provider_id,
            idp_sid="sid-1",
            idp_subject="sub-1",
            id_token_encrypted="ciphertext",
        )
        assert current_record() is record
        record_id = record.id
        db.session.commit()
        token = flask_session.new_token
    row = session_row(app, token)
    assert (row.id, row.user_id, row.auth_method) == (record_id, made.id, "oidc")
    assert (row.provider_id, row.idp_sid, row.idp_subject) == (provider_id, "sid-1", "sub-1")
    assert row.id_token_encrypted == "ciphertext"


def test_the_anonymous_row_is_revoked_as_rotated_in_the_same_transaction(app, client, make_user):
    made = make_user()
    with client.session_transaction() as anonymous_session:
        anonymous_session["next"] = "/account"  # something to keep: the session gets a row
    anonymous = session_cookie(client, app)
    with app.test_request_context(
        "/login", method="POST", headers={"Cookie": f"keyward_session={anonymous}"}
    ):
        assert flask_session.record_id == session_row(app, anonymous).id
        sign_in_without_record(made.id, auth_method="password")
        db.session.rollback()  # nothing is written before the view commits
    assert session_row(app, anonymous).revoked_at is None
    with app.test_request_context(
        "/login", method="POST", headers={"Cookie": f"keyward_session={anonymous}"}
    ):
        sign_in_without_record(made.id, auth_method="password")
        db.session.commit()
    assert session_row(app, anonymous).revoked_reason == "rotated"


def test_find_live_revokes_a_session_whose_user_was_deactivated_meanwhile(app, make_user):
    made = make_user()
    with app.app_context():
        values, token = sessions.insert_session(data={}, user_id=made.id, auth_method="password")
        db.session.execute(User.__table__.update().values(active=False))
        db.session.commit()
        assert sessions.find_live(token) is None
        db.session.commit()
        assert db.session.get(Session, values["id"]).revoked_reason == "user_inactive"
        assert sessions.find_live("no-such-token") is None


def test_login_buttons_are_rows_of_the_enabled_visible_providers(app, make_account, monkeypatch):
    monkeypatch.setattr(outbound, "check_url", lambda url: None)
    acme = make_account("Acme")
    other = make_account("Other")
    with app.app_context():
        shown = _provider(app, account_id=acme.id, name="Acme SSO", icon="https://x/i.png")
        _provider(app, account_id=acme.id, name="Hidden", visible=False)
        _provider(app, account_id=acme.id, name="Disabled", enabled=False)
        _provider(app, account_id=other.id, name="Other SSO")
        assert providers.login_buttons(None) == []
        [button] = providers.login_buttons(acme.id)
        assert button == providers.LoginButton(shown, acme.id, "Acme SSO", "https://x/i.png")
    page = app.test_client().get(f"/login/{acme.slug}").text
    assert "Sign in with Acme SSO" in page and f"/sso/{shown}" in page
    assert "Hidden" not in page and "Disabled" not in page and "Other SSO" not in page


def _provider(
    app,
    *,
    account_id: int | None = None,
    name: str = "IdP",
    icon: str | None = None,
    visible: bool = True,
    enabled: bool = True,
) -> uuid.UUID:
    with app.app_context():
        account = (
            accounts.get_account(account_id)
            if account_id is not None
            else accounts.create_account(f"Owner {uuid.uuid4().hex[:6]}")
        )
        row = providers.create_provider(
            ProviderFields(
                display_name=name,
                scheme=f"s{uuid.uuid4().hex[:10]}",
                authority="https://idp.example.com",
                client_id="client",
                icon_url=icon,
                visible=visible,
                enabled=enabled,
            ),
            account=account,
        )
        db.session.commit()
        return row.id


def test_needs_rehash_answers_like_argon2_for_every_shape_of_hash(app):
    from argon2 import PasswordHasher
    from argon2 import Type

    from app.services import passwords

    with app.app_context():
        config = app.config
        today = {
            "time_cost": config["ARGON2_TIME_COST"],
            "memory_cost": config["ARGON2_MEMORY_COST"],
            "parallelism": config["ARGON2_PARALLELISM"],
            "hash_len": 32,
            "salt_len": 16,
            "type": Type.ID,
        }
        variants = [
            {},
            {"salt_len": 24},
            {"hash_len": 16},
            {"time_cost": today["time_cost"] + 1},
            {"memory_cost": today["memory_cost"] * 2},
            {"parallelism": 2},
            {"type": Type.I},
        ]
        reference = PasswordHasher(**today)
        for change in variants:
            stored = PasswordHasher(**{**today, **change}).hash("x" * 12)
            assert passwords.needs_rehash(stored) == reference.check_needs_rehash(stored), change
            assert passwords.needs_rehash(stored) == bool(change), change
        assert passwords.needs_rehash("$argon2id$not-a-hash")
