"""Password sign-in on /login, sign-out, safe next, CSRF and the rate limit."""

from __future__ import annotations

import pytest

from app.web import safe_next
from tests.conftest import DEFAULT_PASSWORD
from tests.conftest import csrf_token_from
from tests.helpers import audit_actions
from tests.helpers import audit_events


def test_login_page_labels_email_and_password(client):
    page = client.get("/login")
    assert page.status_code == 200
    assert '<label for="email">Email</label>' in page.text
    assert '<label for="password">Password</label>' in page.text
    assert 'name="csrf_token"' in page.text


def test_password_sign_in_redirects_home_and_is_audited(app, client, auth, make_user):
    user = make_user("ada@example.com")
    response = auth.login("ADA@Example.com")  # emails compare case-insensitively
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert client.get("/whoami").json == {
        "authenticated": True,
        "id": str(user.id),
        "email": "ada@example.com",
        "account_ids": [],
    }
    events = audit_events(app, "auth.signin.succeeded")
    assert len(events) == 1 and events[0]["actor"] == "ada@example.com"
    assert events[0]["ip"] == "127.0.0.1" and events[0]["request_id"]


@pytest.mark.parametrize(
    "email,password",
    [
        ("ada@example.com", "wrong password entirely"),
        ("nobody@example.com", DEFAULT_PASSWORD),
    ],
)
def test_refused_sign_in_is_401_with_one_message_and_no_session(
    app, client, auth, make_user, email, password
):
    make_user("ada@example.com")
    response = auth.login(email, password)
    assert response.status_code == 401
    assert "Email or password is not correct." in response.text
    assert "Reference:" in response.text  # correlation id on the page
    assert client.get("/whoami").json == {"authenticated": False}
    refused = audit_events(app, "auth.signin.refused")
    assert len(refused) == 1
    assert refused[0]["details"]["reason"] in {"bad_password", "unknown_email"}
    assert password not in str(refused)


def test_user_without_password_cannot_sign_in(client, auth, make_user):
    make_user("sso-only@example.com", password=None)
    assert auth.login("sso-only@example.com", "").status_code == 400
    assert auth.login("sso-only@example.com", DEFAULT_PASSWORD).status_code == 401
    assert client.get("/whoami").json["authenticated"] is False


def test_deactivated_user_is_refused_even_with_the_right_password(app, client, auth, make_user):
    from app.extensions import db
    from app.services import users

    user = make_user("gone@example.com")
    with app.app_context():
        users.deactivate_user(users.get_user(user.id))
        db.session.commit()
    response = auth.login("gone@example.com")
    assert response.status_code == 403
    assert client.get("/whoami").json["authenticated"] is False


def test_malformed_form_is_400_and_changes_nothing(app, client, auth):
    token = auth.token()
    response = client.post("/login", data={"email": "", "password": "", "csrf_token": token})
    assert response.status_code == 400
    assert "This field is required." in response.text
    assert "auth.signin.succeeded" not in audit_actions(app)


def test_sign_in_without_csrf_token_is_refused(client, make_user):
    user = make_user()
    client.get("/login")
    response = client.post("/login", data={"email": user.email, "password": user.password})
    assert response.status_code == 400
    assert "The form has expired" in response.text
    assert client.get("/whoami").json["authenticated"] is False


def test_csrf_token_from_another_session_is_refused(app, client, make_user):
    user = make_user()
    other = app.test_client()
    foreign_token = csrf_token_from(other.get("/login").text)
    client.get("/login")
    response = client.post(
        "/login", data={"email": user.email, "password": user.password, "csrf_token": foreign_token}
    )
    assert response.status_code == 400
    assert client.get("/whoami").json["authenticated"] is False


