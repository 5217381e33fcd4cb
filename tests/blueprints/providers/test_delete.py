"""Deleting a provider: the confirmation page counts what goes, the POST deletes, and a
provider linked to a SCIM token is refused on the page and again on the server."""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import ExternalLogin
from app.models import ScimToken
from app.models import SsoProvider
from tests.blueprints.providers.conftest import base
from tests.blueprints.providers.conftest import browser_for
from tests.blueprints.providers.conftest import csrf_post
from tests.helpers import audit_events


def _link(app, guid: str, user_id, subject: str) -> None:
    with app.app_context():
        db.session.add(ExternalLogin(user_id=user_id, provider_id=uuid.UUID(guid), subject=subject))
        db.session.commit()


def _exists(app, guid: str) -> bool:
    with app.app_context():
        return db.session.get(SsoProvider, uuid.UUID(guid)) is not None


def _logins(app, guid: str) -> int:
    with app.app_context():
        return db.session.scalar(
            select(func.count())
            .select_from(ExternalLogin)
            .where(ExternalLogin.provider_id == uuid.UUID(guid))
        )


def test_delete_confirmation_counts_logins_and_stranded_users_then_deletes(
    app, people, make_provider, make_user
):
    guid = make_provider(people.acme.id, scheme="acme-sso")
    other = make_provider(people.acme.id, scheme="other-sso", display_name="Other SSO")
    # Two users with no password and no other login lose their only way to sign in; one has
    # a password, one has another provider's login.
    only_a = make_user("only-a@acme.example", password=None, account_id=people.acme.id)
    only_b = make_user("only-b@acme.example", password=None, account_id=people.acme.id)
    with_password = make_user("pw@acme.example", account_id=people.acme.id)
    with_other = make_user("other@acme.example", password=None, account_id=people.acme.id)
    for n, user in enumerate((only_a, only_b, with_password, with_other)):
        _link(app, guid, user.id, f"sub-{n}")
    _link(app, other, with_other.id, "other-sub")

    browser = browser_for(app, people.acme_admin)
    path = base(people.acme.id) + f"/{guid}/delete"
    page = browser.get(path)
    assert page.status_code == 200
    assert "4 logins" in page.text
    assert "2 users lose their only way to sign in" in page.text
    assert ">Delete</button>" in page.text and 'name="csrf_token"' in page.text

    response = csrf_post(browser, path, token_from=path)
    assert response.status_code == 303
    assert response.headers["Location"] == base(people.acme.id)
    assert not _exists(app, guid) and _logins(app, guid) == 0
    assert _exists(app, other) and _logins(app, other) == 1
    assert [e["target_id"] for e in audit_events(app, "provider.deleted")] == [guid]
    listing = browser.get(response.headers["Location"]).text
    assert "have been deleted" in listing
    assert f"/{guid}/" not in listing and "Other SSO" in listing


def test_delete_is_refused_while_a_scim_token_is_linked(app, people, make_provider):
    guid = make_provider(people.acme.id)
    with app.app_context():
        db.session.add(
            ScimToken(
                account_id=people.acme.id,
                provider_id=uuid.UUID(guid),
                name="Okta provisioning",
                token_hash=hashlib.sha256(b"scim-token").hexdigest(),
            )
        )
        db.session.commit()
    browser = browser_for(app, people.acme_admin)
    path = base(people.acme.id) + f"/{guid}/delete"
    page = browser.get(path)
    assert page.status_code == 200
    assert "cannot be deleted" in page.text and "Okta provisioning" in page.text
    assert ">Delete</button>" not in page.text
    # A POST anyway (an old tab, a crafted request) is refused by the server too.
    response = csrf_post(browser, path, token_from=base(people.acme.id))
    assert response.status_code == 303
    assert _exists(app, guid)
    follow = browser.get(response.headers["Location"]).text
    assert "Okta provisioning" in follow and "cannot be deleted" in follow
    assert audit_events(app, "provider.deleted") == []
