"""Editing a provider: the form shows the stored settings, the client secret lock keeps or
replaces the stored secret, and no page ever shows a secret."""

from __future__ import annotations

import re
import uuid

import pytest

from app.extensions import db
from app.models import SsoProvider
from app.services import crypto
from tests.blueprints.providers.conftest import base
from tests.blueprints.providers.conftest import browser_for
from tests.blueprints.providers.conftest import csrf_post
from tests.blueprints.providers.conftest import form_data
from tests.helpers import audit_events

STORED = "stored-secret-Zq81x"
NEW = "brand-new-secret-Pw47k"


def _secret(app, guid: str) -> str | None:
    with app.app_context():
        row = db.session.get(SsoProvider, uuid.UUID(guid))
        return crypto.decrypt(row.client_secret_encrypted) if row.client_secret_encrypted else None


def _edit(browser, account_id: int, guid: str, data: dict):
    path = base(account_id) + f"/{guid}/edit"
    return csrf_post(browser, path, data, token_from=path)


def test_edit_form_shows_the_stored_settings_and_callback_urls(app, people, make_provider):
    guid = make_provider(
        people.acme.id,
        scheme="acme-sso",
        client_secret=STORED,
        external_id_claim="oid",
        role_claim="groups",
        role_mappings=(("Admins", "admin"), ("Staff", "member")),
    )
    response = browser_for(app, people.acme_admin).get(base(people.acme.id) + f"/{guid}/edit")
    assert response.status_code == 200
    html = response.text
    assert 'value="acme-sso"' in html and 'value="oid"' in html and 'value="groups"' in html
    assert "Admins = admin\nStaff = member" in html
    for url in ("signin-acme-sso", "signout-callback-acme-sso", "signout-acme-sso"):
        assert f"http://localhost/{url}" in html
    # Renaming the scheme: the page says how long the old path keeps working.
    assert "the old ones keep working for 30 days" in html
    # The lock: a masked placeholder and an unticked "Replace the client secret".
    assert "••••••••" in html
    lock = re.search(r'<input[^>]*name="replace_client_secret"[^>]*>', html).group(0)
    assert 'type="checkbox"' in lock and "checked" not in lock
    assert "Replace the client secret" in html
    assert 'action="' + base(people.acme.id) + f'/{guid}/test"' in html
    assert STORED not in html


def test_edit_without_a_stored_secret_shows_no_lock(app, people, make_provider):
    guid = make_provider(people.acme.id)
    html = browser_for(app, people.acme_admin).get(base(people.acme.id) + f"/{guid}/edit").text
    assert 'name="replace_client_secret"' not in html
    assert 'name="client_secret"' in html


@pytest.mark.parametrize(
    "secret_fields,expected",
    [
        ({"client_secret": NEW}, STORED),  # locked: a typed value is ignored
        ({"client_secret": ""}, STORED),  # locked and empty
        ({"client_secret": "", "replace_client_secret": "y"}, STORED),  # unlocked, empty
        ({"client_secret": NEW, "replace_client_secret": "y"}, NEW),  # unlocked with a value
    ],
    ids=["locked-with-value", "locked-empty", "unlocked-empty", "unlocked-value"],
)
def test_secret_lock_keeps_or_replaces_the_stored_secret(
    app, people, idp, make_provider, secret_fields, expected
):
    guid = make_provider(people.acme.id, scheme="acme-sso", client_secret=STORED)
    browser = browser_for(app, people.acme_admin)
    data = form_data(idp.issuer(), scheme="acme-sso", display_name="Acme SSO renamed")
    data.update(secret_fields)
    response = _edit(browser, people.acme.id, guid, data)
    assert response.status_code == 303, response.text
    assert _secret(app, guid) == expected
    with app.app_context():
        assert db.session.get(SsoProvider, uuid.UUID(guid)).display_name == "Acme SSO renamed"


