"""Who may use the provider pages: admins and owners of the account only; every other
caller, and every GUID that is not this account's provider, gets the same 403."""

from __future__ import annotations

import uuid

import pytest

from app.extensions import db
from app.models import SsoProvider
from tests.blueprints.providers.conftest import base
from tests.blueprints.providers.conftest import browser_for
from tests.blueprints.providers.conftest import csrf_post

GET_PAGES = ["", "/new", "/new/oidc", "/{guid}/edit", "/{guid}/delete"]
POST_ACTIONS = [
    "/new/oidc",
    "/{guid}/edit",
    "/{guid}/enable",
    "/{guid}/disable",
    "/{guid}/show",
    "/{guid}/hide",
    "/{guid}/delete",
    "/{guid}/end-aliases",
    "/{guid}/test",
]


@pytest.fixture
def acme_guid(people, make_provider) -> str:
    return make_provider(people.acme.id)


def _state(app, guid: str) -> tuple:
    with app.app_context():
        row = db.session.get(SsoProvider, uuid.UUID(guid))
        return (row.display_name, row.enabled, row.visible) if row else None


@pytest.mark.parametrize("page", GET_PAGES)
@pytest.mark.parametrize("who", ["acme_owner", "acme_admin"])
def test_owners_and_admins_of_the_account_get_in(app, people, acme_guid, page, who):
    browser = browser_for(app, getattr(people, who))
    response = browser.get(base(people.acme.id) + page.format(guid=acme_guid))
    assert response.status_code == 200


@pytest.mark.parametrize("page", GET_PAGES)
@pytest.mark.parametrize("who", ["acme_member", "globex_admin", "loner"])
def test_members_and_outsiders_get_403_on_every_page(app, people, acme_guid, page, who):
    browser = browser_for(app, getattr(people, who))
    response = browser.get(base(people.acme.id) + page.format(guid=acme_guid))
    assert response.status_code == 403
    assert "Acme SSO" not in response.text


@pytest.mark.parametrize("action", POST_ACTIONS)
@pytest.mark.parametrize("who", ["acme_member", "globex_admin", "loner"])
def test_members_and_outsiders_get_403_on_every_action(app, people, acme_guid, action, who):
    browser = browser_for(app, getattr(people, who))
    before = _state(app, acme_guid)
    response = csrf_post(
        browser, base(people.acme.id) + action.format(guid=acme_guid), {"display_name": "Pwned"}
    )
    assert response.status_code == 403
    assert _state(app, acme_guid) == before


def test_admin_of_another_account_cannot_reach_providers_through_any_account_id(
    app, people, acme_guid, make_provider
):
    globex_guid = make_provider(people.globex.id, scheme="globex-sso", display_name="Globex SSO")
    browser = browser_for(app, people.globex_admin)
    # Acme's account id with Acme's GUID, and Globex's own account id with Acme's GUID.
    for account_id in (people.acme.id, people.globex.id):
        for page in ("/{guid}/edit", "/{guid}/delete"):
            response = browser.get(base(account_id) + page.format(guid=acme_guid))
            assert response.status_code == 403
            assert "Acme SSO" not in response.text
        response = csrf_post(browser, base(account_id) + f"/{acme_guid}/disable")
        assert response.status_code == 403
    assert _state(app, acme_guid) == ("Acme SSO", True, True)
    # Globex's own provider through Globex's id: allowed (the 403s above are not blanket).
    assert browser.get(base(people.globex.id) + f"/{globex_guid}/edit").status_code == 200
    # ... and Acme's list shows none of Globex's providers to Acme's admin.
    acme_page = browser_for(app, people.acme_admin).get(base(people.acme.id))
    assert "Globex SSO" not in acme_page.text and globex_guid not in acme_page.text


@pytest.mark.parametrize(
    "guid", ["not-a-guid", "12345", str(uuid.uuid4()), "00000000-0000-0000-0000-00000000000g"]
)
def test_unknown_and_malformed_guids_answer_403_like_other_accounts(app, people, guid):
    browser = browser_for(app, people.acme_admin)
    for page in ("/{guid}/edit", "/{guid}/delete"):
        assert browser.get(base(people.acme.id) + page.format(guid=guid)).status_code == 403
    assert csrf_post(browser, base(people.acme.id) + f"/{guid}/enable").status_code == 403


@pytest.mark.parametrize("page", GET_PAGES)
def test_anonymous_visitors_are_redirected_to_login(client, people, acme_guid, page):
    response = client.get(base(people.acme.id) + page.format(guid=acme_guid))
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/login?next=%2Fadmin%2Faccounts%2F")


def test_anonymous_posts_are_redirected_to_login_and_change_nothing(app, client, people, acme_guid):
    response = csrf_post(
        client, base(people.acme.id) + f"/{acme_guid}/disable", token_from="/login"
    )
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/login")
    assert _state(app, acme_guid) == ("Acme SSO", True, True)


@pytest.mark.parametrize("action", POST_ACTIONS)
def test_actions_without_a_csrf_token_are_refused(app, people, acme_guid, action):
    browser = browser_for(app, people.acme_admin)
    response = browser.post(base(people.acme.id) + action.format(guid=acme_guid), data={})
    assert response.status_code == 400
    assert _state(app, acme_guid) == ("Acme SSO", True, True)


def test_admin_overview_links_to_the_provider_pages(app, people):
    page = browser_for(app, people.acme_admin).get(f"/admin/accounts/{people.acme.id}")
    assert f'href="{base(people.acme.id)}"' in page.text
