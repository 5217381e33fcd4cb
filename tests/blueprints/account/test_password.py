"""Password change on the profile: current password required, strength rules, sessions."""

from __future__ import annotations

import pytest

from tests.conftest import DEFAULT_PASSWORD
from tests.conftest import AuthActions
from tests.helpers import audit_events
from tests.helpers import session_cookie

NEW_PASSWORD = "a brand new passphrase 42"


def change(auth: AuthActions, current: str, new: str, confirm: str | None = None):
    return auth.post(
        "/account/password",
        {
            "current_password": current,
            "new_password": new,
            "confirm_password": new if confirm is None else confirm,
        },
        token_from="/account/password",
    )


def test_password_change_needs_the_current_password(app, client, auth, make_user):
    user = make_user()
    auth.login(user.email)
    response = change(auth, "not my password at all", NEW_PASSWORD)
    assert response.status_code == 400
    assert "Current password is not correct." in response.text
    auth.logout()
    assert auth.login(user.email, NEW_PASSWORD).status_code == 401
    assert auth.login(user.email, DEFAULT_PASSWORD).status_code == 303
    assert audit_events(app, "account.password.changed") == []


@pytest.mark.parametrize(
    "new,message",
    [
        ("short", "at least 12 characters"),
        ("password1234", "too common"),
        ("aaaaaaaaaaaaaaaa", "too common"),
        ("user@example.com!!", "must not contain your email"),
        (DEFAULT_PASSWORD, "must differ"),
    ],
)
def test_weak_or_unchanged_new_password_is_refused(auth, make_user, new, message):
    user = make_user()
    auth.login(user.email)
    response = change(auth, DEFAULT_PASSWORD, new)
    assert response.status_code == 400
    assert message in response.text
    auth.logout()
    assert auth.login(user.email, DEFAULT_PASSWORD).status_code == 303


def test_confirmation_must_match(auth, make_user):
    user = make_user()
    auth.login(user.email)
    response = change(auth, DEFAULT_PASSWORD, NEW_PASSWORD, confirm=NEW_PASSWORD + "x")
    assert response.status_code == 400 and "The passwords differ." in response.text


def test_password_change_ends_other_sessions_and_rotates_this_one(app, client, auth, make_user):
    user = make_user()
    other_browser = app.test_client()
    AuthActions(other_browser).login(user.email)
    auth.login(user.email)
    before = session_cookie(client, app)

    response = change(auth, DEFAULT_PASSWORD, NEW_PASSWORD)
    assert response.status_code == 303 and response.headers["Location"] == "/account"

    assert client.get("/whoami").json["authenticated"] is True
    assert session_cookie(client, app) != before
    assert other_browser.get("/whoami").json["authenticated"] is False
    events = audit_events(app, "account.password.changed")
    assert len(events) == 1 and events[0]["details"] == {"sessions_ended": 1}
    assert NEW_PASSWORD not in str(events) and DEFAULT_PASSWORD not in str(events)

    auth.logout()
    assert auth.login(user.email, DEFAULT_PASSWORD).status_code == 401
    assert auth.login(user.email, NEW_PASSWORD).status_code == 303


def test_password_change_is_csrf_protected(auth, client, make_user):
    user = make_user()
    auth.login(user.email)
    response = client.post(
        "/account/password",
        data={
            "current_password": DEFAULT_PASSWORD,
            "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD,
        },
    )
    assert response.status_code == 400
    auth.logout()
    assert auth.login(user.email, DEFAULT_PASSWORD).status_code == 303


def test_stored_hash_is_argon2id_with_configured_parameters(app, make_user):
    from app.services import users

    user = make_user()
    with app.app_context():
        stored = users.get_user(user.id).password_hash
    m, t = app.config["ARGON2_MEMORY_COST"], app.config["ARGON2_TIME_COST"]
    assert stored.startswith(f"$argon2id$v=19$m={m},t={t},p=1$")
    assert DEFAULT_PASSWORD not in stored
