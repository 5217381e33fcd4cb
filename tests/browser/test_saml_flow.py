"""SAML sign-in through the HTTP-POST binding in Chromium, against gunicorn and pysaml2.

As in test_oidc_flow.py, Keyward (gunicorn) and the IdP (tests/e2e/saml_idp_server.py) both
listen on 127.0.0.1, but the browser reaches Keyward as ``localhost``, another *site* than
the IdP's ``127.0.0.1``. The IdP's auto-submitted POST to the ACS is then cross-site, as in
production, and Chromium leaves the SameSite=Lax session cookie out of it: Keyward's relay
page re-posts the answer from its own origin, with the cookie, and only that request can
match InResponseTo to the AuthnRequest this browser made.
"""

from __future__ import annotations

from collections.abc import Iterator
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
from tests.e2e.saml_idp import SamlIdp
from tests.live_server import LiveServer

# The fixtures shared with the other browser tests against an IdP (tests/browser/federation.py).
account = federation.account
config = federation.config
idp_port = federation.idp_port
live_server = federation.live_server

pytestmark = pytest.mark.browser

SESSION_COOKIE = "keyward_session"
SCHEME = "AcmeSaml"
DISPLAY_NAME = "Acme (SAML)"
ALICE = {
    "name_id": "alice-0001",
    "password": "wonderland",
    "attributes": {"email": ["alice@acme.example"], "firstName": ["Alice"]},
}


@pytest.fixture(scope="module")
def idp(idp_port: int) -> Iterator[SamlIdp]:
    # No auto-login: the browser fills the IdP's form (Login, Password).
    server = SamlIdp(users={"alice": ALICE})
    server.config["port"] = idp_port
    with server:
        assert server.port == idp_port, server.base_url
        yield server


@pytest.fixture
def provider_id(app, idp: SamlIdp, account) -> str:
    """A SAML provider from the IdP's metadata URL, registered at the IdP by Keyward's SP
    metadata (the same document the live server serves: same PUBLIC_URL)."""
    with app.app_context():
        provider = providers.create_provider(
            ProviderFields(
                protocol="saml",
                display_name=DISPLAY_NAME,
                scheme=SCHEME,
                saml_metadata_url=idp.metadata_url,
                jit_provisioning=True,
                trust_email_verified=True,
            ),
            account=accounts.get_account(account.id),
        )
        db.session.commit()
        guid = str(provider.id)
    idp.add_sp(metadata_xml=app.test_client().get(f"/saml/{SCHEME}/metadata").text)
    return guid


def test_saml_sign_in_through_the_post_binding_then_single_logout(
    page: Page, live_server: LiveServer, idp: SamlIdp, account, provider_id, artifacts: Path
) -> None:
    keyward = live_server.url
    acs = f"{keyward}/signin-{SCHEME}"
    posts: list[Response] = []
    page.on("response", lambda r: posts.append(r) if r.url.split("?")[0] == acs else None)

    page.goto(f"/login?account={account.id}")
    page.get_by_role("link", name=f"Sign in with {DISPLAY_NAME}", exact=True).click()
    page.wait_for_url(f"{idp.sso_url}?**")
    page.get_by_label("Login", exact=True).fill("alice")
    page.get_by_label("Password", exact=True).fill(ALICE["password"])
    page.get_by_role("button", name="Sign in", exact=True).click()

    # The IdP's page auto-submits the SAMLResponse to the ACS; the relay finishes it.
    expect(page).to_have_url(f"{keyward}/")
    expect(page.get_by_test_id("user-email")).to_have_text("alice@acme.example")
    seen = [(r.request.method, r.status) for r in posts]
    assert seen == [("POST", 200), ("POST", 303)], seen
    cross_site, relayed = posts
    assert "SAMLResponse=" in (cross_site.request.post_data or "")
    assert SESSION_COOKIE not in (cross_site.request.header_value("cookie") or "")
    assert SESSION_COOKIE in (relayed.request.header_value("cookie") or "")
    assert "keyward_relay=1" in (relayed.request.post_data or "")
    page.screenshot(path=artifacts / "saml-signed-in.png", full_page=True)

    me = whoami(page)
    assert me["authenticated"] is True, me
    assert me["provider_id"] == provider_id
    assert me["subject"] == ALICE["name_id"]
    assert me["account_ids"] == [account.id]

    # Sign out: Keyward ends its session and sends a LogoutRequest; the IdP answers with a
    # LogoutResponse, and the browser lands on the sign-in page.
    page.goto("/")
    header = page.get_by_role("navigation", name="Main")
    with page.expect_request(lambda r: r.url.startswith(f"{idp.slo_url}?SAMLRequest=")):
        header.get_by_role("button", name="Sign out", exact=True).click()
    expect(page).to_have_url(f"{keyward}/login", timeout=15_000)
    expect(page.get_by_role("status")).to_contain_text("You have signed out.")
    assert whoami(page) == {"authenticated": False}
    asked = [e for e in idp.events() if e["type"] == "logout_request"]
    assert asked and asked[-1]["name_id"] == ALICE["name_id"]


def test_answer_posted_to_another_browser_is_refused(
    page: Page, live_server: LiveServer, idp: SamlIdp, account, provider_id, browser
) -> None:
    """The IdP's answer for one browser, replayed in another (its own pending request,
    its own cookie): refused with the clear page, no session."""
    keyward = live_server.url
    page.goto(f"/sso/{provider_id}")
    page.wait_for_url(f"{idp.sso_url}?**")
    page.get_by_label("Login", exact=True).fill("alice")
    page.get_by_label("Password", exact=True).fill(ALICE["password"])
    # Keep the IdP's answer instead of letting it reach Keyward in this browser.
    page.route(f"{keyward}/signin-{SCHEME}", lambda route: route.abort())
    with page.expect_request(f"{keyward}/signin-{SCHEME}") as posted:
        page.get_by_role("button", name="Sign in", exact=True).click()
    body = posted.value.post_data or ""
    assert "SAMLResponse=" in body

    other = browser.new_context(base_url=keyward)
    try:
        thief = other.new_page()
        thief.goto(f"/sso/{provider_id}")  # a pending request of its own
        response = thief.request.post(
            f"/signin-{SCHEME}",
            data=body + "&keyward_relay=1",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status == 400
        assert "does not belong to a sign-in started in this browser" in response.text()
        me = thief.request.get("/whoami").json()
        assert me == {"authenticated": False}
    finally:
        other.close()
