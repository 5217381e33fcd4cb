"""Row-less anonymous sessions: the sign-in page writes nothing and its CSRF token is derived
from the anonymous cookie, yet stays bound to that browser and expires with it."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import event
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import Session
from tests.conftest import csrf_token_from
from tests.helpers import session_cookie
from tests.helpers import session_row


@pytest.fixture
def statements(app):
    """Every SQL statement the app runs while the fixture is active (lower-cased)."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement.lower())

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def _session_rows(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Session))


def test_the_sign_in_page_writes_no_row_and_sets_an_anonymous_cookie(app, client, statements):
    page = client.get("/login")
    assert page.status_code == 200 and 'name="csrf_token"' in page.text
    token = session_cookie(client, app)
    assert re.fullmatch(r"a\.[0-9a-f]+\.[A-Za-z0-9_-]{43}", token)
    assert _session_rows(app) == 0
    assert not [s for s in statements if s.startswith(("insert", "update", "delete"))]


def test_a_page_without_a_form_sets_no_cookie(app, client):
    response = client.get("/whoami")
    assert "Set-Cookie" not in response.headers
    assert session_cookie(client, app) is None


def test_password_sign_in_from_the_anonymous_cookie_reads_no_session_row(
    app, client, auth, make_user, statements
):
    user = make_user()
    token = auth.token()
    statements.clear()
    response = client.post(
        "/login", data={"email": user.email, "password": user.password, "csrf_token": token}
    )
    assert response.status_code == 303
    session_reads = [s for s in statements if s.startswith("select") and "from sessions" in s]
    assert session_reads == []
    writes = [s.split()[2] for s in statements if s.startswith("insert")]
    assert sorted(writes) == ["audit_events", "sessions"]
    assert client.get("/whoami").json["authenticated"] is True


def test_the_csrf_token_is_bound_to_the_anonymous_cookie(app, client, make_user):
    user = make_user()
    token = csrf_token_from(client.get("/login").text)
    other = app.test_client()
    other.get("/login")  # another browser, another anonymous cookie
    response = other.post(
        "/login", data={"email": user.email, "password": user.password, "csrf_token": token}
    )
    assert response.status_code == 400
    assert other.get("/whoami").json == {"authenticated": False}


def test_an_expired_anonymous_cookie_is_replaced_and_its_token_refused(app, client, make_user):
    user = make_user()
    token = csrf_token_from(client.get("/login").text)
    old_cookie = session_cookie(client, app)
    app.config["ANONYMOUS_SESSION_TIMEOUT"] = 0
    response = client.post(
        "/login", data={"email": user.email, "password": user.password, "csrf_token": token}
    )
    assert response.status_code == 400
    assert client.get("/whoami").json == {"authenticated": False}
    client.get("/login")
    assert session_cookie(client, app) != old_cookie


@pytest.mark.parametrize("cookie", ["a.zz.short", "a." + "x" * 200, "a.ffffffffff." + "y" * 43])
def test_a_malformed_or_future_anonymous_cookie_is_replaced(app, client, cookie):
    client.set_cookie(app.config["SESSION_COOKIE_NAME"], cookie)
    client.get("/login")
    replaced = session_cookie(client, app)
    assert replaced != cookie and replaced.startswith("a.")


def test_anonymous_data_gets_a_row_and_the_page_token_stays_valid(app, client, make_user):
    user = make_user()
    token = csrf_token_from(client.get("/login").text)
    with client.session_transaction() as anonymous_session:
        anonymous_session["next"] = "/account"
    row_cookie = session_cookie(client, app)
    assert not row_cookie.startswith("a.")
    assert session_row(app, row_cookie).data["next"] == "/account"
    response = client.post(
        "/login", data={"email": user.email, "password": user.password, "csrf_token": token}
    )
    assert response.status_code == 303
    assert client.get("/whoami").json["authenticated"] is True
