"""Enable, disable, show and hide: POST forms with CSRF, and the sign-in page and the direct
SSO link follow at once."""

from __future__ import annotations

import uuid

from app.extensions import db
from app.models import SsoProvider
from tests.blueprints.providers.conftest import base
from tests.blueprints.providers.conftest import browser_for
from tests.blueprints.providers.conftest import csrf_post
from tests.helpers import audit_events

BUTTON = "Sign in with Acme SSO"


def _state(app, guid: str) -> tuple[bool, bool]:
    with app.app_context():
        row = db.session.get(SsoProvider, uuid.UUID(guid))
        return row.enabled, row.visible


def _act(browser, account_id: int, guid: str, verb: str):
    response = csrf_post(browser, base(account_id) + f"/{guid}/{verb}", token_from=base(account_id))
    assert response.status_code == 303, response.text
    assert response.headers["Location"] == base(account_id)
    return browser.get(response.headers["Location"]).text


def test_disable_and_enable(app, people, idp, make_provider):
    guid = make_provider(people.acme.id)
    admin = browser_for(app, people.acme_admin)
    visitor = app.test_client()
    login = f"/login?account={people.acme.id}"
    assert BUTTON in visitor.get(login).text

    listing = _act(admin, people.acme.id, guid, "disable")
    assert "is disabled" in listing
    assert _state(app, guid) == (False, True)
    assert BUTTON not in visitor.get(login).text
    refused = visitor.get(f"/sso/{guid}")
    assert refused.status_code == 403 and "disabled" in refused.text

    listing = _act(admin, people.acme.id, guid, "enable")
    assert "is enabled" in listing
    assert _state(app, guid) == (True, True)
    assert BUTTON in visitor.get(login).text
    started = visitor.get(f"/sso/{guid}")
    assert started.status_code in (302, 303)
    assert started.headers["Location"].startswith(idp.issuer() + "/authorize?")
    assert [e["target_id"] for e in audit_events(app, "provider.disabled")] == [guid]
    assert [e["target_id"] for e in audit_events(app, "provider.enabled")] == [guid]


def test_hide_and_show(app, people, idp, make_provider):
    guid = make_provider(people.acme.id)
    admin = browser_for(app, people.acme_admin)
    visitor = app.test_client()
    login = f"/login?account={people.acme.id}"

    assert "is hidden" in _act(admin, people.acme.id, guid, "hide")
    assert _state(app, guid) == (True, False)
    assert BUTTON not in visitor.get(login).text
    # Hidden is not disabled: the direct SSO link still starts the sign-in.
    started = visitor.get(f"/sso/{guid}")
    assert started.status_code in (302, 303)
    assert started.headers["Location"].startswith(idp.issuer() + "/authorize?")

    assert "is shown" in _act(admin, people.acme.id, guid, "show")
    assert _state(app, guid) == (True, True)
    assert BUTTON in visitor.get(login).text


def test_state_changes_need_post(app, people, make_provider):
    guid = make_provider(people.acme.id)
    admin = browser_for(app, people.acme_admin)
    for verb in ("enable", "disable", "show", "hide"):
        assert admin.get(base(people.acme.id) + f"/{guid}/{verb}").status_code == 405
    assert _state(app, guid) == (True, True)
