"""SCIM tokens: the CLI, the admin page, bearer authentication, revocation, rate limit."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import ScimToken
from app.models import SsoProvider
from app.models.base import utcnow
from tests.cli.helpers import assert_error
from tests.cli.helpers import run_json
from tests.conftest import AuthActions
from tests.conftest import base_config
from tests.conftest import csrf_token_from
from tests.helpers import audit_actions
from tests.scim.conftest import ScimClient


def test_cli_create_list_revoke(app, runner, account, client):
    created = run_json(runner, "scim", "tokens", "create", "--account", str(account.id))
    assert set(created) >= {"id", "token", "account_id", "provider_id"}
    token = created["token"]
    with app.app_context():
        row = db.session.get(ScimToken, uuid.UUID(created["id"]))
        # Only the SHA-256 is stored.
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in str(row.__dict__)

    listed = run_json(runner, "scim", "tokens", "list", "--account", str(account.id))
    assert [t["id"] for t in listed] == [created["id"]]
    assert "token" not in listed[0]
    scim = ScimClient(client, token)
    assert scim.get("/Users").status_code == 200

    revoked = run_json(runner, "scim", "tokens", "revoke", created["id"])
    assert revoked["revoked_at"]
    # The very next request is refused.
    response = scim.get("/Users")
    assert response.status_code == 401
    assert response.json["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "scim.token.revoked" in audit_actions(app)


def test_cli_errors(runner, account):
    assert_error(runner.invoke(args=["scim", "tokens", "create", "--account", "999"]), "No account")
    assert_error(
        runner.invoke(
            args=["scim", "tokens", "create", "--account", str(account.id), "--provider", "junk"]
        ),
        "No SSO provider",
    )
    assert_error(runner.invoke(args=["scim", "tokens", "revoke", "junk"]), "No SCIM token")


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer wrong", "Basic dXNlcjpwYXNz", "bearer " + "x" * 500],
)
def test_requests_without_a_live_token_are_401(client, header):
    headers = {"Authorization": header} if header is not None else {}
    response = client.get("/scim/v2/Users", headers=headers)

    assert response.status_code == 401
    assert response.mimetype == "application/scim+json"
    assert response.json["status"] == "401"


def test_last_used_is_written_at_most_once_a_minute(app, scim, make_token, account):
    token = make_token(account.id, "second")
    client = ScimClient(scim.client, token.token)
    client.get("/Users")
    with app.app_context():
        first = db.session.get(ScimToken, token.id).last_used_at
    assert first is not None
    client.get("/Users")
    with app.app_context():
        assert db.session.get(ScimToken, token.id).last_used_at == first
        db.session.get(ScimToken, token.id).last_used_at = utcnow() - timedelta(minutes=2)
        db.session.commit()
    client.get("/Users")
    with app.app_context():
        assert db.session.get(ScimToken, token.id).last_used_at > first


def admin_browser(app, make_user, account):
    admin = make_user("admin@acme.example", account_id=account.id, role="admin")
    client = app.test_client()
    assert AuthActions(client).login(admin.email).status_code == 303
    return client


def test_admin_page_creates_shows_once_and_revokes(app, make_user, account, client):
    browser = admin_browser(app, make_user, account)
    page = browser.get(f"/admin/accounts/{account.id}/scim-tokens")
    assert page.status_code == 200
    assert "http://localhost/scim/v2" in page.text

    created = browser.post(
        f"/admin/accounts/{account.id}/scim-tokens",
        data={"name": "Entra ID", "provider": "", "csrf_token": csrf_token_from(page.text)},
    )
    assert created.status_code == 200
    token = re.search(r'<code id="scim-token">([^<]+)</code>', created.text).group(1)
    assert created.headers["Cache-Control"] == "no-store"
    assert ScimClient(client, token).get("/Users").status_code == 200
    listing = browser.get(f"/admin/accounts/{account.id}/scim-tokens")
    assert "Entra ID" in listing.text and token not in listing.text
    with app.app_context():
        row = db.session.scalar(select(ScimToken))
    revoke = browser.post(
        f"/admin/accounts/{account.id}/scim-tokens/{row.id}/revoke",
        data={"csrf_token": csrf_token_from(listing.text)},
    )
    assert revoke.status_code == 303
    assert ScimClient(client, token).get("/Users").status_code == 401


def test_admin_page_is_for_admins_of_that_account(
    app, make_user, make_account, account, make_token
):
    other = make_account("Globex", "globex")
    theirs = make_token(other.id)
    member = make_user("member@acme.example", account_id=account.id, role="member")
    client = app.test_client()
    AuthActions(client).login(member.email)
    assert client.get(f"/admin/accounts/{account.id}/scim-tokens").status_code == 403
    browser = admin_browser(app, make_user, account)
    page = browser.get(f"/admin/accounts/{account.id}/scim-tokens")
    assert browser.get(f"/admin/accounts/{other.id}/scim-tokens").status_code == 403
    # Another account's token id through this account's URL: refused, and still live.
    response = browser.post(
        f"/admin/accounts/{account.id}/scim-tokens/{theirs.id}/revoke",
        data={"csrf_token": csrf_token_from(page.text)},
    )
    assert response.status_code == 403
    with app.app_context():
        assert db.session.get(ScimToken, theirs.id).revoked_at is None
    assert anonymous_redirect(app, account)


def anonymous_redirect(app, account) -> bool:
    response = app.test_client().get(f"/admin/accounts/{account.id}/scim-tokens")
    return response.status_code in (302, 303) and "/login" in response.headers["Location"]


def test_linked_provider_must_be_the_accounts(app, account, make_account, runner):
    other = make_account("Globex", "globex")
    with app.app_context():
        mine = SsoProvider(
            account_id=account.id, display_name="Acme", scheme="Acme", scheme_key="acme"
        )
        theirs = SsoProvider(
            account_id=other.id, display_name="Globex", scheme="Globex", scheme_key="globex"
        )
        db.session.add_all([mine, theirs])
        db.session.commit()
        mine_id, theirs_id = str(mine.id), str(theirs.id)

    linked = run_json(
        runner, "scim", "tokens", "create", "--account", str(account.id), "--provider", mine_id
    )
    assert linked["provider_id"] == mine_id
    assert_error(
        runner.invoke(
            args=["scim", "tokens", "create", "--account", str(account.id), "--provider", theirs_id]
        ),
        "No SSO provider",
    )


@pytest.fixture
def config(database_url):
    return base_config(database_url, SCIM_RATE_LIMIT="5/minute")


def test_rate_limit_answers_429_with_retry_after_per_token(scim, make_token, account):
    for _ in range(5):
        assert scim.get("/ServiceProviderConfig").status_code == 200

    refused = scim.get("/Users")
    assert refused.status_code == 429
    assert refused.json["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert refused.json["status"] == "429"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Counted per token: another token of the same account is not affected.
    other = ScimClient(scim.client, make_token(account.id, "other").token)
    assert other.get("/Users").status_code == 200
