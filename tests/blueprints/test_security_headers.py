"""DESIGN "Security invariants": headers on every page and the session cookie's flags."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("path", ["/login", "/healthz", "/no-such-page", "/static/keyward.css"])
def test_every_response_carries_the_security_headers(client, path):
    with client.get(path) as response:
        headers = response.headers
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Request-ID"]


def test_pages_are_not_cached_but_static_files_may_be(client):
    assert client.get("/login").headers["Cache-Control"] == "no-store"
    with client.get("/static/keyward.css") as response:
        assert response.headers.get("Cache-Control") != "no-store"


def test_session_cookie_is_httponly_and_samesite_lax(client):
    set_cookie = client.get("/login").headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie
    assert "SameSite=Lax" in set_cookie
    assert "Secure" not in set_cookie  # plain http PUBLIC_URL in tests
    assert "Expires" not in set_cookie and "Max-Age" not in set_cookie


def test_cookie_is_secure_and_hsts_sent_under_https(make_app):
    app = make_app(PUBLIC_URL="https://sso.example.com")
    response = app.test_client().get("/login")
    assert "Secure" in response.headers["Set-Cookie"]
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_incoming_request_id_is_kept_only_when_it_looks_like_one(client):
    assert (
        client.get("/healthz", headers={"X-Request-ID": "lb-1234abcd"}).headers["X-Request-ID"]
        == "lb-1234abcd"
    )
    forged = client.get("/healthz", headers={"X-Request-ID": "x injected; log=line"})
    assert "injected" not in forged.headers["X-Request-ID"]
    assert len(forged.headers["X-Request-ID"]) == 32


def test_error_pages_show_a_reason_and_reference_never_a_traceback(app, client):
    @app.route("/explode")
    def explode():
        raise RuntimeError("secret internals: password=hunter2")

    response = client.get("/explode")
    assert response.status_code == 500
    assert "Something went wrong on our side." in response.text
    assert response.headers["X-Request-ID"] in response.text
    assert "Traceback" not in response.text and "hunter2" not in response.text

    missing = client.get("/definitely/not/here")
    assert missing.status_code == 404
    assert "There is nothing at this address." in missing.text
