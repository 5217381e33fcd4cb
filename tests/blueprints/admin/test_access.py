"""Admin pages: one role check for every view; cross-account access is 403."""

from __future__ import annotations

import pytest

from tests.conftest import AuthActions

ADMIN_PAGES = ["/admin/accounts/{id}", "/admin/accounts/{id}/audit"]


@pytest.fixture
def two_accounts(make_account, make_user):
    acme, globex = make_account("Acme"), make_account("Globex")
    people = {
        "acme_owner": make_user("owner@acme.example", account_id=acme.id, role="owner"),
        "acme_admin": make_user("admin@acme.example", account_id=acme.id, role="admin"),
        "acme_member": make_user("member@acme.example", account_id=acme.id, role="member"),
        "globex_admin": make_user("admin@globex.example", account_id=globex.id, role="admin"),
        "loner": make_user("loner@example.com"),
    }
    return acme, globex, people


def browser_for(app, user):
    client = app.test_client()
    assert AuthActions(client).login(user.email).status_code == 303
    return client


@pytest.mark.parametrize("page", ADMIN_PAGES)
@pytest.mark.parametrize("who", ["acme_owner", "acme_admin"])
def test_owners_and_admins_of_the_account_get_in(app, two_accounts, page, who):
    acme, _, people = two_accounts
    response = browser_for(app, people[who]).get(page.format(id=acme.id))
    assert response.status_code == 200
    assert "Acme" in response.text


@pytest.mark.parametrize("page", ADMIN_PAGES)
@pytest.mark.parametrize("who", ["acme_member", "globex_admin", "loner"])
def test_everyone_else_gets_403(app, two_accounts, page, who):
    acme, _, people = two_accounts
    response = browser_for(app, people[who]).get(page.format(id=acme.id))
    assert response.status_code == 403
    assert "You do not have access to this page." in response.text
    assert "owner@acme.example" not in response.text


def test_guessing_account_ids_reveals_nothing(app, two_accounts):
    acme, globex, people = two_accounts
    browser = browser_for(app, people["globex_admin"])
    statuses = {
        account_id: browser.get(f"/admin/accounts/{account_id}").status_code
        for account_id in range(1, max(acme.id, globex.id) + 5)
    }
    # Another account's id and an id that does not exist answer the same.
    assert statuses.pop(globex.id) == 200
    assert set(statuses.values()) == {403}


@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_anonymous_visitors_are_redirected_to_login(client, two_accounts, page):
    acme, _, _ = two_accounts
    response = client.get(page.format(id=acme.id))
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/login?next=%2Fadmin%2Faccounts%2F")


def test_audit_page_shows_only_that_accounts_events(app, two_accounts):
    acme, globex, people = two_accounts
    browser = browser_for(app, people["acme_admin"])
    page = browser.get(f"/admin/accounts/{acme.id}/audit")
    assert "membership.created" in page.text
    assert "admin@globex.example" not in page.text
    filtered = browser.get(f"/admin/accounts/{acme.id}/audit?action=account.")
    assert "account.created" in filtered.text and "membership.created" not in filtered.text


def test_home_page_shows_who_and_which_accounts(app, two_accounts):
    acme, _, people = two_accounts
    page = browser_for(app, people["acme_admin"]).get("/")
    assert page.status_code == 200
    assert "admin@acme.example" in page.text
    assert "Acme" in page.text and "Globex" not in page.text
    assert f"/admin/accounts/{acme.id}" in page.text
    member_page = browser_for(app, people["acme_member"]).get("/")
    assert f"/admin/accounts/{acme.id}" not in member_page.text


def test_role_ranking_helper(app, two_accounts):
    from app.models import Role
    from app.services import accounts
    from app.services import users

    acme, globex, people = two_accounts
    with app.app_context():
        admin = users.get_user(people["acme_admin"].id)
        assert accounts.has_role(admin, acme.id, Role.MEMBER)
        assert accounts.has_role(admin, acme.id, Role.ADMIN)
        assert not accounts.has_role(admin, acme.id, Role.OWNER)
        assert not accounts.has_role(admin, globex.id, Role.MEMBER)
