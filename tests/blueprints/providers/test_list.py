"""The provider list: every provider of the account with its state, health, links and
callback URLs, and the old callback URLs of a renamed scheme."""

from __future__ import annotations

import uuid
from datetime import UTC
from datetime import datetime
from datetime import timedelta

from app.extensions import db
from app.models import ProviderMetadata
from app.models import SsoProvider
from app.services import providers
from tests.blueprints.providers.conftest import base
from tests.blueprints.providers.conftest import browser_for


def _record_health(app, guid: str, **values) -> None:
    with app.app_context():
        db.session.add(ProviderMetadata(provider_id=uuid.UUID(guid), **values))
        db.session.commit()


def _rename(app, guid: str, scheme: str) -> datetime:
    with app.app_context():
        provider = providers.get_provider(guid)
        fields = providers.ProviderFields(
            display_name=provider.display_name,
            scheme=scheme,
            authority=provider.authority,
            client_id=provider.client_id,
        )
        providers.update_provider(provider, fields, check_discovery=False)
        db.session.commit()
        (alias,) = providers.live_aliases(provider)
        return alias.expires_at


def test_list_shows_state_health_links_and_callback_urls(app, people, make_provider):
    healthy = make_provider(people.acme.id, scheme="acme-sso", icon_url="https://cdn.example/i.png")
    broken = make_provider(
        people.acme.id, scheme="Legacy", display_name="Legacy IdP", enabled=False, visible=False
    )
    success = datetime(2025, 3, 4, 5, 6, tzinfo=UTC)
    _record_health(app, healthy, fetched_at=success, last_success_at=success, key_ids=["k1"])
    _record_health(
        app,
        broken,
        fetched_at=success,
        last_success_at=None,
        last_error="discovery answered HTTP 500",
        last_error_at=success + timedelta(hours=1),
    )
    page = browser_for(app, people.acme_admin).get(base(people.acme.id))
    assert page.status_code == 200
    html = page.text
    assert "Acme SSO" in html and "Legacy IdP" in html
    assert 'src="https://cdn.example/i.png"' in html
    # Health: last fetch / success, and the last error with its time.
    assert "2025-03-04 05:06 UTC" in html
    assert "discovery answered HTTP 500" in html and "2025-03-04 06:06 UTC" in html
    # State, with a POST button for the opposite state, labelled with its verb.
    assert "Disabled" in html and "Hidden" in html
    assert f'action="{base(people.acme.id)}/{broken}/enable"' in html
    assert f'action="{base(people.acme.id)}/{broken}/show"' in html
    assert f'action="{base(people.acme.id)}/{healthy}/disable"' in html
    assert f'action="{base(people.acme.id)}/{healthy}/hide"' in html
    for verb in ("Enable", "Disable", "Show", "Hide", "Test sign-in"):
        assert f">{verb}</button>" in html
    # The GUID, the direct SSO URL and the callback URLs, visible and with copy buttons.
    assert healthy in html
    assert f"http://localhost/sso/{healthy}" in html
    for url in (
        "http://localhost/signin-acme-sso",
        "http://localhost/signout-callback-acme-sso",
        "http://localhost/signout-acme-sso",
        "http://localhost/backchannel-logout-acme-sso",
    ):
        assert url in html
    assert 'data-copy-target="sso-' + healthy + '"' in html
    assert 'aria-label="Copy the direct SSO URL of Acme SSO"' in html
    assert "/static/copy.js" in html
    assert f'href="{base(people.acme.id)}/new"' in html and "Create SSO provider" in html
    # One CSRF token per POST form: three per provider, and "Sign out".
    assert html.count('name="csrf_token"') == 2 * 3 + 1


def test_list_shows_only_this_accounts_providers(app, people, make_provider):
    make_provider(people.acme.id, scheme="acme-sso")
    make_provider(people.globex.id, scheme="globex-sso", display_name="Globex SSO")
    html = browser_for(app, people.acme_admin).get(base(people.acme.id)).text
    assert "Acme SSO" in html and "Globex SSO" not in html and "globex-sso" not in html


def test_renamed_scheme_shows_until_when_the_old_callback_url_works(app, people, make_provider):
    guid = make_provider(people.acme.id, scheme="acme-sso")
    expires_at = _rename(app, guid, "acme-new")
    day = expires_at.strftime("%Y-%m-%d")
    browser = browser_for(app, people.acme_admin)
    listing = browser.get(base(people.acme.id)).text
    assert "http://localhost/signin-acme-new" in listing
    assert "the old callback URL keeps working until" in listing and day in listing
    assert "http://localhost/signin-acme-sso" in listing
    edit = browser.get(base(people.acme.id) + f"/{guid}/edit").text
    assert "the old callback URL keeps working until" in edit and day in edit
    assert "http://localhost/signin-acme-sso" in edit
    with app.app_context():
        assert db.session.get(SsoProvider, uuid.UUID(guid)).scheme == "acme-new"


def test_empty_list_invites_to_create_one(app, people):
    html = browser_for(app, people.acme_admin).get(base(people.acme.id)).text
    assert "No SSO providers yet" in html
    assert f'href="{base(people.acme.id)}/new"' in html
