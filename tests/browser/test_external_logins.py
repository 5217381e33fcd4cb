"""Profile → External logins in Chromium, against gunicorn and a real IdP (node
oidc-provider): a password user links a provider, signs out, signs in from the account's
sign-in page through that provider as the same user, confirms their password after the
re-authentication window to link a second provider, and unlinks one.

Keyward is reached as ``localhost`` and the IdP as ``127.0.0.1`` (see test_oidc_flow.py), so
the callbacks arrive as they do in production: cross-site, the session cookie sent only
because they are top-level GET navigations (SameSite=Lax).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext
from playwright.sync_api import Page
from playwright.sync_api import expect

from app.extensions import db
from app.models.base import utcnow
from app.services import accounts
from app.services import providers
from app.services.providers import ProviderFields
from tests.browser import federation
from tests.browser.federation import whoami
from tests.browser.test_oidc_flow import SESSION_COOKIE
from tests.conftest import DEFAULT_PASSWORD
from tests.e2e.oidc_idp import OidcIdp
from tests.helpers import set_session_times
from tests.live_server import LiveServer

# The fixtures shared with the other browser tests against an IdP (tests/browser/federation.py).
account = federation.account
config = federation.config
idp_port = federation.idp_port
live_server = federation.live_server

pytestmark = pytest.mark.browser

SECRET = "client-secret-for-the-link-browser-test"
SCHEMES = ("AcmeLink", "AcmeOther")
ALICE = {"sub": "alice-sub", "email": "alice@idp.example", "email_verified": True}


@pytest.fixture(scope="module")
def idp(live_server: LiveServer, idp_port: int) -> Iterator[OidcIdp]:
    clients = [
        {
            "client_id": scheme.lower(),
            "client_secret": SECRET,
            "redirect_uris": [f"{live_server.url}/signin-{scheme}"],
            "response_types": ["code"],
            "grant_types": ["authorization_code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }
        for scheme in SCHEMES
    ]
    with OidcIdp(clients=clients, accounts={"alice": ALICE}, env={"PORT": str(idp_port)}) as idp:
        yield idp


@pytest.fixture
def provider_ids(app, idp: OidcIdp, account) -> dict[str, str]:
    made = {}
    with app.app_context():
        owner = accounts.get_account(account.id)
        for scheme in SCHEMES:
            fields = ProviderFields(
                display_name=f"{scheme} SSO",
                scheme=scheme,
                authority=idp.issuer,
                client_id=scheme.lower(),
                client_secret=SECRET,
            )
            made[scheme] = str(providers.create_provider(fields, account=owner).id)
        db.session.commit()
    return made


def age_session(app, context: BrowserContext, minutes: int) -> None:
    [cookie] = [c for c in context.cookies() if c["name"] == SESSION_COOKIE]
    set_session_times(app, cookie["value"], authenticated_at=utcnow() - timedelta(minutes=minutes))


def test_link_sign_in_through_it_reauthenticate_and_unlink(
    app,
    page: Page,
    context: BrowserContext,
    live_server: LiveServer,
    idp: OidcIdp,
    account,
    provider_ids,
    make_user,
    artifacts: Path,
) -> None:
    keyward = live_server.url
    user = make_user("alice@keyward.example", account_id=account.id)
    page.goto("/login")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{keyward}/")

    # Profile → External logins.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Profile").click()
    page.get_by_role("link", name="External logins").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("External logins")
    expect(page.get_by_text("No external logins are linked")).to_be_visible()
    page.get_by_role("button", name="Link AcmeLink SSO", exact=True).click()

    # The provider's own sign-in, then back on the same page with the new row.
    page.wait_for_url(f"{idp.issuer}/interaction/**")
    page.get_by_label("Login", exact=True).fill("alice")
    page.get_by_label("Password", exact=True).fill("any password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page).to_have_url(f"{keyward}/account/external-logins")
    expect(page.get_by_role("status")).to_contain_text("Your AcmeLink SSO login is linked.")
    row = page.get_by_role("row").filter(has_text="AcmeLink SSO")
    expect(row).to_contain_text("alice@idp.example")
    expect(row).to_contain_text("Not yet")
    expect(row.get_by_role("button", name="Unlink AcmeLink SSO", exact=True)).to_be_visible()
    page.screenshot(path=artifacts / "external-logins.png", full_page=True)
    assert whoami(page)["id"] == str(user.id)

    # Sign out, then sign in from the account's page through the provider: the same user.
    page.goto("/")
    page.get_by_role("navigation", name="Main").get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{keyward}/login")
    page.goto(f"/login/{account.slug}")
    page.get_by_role("link", name="Sign in with AcmeLink SSO", exact=True).click()
    # The IdP still has alice's session (single sign-on): straight back, no form.
    expect(page).to_have_url(f"{keyward}/")
    me = whoami(page)
    assert me["id"] == str(user.id) and me["email"] == user.email
    assert me["provider_id"] == provider_ids["AcmeLink"] and me["subject"] == ALICE["sub"]

    # Past the re-authentication window, linking asks "Confirm it is you" first.
    age_session(app, context, 11)
    page.goto("/account/external-logins")
    page.get_by_role("button", name="Link AcmeOther SSO", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Confirm it is you")
    expect(page.get_by_role("button", name="Confirm with AcmeLink SSO")).to_be_visible()
    page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    page.get_by_role("button", name="Confirm", exact=True).click()
    expect(page).to_have_url(f"{keyward}/account/external-logins")
    expect(page.get_by_role("status")).to_contain_text("Your AcmeOther SSO login is linked.")
    expect(page.get_by_role("button", name="Link AcmeOther SSO", exact=True)).to_have_count(0)

    # Unlink one (a password is set, so it is not the last way in).
    page.get_by_role("button", name="Unlink AcmeOther SSO", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Your AcmeOther SSO login is unlinked.")
    expect(page.get_by_role("button", name="Link AcmeOther SSO", exact=True)).to_be_visible()
    assert whoami(page)["id"] == str(user.id)
