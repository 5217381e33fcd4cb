"""Password sign-in and sign-out in a real browser (Chromium) against gunicorn."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext
from playwright.sync_api import Page
from playwright.sync_api import expect

from tests.conftest import DEFAULT_PASSWORD
from tests.live_server import LiveServer

pytestmark = pytest.mark.browser

SESSION_COOKIE = "keyward_session"

# The element that has the focus, described for assertion messages.
DESCRIBE_FOCUS = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return "body";
  const label = el.id || el.getAttribute("name") || (el.textContent || "").trim();
  return `${el.tagName.toLowerCase()}:${label}`;
}"""


def whoami(context: BrowserContext, live_server: LiveServer) -> dict:
    """GET /whoami with the browser context's cookies."""
    response = context.request.get(f"{live_server.url}/whoami")
    try:
        assert response.status == 200, response.status
        return response.json()
    finally:
        response.dispose()


def submit_login(page: Page, email: str, password: str) -> None:
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def test_sign_in_shows_home_then_sign_out(
    page: Page,
    context: BrowserContext,
    live_server: LiveServer,
    make_account,
    make_user,
    artifacts: Path,
) -> None:
    account = make_account("Acme Rockets", "acme-rockets")
    user = make_user("ada@example.com", account_id=account.id)

    page.goto("/login")
    expect(page).to_have_title("Sign in · Keyward")
    submit_login(page, user.email, DEFAULT_PASSWORD)

    expect(page).to_have_url(f"{live_server.url}/")
    expect(page.get_by_test_id("user-email")).to_have_text(user.email)
    expect(page.get_by_role("cell", name=account.name, exact=True)).to_be_visible()
    page.screenshot(path=artifacts / "home.png", full_page=True)

    signed_in = whoami(context, live_server)
    assert signed_in["authenticated"] is True
    assert signed_in["email"] == user.email
    assert signed_in["account_ids"] == [account.id]

    cookies = {cookie["name"]: cookie for cookie in context.cookies(live_server.url)}
    assert SESSION_COOKIE in cookies, sorted(cookies)
    session_cookie = cookies[SESSION_COOKIE]
    assert session_cookie["httpOnly"] is True
    assert session_cookie["sameSite"] == "Lax"

    header = page.get_by_role("navigation", name="Main")
    header.get_by_role("button", name="Sign out", exact=True).click()

    expect(page).to_have_url(f"{live_server.url}/login")
    expect(page.get_by_role("status")).to_contain_text("You have signed out.")
    assert whoami(context, live_server) == {"authenticated": False}


def test_wrong_password_is_refused(
    page: Page, context: BrowserContext, live_server: LiveServer, make_user
) -> None:
    user = make_user("grace@example.com")

    page.goto("/login")
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url == f"{live_server.url}/login"
    ) as posted:
        submit_login(page, user.email, "not the password at all")

    assert posted.value.status == 401
    expect(page.get_by_role("alert")).to_contain_text("Email or password is not correct.")
    # The password is never sent back to the browser.
    expect(page.get_by_label("Password", exact=True)).to_have_value("")
    assert whoami(context, live_server) == {"authenticated": False}


def test_keyboard_reaches_email_with_visible_focus(page: Page, live_server: LiveServer) -> None:
    page.goto("/login")
    # Start where a keyboard user arriving on the page starts: at the top of the document.
    # The Email field's autofocus holds the focus (and Chromium's sequential navigation
    # starting point) after loading, so move both to <body> first.
    page.evaluate(
        """() => {
          document.body.tabIndex = -1;
          document.body.focus();
          document.body.removeAttribute("tabindex");
        }"""
    )

    email = page.get_by_label("Email", exact=True)
    stops = []
    for _ in range(6):
        page.keyboard.press("Tab")
        stops.append(page.evaluate(DESCRIBE_FOCUS))
        if email.evaluate("el => el === document.activeElement"):
            break
    else:
        pytest.fail(f"Tab never reached the Email field; focus went {stops}")

    assert stops[0] == "a:Skip to content", f"the skip link is not the first stop: {stops}"
    focus = email.evaluate(
        """el => {
          const style = getComputedStyle(el);
          return {
            visible: el.matches(":focus-visible"),
            outlineStyle: style.outlineStyle,
            outlineWidth: style.outlineWidth,
          };
        }"""
    )
    assert focus["visible"] is True, focus
    assert focus["outlineStyle"] != "none", focus
    assert focus["outlineWidth"] != "0px", focus