def test_next_is_followed_when_local(client, auth, make_user):
    user = make_user()
    response = auth.login(user.email, next="/account/sessions?x=1")
    assert response.status_code == 303
    assert response.headers["Location"] == "/account/sessions?x=1"


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "javascript:alert(1)",
        "/ok\r\nSet-Cookie: x=y",
        "relative/path",
    ],
)
def test_next_to_anywhere_else_goes_home(client, auth, make_user, target):
    user = make_user()
    response = auth.login(user.email, next=target)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"


def test_login_page_drops_unsafe_next_from_the_form(client):
    page = client.get("/login?next=//evil.example/")
    assert "evil.example" not in page.text
    page = client.get("/login?next=/account")
    assert 'value="/account"' in page.text


def test_safe_next_unit():
    assert safe_next("/a/b?c=d#e") == "/a/b?c=d#e"
    assert safe_next(None) is None
    assert safe_next("") is None
    assert safe_next("/" + "a" * 3000) is None
    assert safe_next("http:/evil") is None


def test_signed_in_user_visiting_login_goes_to_next(client, auth, make_user):
    user = make_user()
    auth.login(user.email)
    response = client.get("/login?next=/account")
    assert response.status_code == 303 and response.headers["Location"] == "/account"


def test_logout_is_a_post_and_ends_the_session(app, client, auth, make_user):
    user = make_user()
    auth.login(user.email)
    # A GET never signs anyone out.
    assert client.get("/logout").status_code == 405
    assert client.get("/whoami").json["authenticated"] is True
    response = auth.logout()
    assert response.status_code == 303 and response.headers["Location"] == "/login"
    assert client.get("/whoami").json["authenticated"] is False
    assert "auth.signout" in audit_actions(app)
    assert "You have signed out." in client.get("/login").text


def test_logout_without_csrf_token_keeps_the_session(client, auth, make_user):
    user = make_user()
    auth.login(user.email)
    assert client.post("/logout").status_code == 400
    assert client.get("/whoami").json["authenticated"] is True


def test_account_sign_in_page_by_slug_and_by_id(client, make_account):
    account = make_account("Acme Corp")
    page = client.get(f"/login/{account.slug}")
    assert page.status_code == 200 and "Sign in to Acme Corp" in page.text
    assert "Sign in to Acme Corp" in client.get(f"/login?account={account.id}").text
    assert client.get("/login/no-such-account").status_code == 404


class TestRateLimit:
    @pytest.fixture
    def config(self, database_url):
        from tests.conftest import base_config

        return base_config(
            database_url, LOGIN_RATE_LIMIT="3/minute", LOGIN_EMAIL_RATE_LIMIT="5/hour"
        )

    def test_fourth_attempt_from_one_ip_gets_429_with_retry_after(self, client, auth, make_user):
        user = make_user()
        for _ in range(3):
            assert auth.login(user.email, "wrong password here").status_code == 401
        response = auth.login(user.email)  # even the right password is held back now
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) > 0
        assert "Too many attempts" in response.text
        assert client.get("/whoami").json["authenticated"] is False

    def test_one_address_is_limited_across_client_ips(self, app, make_user):
        user = make_user()
        statuses = []
        for n in range(7):
            client = app.test_client()
            client.environ_base["REMOTE_ADDR"] = f"10.0.0.{n + 1}"
            token = csrf_token_from(client.get("/login").text)
            statuses.append(
                client.post(
                    "/login",
                    data={"email": user.email, "password": "wrong password x", "csrf_token": token},
                ).status_code
            )
        assert statuses[:5] == [401] * 5
        assert statuses[5:] == [429, 429]

    def test_successful_sign_ins_do_not_use_up_the_address_limit(self, app, make_user):
        user = make_user()
        for n in range(6):
            client = app.test_client()
            client.environ_base["REMOTE_ADDR"] = f"10.0.1.{n + 1}"
            token = csrf_token_from(client.get("/login").text)
            response = client.post(
                "/login", data={"email": user.email, "password": user.password, "csrf_token": token}
            )
            assert response.status_code == 303
