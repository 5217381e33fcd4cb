"""Dynamic reload: a change made through one web process shows on another's very next
request (two app instances on one database, no restart and no shared memory)."""

from __future__ import annotations

from tests.blueprints.providers.conftest import base
from tests.blueprints.providers.conftest import browser_for
from tests.blueprints.providers.conftest import csrf_post
from tests.blueprints.providers.conftest import form_data


def test_every_change_takes_effect_at_once_on_every_process(
    app, make_app, people, idp, make_provider
):
    guid = make_provider(people.acme.id, scheme="acme-sso")
    other = make_app().test_client()
    login = f"/login?account={people.acme.id}"
    assert "Sign in with Acme SSO" in other.get(login).text  # B has seen (and cached) it

    admin = browser_for(app, people.acme_admin)
    edit = base(people.acme.id) + f"/{guid}/edit"
    saved = csrf_post(
        admin, edit, form_data(idp.issuer(), scheme="acme-sso", display_name="Acme Staff"), edit
    )
    assert saved.status_code == 303
    page = other.get(login).text
    assert "Sign in with Acme Staff" in page and "Sign in with Acme SSO" not in page

    disabled = csrf_post(admin, base(people.acme.id) + f"/{guid}/disable", token_from=edit)
    assert disabled.status_code == 303
    assert "Sign in with Acme Staff" not in other.get(login).text
    assert other.get(f"/sso/{guid}").status_code == 403

    enabled = csrf_post(admin, base(people.acme.id) + f"/{guid}/enable", token_from=edit)
    assert enabled.status_code == 303
    assert "Sign in with Acme Staff" in other.get(login).text
    started = other.get(f"/sso/{guid}")
    assert started.status_code in (302, 303)
