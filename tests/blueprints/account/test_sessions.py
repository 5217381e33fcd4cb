"""Server-side sessions: random ids, rotation, timeouts, revocation on every app instance."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import Session
from app.services import users
from tests.conftest import AuthActions
from tests.helpers import audit_events
from tests.helpers import session_cookie
from tests.helpers import session_row
from tests.helpers import set_session_times


def test_cookie_carries_only_a_random_id_whose_hash_is_stored(app, client, auth, make_user):
    user = make_user()
    auth.login(user.email)
    token = session_cookie(client, app)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)  # 256 random bits, nothing else
    row = session_row(app, token)
    assert row.user_id == user.id and row.auth_method == "password"
    with app.app_context():
        stored = db.session.scalars(select(Session.token_hash)).all()
    assert token not in stored
    assert hashlib.sha256(token.encode()).hexdigest() in stored


def test_sign_in_issues_a_new_session_id_and_retires_the_old_one(app, client, auth, make_user):
    user = make_user()
    # An anonymous session that holds something (a next URL) has a row of its own.
    with client.session_transaction() as anonymous_session:
        anonymous_session["next"] = "/account"
    anonymous = session_cookie(client, app)
    assert session_row(app, anonymous).user_id is None
    auth.login(user.email)
    signed_in = session_cookie(client, app)
    assert signed_in != anonymous
    assert session_row(app, anonymous).revoked_reason == "rotated"

    # Session fixation: whoever planted or saw the pre-login id gets nothing from it.
    attacker = app.test_client()
    attacker.set_cookie(app.config["SESSION_COOKIE_NAME"], anonymous)
    assert attacker.get("/whoami").json == {"authenticated": False}
    assert client.get("/whoami").json["authenticated"] is True


def test_sign_in_from_a_rowless_anonymous_cookie_issues_a_new_id(app, client, auth, make_user):
    user = make_user()
    client.get("/login")
    anonymous = session_cookie(client, app)
    assert anonymous.startswith("a.") and session_row(app, anonymous) is None
    auth.login(user.email)
    signed_in = session_cookie(client, app)
    assert signed_in != anonymous and not signed_in.startswith("a.")
    attacker = app.test_client()
    attacker.set_cookie(app.config["SESSION_COOKIE_NAME"], anonymous)
    assert attacker.get("/whoami").json == {"authenticated": False}
    assert client.get("/whoami").json["authenticated"] is True


def test_a_forged_or_unknown_cookie_is_anonymous_and_cleared(app, make_user):
    forged = app.test_client()
    forged.set_cookie(app.config["SESSION_COOKIE_NAME"], "x" * 43)
    response = forged.get("/whoami")
    assert response.json == {"authenticated": False}
    assert "keyward_session=;" in response.headers.get("Set-Cookie", "")


def test_signing_in_again_rotates_again(app, client, auth, make_user):
    user = make_user()
    auth.login(user.email)
    first = session_cookie(client, app)
    other = make_user("second@example.com")
    # A signed-in user can still post the form (e.g. from a stale tab).
    token = auth.token("/account/password")
    client.post(
        "/login", data={"email": other.email, "password": other.password, "csrf_token": token}
    )
    assert session_cookie(client, app) != first
    assert client.get("/whoami").json["email"] == "second@example.com"
    assert session_row(app, first).revoked_at is not None


def test_revocation_on_one_app_instance_takes_effect_on_another(make_app, make_user):
    # Two web processes sharing one database: web_a and web_b.
    web_a, web_b = make_app(), make_app()
    user = make_user()
    laptop, phone = web_a.test_client(), web_b.test_client()
    AuthActions(laptop).login(user.email)
    AuthActions(phone).login(user.email)

    # The laptop's cookie works on either process: nothing lives in one process's memory.
    roaming = web_b.test_client()
    roaming.set_cookie(web_b.config["SESSION_COOKIE_NAME"], session_cookie(laptop, web_a))
    assert roaming.get("/whoami").json["authenticated"] is True

    # The phone (on web_b) ends every other session...
    phone_auth = AuthActions(phone)
    response = phone_auth.post("/account/sessions/end-others", token_from="/account/sessions")
    assert response.status_code == 303

    # ...and the laptop's very next request on web_a is anonymous.
    assert laptop.get("/whoami").json == {"authenticated": False}
    assert laptop.get("/account").status_code == 303
    assert phone.get("/whoami").json["authenticated"] is True


def test_idle_timeout_ends_the_session(app, client, auth, make_user):
    user = make_user()
    auth.login(user.email)
    token = session_cookie(client, app)
    idle = app.config["SESSION_IDLE_TIMEOUT"]
    set_session_times(app, token, last_seen_at=datetime.now(UTC) - timedelta(seconds=idle + 5))
    assert client.get("/whoami").json["authenticated"] is False
    assert session_row(app, token).revoked_reason == "idle_timeout"


def test_activity_keeps_the_session_alive(app, client, auth, make_user):
    user = make_user()
    auth.login(user.email)
    token = session_cookie(client, app)
    idle = app.config["SESSION_IDLE_TIMEOUT"]
    # Seen recently enough (a minute inside the idle window): still signed in, and the
    # request moves last_seen_at forward.
    before = datetime.now(UTC) - timedelta(seconds=idle - 60)
    set_session_times(app, token, last_seen_at=before)
    assert client.get("/whoami").json["authenticated"] is True
    assert session_row(app, token).last_seen_at > before + timedelta(seconds=30)


def test_absolute_timeout_ends_even_an_active_session(app, client, auth, make_user):
    user = make_user()
    auth.login(user.email)
    token = session_cookie(client, app)
    absolute = app.config["SESSION_ABSOLUTE_TIMEOUT"]
    long_ago = datetime.now(UTC) - timedelta(seconds=absolute + 5)
    set_session_times(app, token, authenticated_at=long_ago, created_at=long_ago)
    assert client.get("/whoami").json["authenticated"] is False
    assert session_row(app, token).revoked_reason == "absolute_timeout"


class TestConfigurableTimeouts:
    @pytest.fixture
    def config(self, database_url):
        from tests.conftest import base_config

        return base_config(database_url, SESSION_IDLE_TIMEOUT="120", SESSION_ABSOLUTE_TIMEOUT="600")

    def test_timeouts_come_from_the_environment(self, app, client, auth, make_user):
        assert app.config["SESSION_IDLE_TIMEOUT"] == 120
        user = make_user()
        auth.login(user.email)
        token = session_cookie(client, app)
        set_session_times(app, token, last_seen_at=datetime.now(UTC) - timedelta(seconds=150))
        assert client.get("/whoami").json["authenticated"] is False


def test_deactivated_user_loses_every_session_at_once(app, make_user):
    user = make_user()
    browsers = [app.test_client() for _ in range(3)]
    for browser in browsers:
        AuthActions(browser).login(user.email)
    with app.app_context():
        ended = users.deactivate_user(users.get_user(user.id))
        db.session.commit()
    assert ended == 3
    for browser in browsers:
        assert browser.get("/whoami").json == {"authenticated": False}
    with app.app_context():
        reasons = db.session.scalars(
            select(Session.revoked_reason).where(Session.user_id == user.id)
        ).all()
    assert set(reasons) == {"deactivated"}


def test_sessions_page_lists_each_session_with_its_details(app, make_user):
    user = make_user()
    laptop, phone = app.test_client(), app.test_client()
    phone.environ_base.update(REMOTE_ADDR="192.0.2.7", HTTP_USER_AGENT="PhoneBrowser/1.0")
    AuthActions(laptop).login(user.email)
    AuthActions(phone).login(user.email)
    page = laptop.get("/account/sessions")
    assert page.status_code == 200
    assert "192.0.2.7" in page.text and "PhoneBrowser/1.0" in page.text
    assert "This session" in page.text
    assert page.text.count(">End session</button>") == 1
    assert "password" in page.text


def test_ending_one_session_from_the_list(app, make_user):
    user = make_user()
    laptop, phone = app.test_client(), app.test_client()
    AuthActions(laptop).login(user.email)
    AuthActions(phone).login(user.email)
    phone_row = session_row(app, session_cookie(phone, app))
    response = AuthActions(laptop).post(
        f"/account/sessions/{phone_row.id}/end", token_from="/account/sessions"
    )
    assert response.status_code == 303
    assert phone.get("/whoami").json["authenticated"] is False
    assert laptop.get("/whoami").json["authenticated"] is True
    events = audit_events(app, "session.revoked")
    assert events[-1]["target_id"] == str(phone_row.id)


def test_nobody_can_end_another_users_session(app, make_user):
    alice, mallory = make_user("alice@example.com"), make_user("mallory@example.com")
    alice_browser, mallory_browser = app.test_client(), app.test_client()
    AuthActions(alice_browser).login(alice.email)
    AuthActions(mallory_browser).login(mallory.email)
    alice_row = session_row(app, session_cookie(alice_browser, app))
    response = AuthActions(mallory_browser).post(
        f"/account/sessions/{alice_row.id}/end", token_from="/account/sessions"
    )
    assert response.status_code == 404
    assert alice_browser.get("/whoami").json["authenticated"] is True
    bad = AuthActions(mallory_browser).post(
        "/account/sessions/not-a-uuid/end", token_from="/account/sessions"
    )
    assert bad.status_code == 404


def test_ending_sessions_needs_a_csrf_token(app, make_user):
    user = make_user()
    laptop, phone = app.test_client(), app.test_client()
    AuthActions(laptop).login(user.email)
    AuthActions(phone).login(user.email)
    assert laptop.post("/account/sessions/end-others").status_code == 400
    assert phone.get("/whoami").json["authenticated"] is True


def test_anonymous_visitors_are_sent_to_login(client):
    response = client.get("/account/sessions")
    assert response.status_code == 303
    assert response.headers["Location"] == "/login?next=%2Faccount%2Fsessions"
