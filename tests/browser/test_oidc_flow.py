"""Federated sign-in and RP-initiated sign-out in Chromium, against gunicorn and a real IdP.

Keyward (gunicorn) and the identity provider (node oidc-provider, tests/e2e/idp) both listen
on 127.0.0.1, but the browser reaches Keyward as ``localhost``: a different *site* from the
IdP's ``127.0.0.1`` (cookies ignore ports, so two loopback ports of one host would be the
same site and the SameSite=Lax session cookie would ride along on the IdP's form_post). That
way the form_post callback arrives in Chromium exactly as it does in production, cross-site
and without the cookie, and Keyward's same-origin relay page is what finishes the sign-in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page
from playwright.sync_api import Response
from playwright.sync_api import expect

from app.extensions import db
from app.services import accounts
from app.services import providers
from app.services.providers import ProviderFields
from tests.browser import federation
from tests.browser.federation import whoami
from tests.e2e.oidc_idp import OidcIdp
from tests.live_server import LiveServer

# The fixtures shared with the other browser tests against an IdP (tests/browser/federation.py).
account = federation.account
config = federation.config
idp_port = federation.idp_port
live_server = federation.live_server

pytestmark = pytest.mark.browser

#: The name the browser uses for Keyward: another site than the IdP's 127.0.0.1.
SESSION_COOKIE = "keyward_session"
SECRET = "client-secret-for-the-browser-tests"
LOGIN = "alice"
ALICE = {
    "sub": "alice-sub",
    "email": "alice@acme.example",
    "email_verified": True,
    "name": "Alice Liddell",
}


@dataclass(frozen=True)
class Flow:
    scheme: str
    display_name: str
    response_type: str
    grant_types: tuple[str, ...]

    @property
    def form_post(self) -> bool:
        """Keyward asks for response_mode=form_post whenever an id_token comes at the front."""
        return "id_token" in self.response_type.split()


FLOWS = [
    Flow("AcmeCode", "Acme (code)", "code", ("authorization_code",)),
    Flow("AcmeImplicit", "Acme (form post)", "id_token", ("implicit",)),
    Flow("AcmeHybrid", "Acme (hybrid)", "code id_token", ("authorization_code", "implicit")),
]


def client_metadata(flow: Flow, keyward: str) -> dict:
    return {
        "client_id": flow.scheme.lower(),
        "client_secret": SECRET,
        "redirect_uris": [f"{keyward}/signin-{flow.scheme}"],
        "post_logout_redirect_uris": [f"{keyward}/signout-callback-{flow.scheme}"],
        "response_types": [flow.response_type],
        "grant_types": list(flow.grant_types),
        "token_endpoint_auth_method": "client_secret_basic",
        "frontchannel_logout_uri": f"{keyward}/signout-{flow.scheme}",
        "frontchannel_logout_session_required": True,
    }


# --- servers -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def idp(live_server: LiveServer, idp_port: int) -> Iterator[OidcIdp]:
    clients = [client_metadata(flow, live_server.url) for flow in FLOWS]
    with OidcIdp(clients=clients, accounts={LOGIN: ALICE}, env={"PORT": str(idp_port)}) as server:
        assert server.port == idp_port, server.issuer
        yield server


@pytest.fixture
def provider_ids(app, idp: OidcIdp, account) -> dict[str, str]:
    """The three providers of the account (JIT on), by scheme."""
    made = {}
    with app.app_context():
        owner = accounts.get_account(account.id)
        for flow in FLOWS:
            fields = ProviderFields(
                display_name=flow.display_name,
                scheme=flow.scheme,
                authority=idp.issuer,
                client_id=flow.scheme.lower(),
                client_secret=SECRET,
                response_type=flow.response_type,
                jit_provisioning=True,
            )
            made[flow.scheme] = str(providers.create_provider(fields, account=owner).id)
        db.session.commit()
    return made


# --- helpers -------------------------------------------------------------------------------
def sign_in_at_idp(page: Page, idp: OidcIdp) -> None:
    page.wait_for_url(f"{idp.issuer}/interaction/**")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Login", exact=True).fill(LOGIN)
    page.get_by_label("Password", exact=True).fill("any password")
    page.get_by_role("button", name="Sign in", exact=True).click()


# --- tests ---------------------------------------------------------------------------------
def test_login_page_shows_the_account_providers(
    page: Page, live_server: LiveServer, account, provider_ids, artifacts: Path
) -> None:
    page.goto(f"/login?account={account.id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Sign in to {account.name}")
    buttons = page.locator(".provider-buttons").get_by_role("link")
    expect(buttons).to_have_text([f"Sign in with {flow.display_name}" for flow in FLOWS])
    for flow in FLOWS:
        link = page.get_by_role("link", name=f"Sign in with {flow.display_name}", exact=True)
        href = link.get_attribute("href") or ""
        assert href.startswith(f"/sso/{provider_ids[flow.scheme]}"), href
    page.screenshot(path=artifacts / "login-providers.png", full_page=True)


@pytest.mark.parametrize("flow", FLOWS, ids=[flow.response_type for flow in FLOWS])
def test_provider_sign_in_then_rp_initiated_sign_out(
    page: Page,
    live_server: LiveServer,
    idp: OidcIdp,
    account,
    provider_ids,
    flow: Flow,
) -> None:
    keyward = live_server.url
    callback = f"{keyward}/signin-{flow.scheme}"
    callbacks: list[Response] = []
    page.on("response", lambda r: callbacks.append(r) if r.url.split("?")[0] == callback else None)

    page.goto(f"/login?account={account.id}")
    page.get_by_role("link", name=f"Sign in with {flow.display_name}", exact=True).click()
    sign_in_at_idp(page, idp)

    expect(page).to_have_url(f"{keyward}/")
    expect(page.get_by_test_id("user-email")).to_have_text(ALICE["email"])

    seen = [(r.request.method, r.status) for r in callbacks]
    if flow.form_post:
        # The IdP's cross-site POST came without the Lax cookie: Keyward answered it with
        # the relay page, whose same-origin re-post (with the cookie) finished the sign-in.
        assert seen == [("POST", 200), ("POST", 303)], seen
        cross_site, relayed = callbacks
        assert SESSION_COOKIE not in (cross_site.request.header_value("cookie") or "")
        assert SESSION_COOKIE in (relayed.request.header_value("cookie") or "")
        assert "keyward_relay=1" in (relayed.request.post_data or "")
    else:
        assert seen == [("GET", 303)], seen

    me = whoami(page)
    assert me["authenticated"] is True, me
    assert me["email"] == ALICE["email"]
    assert me["provider_id"] == provider_ids[flow.scheme]
    assert me["subject"] == ALICE["sub"]
    assert me["account_ids"] == [account.id]

    # Sign out: Keyward ends its session, the IdP's end-session page confirms by itself
    # and sends the browser back to the post_logout_redirect_uri.
    page.goto("/")
    header = page.get_by_role("navigation", name="Main")
    with page.expect_request(lambda r: r.url.startswith(idp.end_session_endpoint)):
        header.get_by_role("button", name="Sign out", exact=True).click()
    expect(page).to_have_url(f"{keyward}/login", timeout=15_000)
    expect(page.get_by_role("status")).to_contain_text("You have signed out.")
    assert whoami(page) == {"authenticated": False}
