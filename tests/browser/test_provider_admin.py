"""An account admin manages an SSO provider in Chromium: creates it from the Entra preset,
disables it, renames it, tests it against the real IdP (node oidc-provider) and deletes it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page
from playwright.sync_api import expect
from sqlalchemy import select

from app.extensions import db
from app.models import SsoProvider
from tests.browser import federation
from tests.conftest import DEFAULT_PASSWORD
from tests.e2e.oidc_idp import OidcIdp
from tests.live_server import LiveServer

# The fixtures shared with the other browser tests against an IdP (tests/browser/federation.py).
config = federation.config
idp_port = federation.idp_port
live_server = federation.live_server

pytestmark = pytest.mark.browser

SECRET = "entra-client-secret-typed-in-the-browser"
FIRST, RENAMED = "EntraTest", "EntraRenamed"
ALICE = {
    "sub": "alice-sub",
    "email": "alice@acme.example",
    "email_verified": True,
    "name": "Alice Liddell",
    "roles": ["Keyward.Admin"],
}


@pytest.fixture(scope="module")
def idp(live_server: LiveServer, idp_port: int) -> Iterator[OidcIdp]:
    client = {
        "client_id": "entra-app",
        "client_secret": SECRET,
        # Both: the test sign-in right after the rename still sends the old URL.
        "redirect_uris": [
            f"{live_server.url}/signin-{FIRST}",
            f"{live_server.url}/signin-{RENAMED}",
        ],
        "response_types": ["code"],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "client_secret_basic",
    }
    with OidcIdp(clients=[client], accounts={"alice": ALICE}, env={"PORT": str(idp_port)}) as idp:
        yield idp


def _provider(app) -> SsoProvider | None:
    with app.app_context():
        provider = db.session.scalar(select(SsoProvider).where(SsoProvider.account_id.is_not(None)))
        if provider is not None:
            db.session.expunge(provider)
        return provider


def test_admin_creates_disables_renames_tests_and_deletes_a_provider(
    app, page: Page, live_server: LiveServer, idp: OidcIdp, make_account, make_user
) -> None:
    account = make_account("Acme Rockets", "acme-rockets")
    admin = make_user("admin@acme.example", account_id=account.id, role="admin")
    keyward = live_server.url
    page.goto("/login")
    page.get_by_label("Email").fill(admin.email)
    page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{keyward}/")

    # Create from the Entra preset: it fills in what it can and says what to do at the IdP.
    page.goto(f"/admin/accounts/{account.id}/sso-providers")
    page.get_by_role("link", name="Create SSO provider").click()
    page.get_by_role("link", name="Microsoft Entra ID", exact=True).click()
    expect(page.get_by_label("External id claim")).to_have_value("oid")
    expect(page.get_by_label("Authority URL")).to_have_value(
        "https://login.microsoftonline.com/{tenant}/v2.0"
    )
    page.get_by_label("Authentication scheme").fill(FIRST)
    expect(page.get_by_text(f"{keyward}/signin-{FIRST}").first).to_be_visible()
    page.get_by_label("Authority URL").fill(idp.issuer)
    page.get_by_label("Client ID", exact=True).fill("entra-app")
    page.get_by_label("Client secret", exact=True).fill(SECRET)
    page.get_by_label("Claim value to role").fill("Keyward.Admin = admin")
    page.get_by_role("button", name="Create SSO provider").click()
    expect(page.get_by_role("status").or_(page.locator(".flash")).first).to_be_visible()
    created = _provider(app)
    assert created is not None and created.scheme == FIRST and created.enabled
    assert SECRET not in page.content()

    # Disable: the account's sign-in page loses the button, the direct URL refuses.
    row = page.get_by_role("row").filter(has_text="Microsoft Entra ID")
    row.get_by_role("button", name="Disable").click()
    expect(
        page.get_by_role("row")
        .filter(has_text="Microsoft Entra ID")
        .get_by_role("button", name="Enable")
    ).to_be_visible()
    assert _provider(app).enabled is False
    page.goto(f"/login/{account.slug}")
    expect(page.get_by_role("link", name="Sign in with Microsoft Entra ID")).to_have_count(0)
    assert page.goto(f"/sso/{created.id}").status == 403

    # Rename: the callback URLs change at once; the old path is kept as an alias.
    page.goto(f"/admin/accounts/{account.id}/sso-providers/{created.id}/edit")
    expect(page.get_by_text("A client secret is stored")).to_be_visible()
    page.get_by_label("Authentication scheme").fill(RENAMED)
    page.get_by_role("button", name="Save changes").click()
    assert _provider(app).scheme == RENAMED
    page.goto(f"/admin/accounts/{account.id}/sso-providers")
    expect(page.get_by_text(f"{keyward}/signin-{RENAMED}").first).to_be_attached()
    expect(page.get_by_text(FIRST).first).to_be_attached()  # the old scheme, with its end date

    # Test sign-in (a disabled provider can be tested): the real flow, then the verdict.
    row = page.get_by_role("row").filter(has_text="Microsoft Entra ID")
    row.get_by_role("button", name="Test sign-in").click()
    page.wait_for_url(f"{idp.issuer}/interaction/**")
    page.get_by_label("Login", exact=True).fill("alice")
    page.get_by_label("Password", exact=True).fill("any password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Test sign-in: Microsoft Entra ID")
    expect(page.locator("#test-outcome")).to_contain_text("no Keyward user")
    expect(page.get_by_text("Keyward.Admin").first).to_be_visible()  # the claims received
    assert page.goto("/whoami").json()["email"] == admin.email  # still the admin

    # Delete, after the confirmation page.
    page.goto(f"/admin/accounts/{account.id}/sso-providers")
    page.get_by_role("link", name="Delete Microsoft Entra ID").click()
    expect(page.get_by_text("lose their only way to sign in")).to_be_visible()
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("No SSO providers yet")).to_be_visible()
    assert _provider(app) is None