def test_edit_saves_changes_and_records_them(app, people, idp, make_provider):
    guid = make_provider(people.acme.id, scheme="acme-sso")
    browser = browser_for(app, people.acme_admin)
    response = _edit(
        browser,
        people.acme.id,
        guid,
        form_data(
            idp.issuer(),
            scheme="acme-sso",
            display_name="Acme Staff",
            icon_url="https://cdn.example/acme.png",
            response_type="code id_token",
            role_claim="roles",
            role_mappings="Owner = owner",
        ),
    )
    assert response.status_code == 303
    with app.app_context():
        row = db.session.get(SsoProvider, uuid.UUID(guid))
        assert row.display_name == "Acme Staff" and row.response_type == "code id_token"
        assert [(m.claim_value, m.role) for m in row.role_mappings] == [("Owner", "owner")]
    assert [e["target_id"] for e in audit_events(app, "provider.updated")] == [guid]
    assert "has been saved" in browser.get(response.headers["Location"]).text


def test_invalid_edit_keeps_the_input_and_changes_nothing(app, people, idp, make_provider):
    guid = make_provider(people.acme.id, scheme="acme-sso", client_secret=STORED)
    make_provider(people.acme.id, scheme="taken", display_name="Other")
    browser = browser_for(app, people.acme_admin)
    response = _edit(
        browser,
        people.acme.id,
        guid,
        form_data(
            idp.issuer(),
            scheme="TAKEN",
            display_name="Changed name",
            client_secret=NEW,
            replace_client_secret="y",
        ),
    )
    assert response.status_code == 400
    assert "already in use" in response.text
    assert 'value="Changed name"' in response.text and 'value="TAKEN"' in response.text
    assert NEW not in response.text and STORED not in response.text
    with app.app_context():
        row = db.session.get(SsoProvider, uuid.UUID(guid))
        assert row.display_name == "Acme SSO" and row.scheme == "acme-sso"
    assert _secret(app, guid) == STORED


def test_the_secret_never_appears_in_any_page(app, people, idp):
    secret = "never-show-me-5b1d7c"
    browser = browser_for(app, people.acme_admin)
    new_path = base(people.acme.id) + "/new/oidc"
    failed = csrf_post(
        browser, new_path, form_data(idp.issuer(), scheme="1bad", client_secret=secret), new_path
    )
    assert failed.status_code == 400
    pages = [failed.text]
    created = csrf_post(browser, new_path, form_data(idp.issuer(), client_secret=secret), new_path)
    assert created.status_code == 303
    with app.app_context():
        guid = str(db.session.query(SsoProvider.id).scalar())
    edit_path = base(people.acme.id) + f"/{guid}/edit"
    failed_edit = csrf_post(
        browser,
        edit_path,
        form_data(idp.issuer(), scheme="Google", client_secret=secret, replace_client_secret="y"),
        edit_path,
    )
    assert failed_edit.status_code == 400
    pages.append(failed_edit.text)
    for path in (
        base(people.acme.id),
        edit_path,
        base(people.acme.id) + f"/{guid}/delete",
        f"/admin/accounts/{people.acme.id}/audit",
    ):
        response = browser.get(path)
        assert response.status_code == 200, path
        pages.append(response.text)
    pages.append(app.test_client().get(f"/login?account={people.acme.id}").text)
    for page in pages:
        assert secret not in page
    assert _secret(app, guid) == secret


def test_saml_providers_are_edited_with_the_same_form(app, people, make_provider):
    # The SAML pages have their own tests (test_saml_admin.py).
    guid = make_provider(people.acme.id)
    with app.app_context():
        db.session.get(SsoProvider, uuid.UUID(guid)).protocol = "saml"
        db.session.commit()
    html = browser_for(app, people.acme_admin).get(base(people.acme.id) + f"/{guid}/edit").text
    assert 'id="provider-form"' in html and "<legend>SAML 2.0</legend>" in html
