"""Creating a provider: the preset picker, pre-filled forms, every validation message next
to its field (and nothing saved), and the discovery check against a real HTTP server."""

from __future__ import annotations

import html as html_lib
import re

import pytest
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import SsoProvider
from app.services import crypto
from app.services import presets
from tests.blueprints.providers.conftest import base
from tests.blueprints.providers.conftest import browser_for
from tests.blueprints.providers.conftest import csrf_post
from tests.blueprints.providers.conftest import form_data
from tests.helpers import audit_events


def _provider_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(SsoProvider))


def _input_value(html: str, name: str) -> str | None:
    match = re.search(rf'<input[^>]*name="{name}"[^>]*>', html)
    if not match:
        return None
    value = re.search(r'value="([^"]*)"', match.group(0))
    return html_lib.unescape(value.group(1)) if value else ""


def _checked(html: str, name: str) -> bool:
    match = re.search(rf'<input[^>]*name="{name}"[^>]*>', html)
    assert match, name
    return " checked" in match.group(0)


def _selected(html: str, name: str) -> str | None:
    match = re.search(rf'<select[^>]*name="{name}"[^>]*>(.*?)</select>', html, re.S)
    assert match, name
    option = re.search(
        r'<option selected value="([^"]*)"|<option[^>]*value="([^"]*)" selected', match.group(1)
    )
    return html_lib.unescape(next(v for v in option.groups() if v is not None)) if option else None


def test_preset_picker_offers_every_preset(app, people):
    html = browser_for(app, people.acme_admin).get(base(people.acme.id) + "/new").text
    for label in (
        "Microsoft Entra ID",
        "Okta",
        "Google Workspace",
        "Auth0",
        "Keycloak",
        "Generic OpenID Connect",
        "Generic OAuth 2.0",
    ):
        assert label in html
    for preset in presets.list_presets():
        assert f'href="{base(people.acme.id)}/new/{preset.key}"' in html


@pytest.mark.parametrize(
    "key,expected",
    [
        (
            "entra",
            {
                "authority": "https://login.microsoftonline.com/{tenant}/v2.0",
                "external_id_claim": "oid",
                "role_claim": "roles",
                "trust_email_verified": False,
            },
        ),
        (
            "okta",
            {
                "authority": "https://{your-domain}.okta.com",
                "additional_scopes": "groups",
                "role_claim": "groups",
                "trust_email_verified": False,
            },
        ),
        ("google", {"authority": "https://accounts.google.com", "trust_email_verified": True}),
        ("auth0", {"authority": "https://{tenant}.auth0.com/"}),
        ("keycloak", {"authority": "https://{host}/realms/{realm}", "role_claim": "groups"}),
        ("oidc", {"authority": "", "scheme": ""}),
        ("oauth2", {"protocol": "oauth2", "subject_field": "id"}),
    ],
)
def test_each_preset_prefills_the_form(app, people, key, expected):
    response = browser_for(app, people.acme_admin).get(base(people.acme.id) + f"/new/{key}")
    assert response.status_code == 200
    html = response.text
    preset = presets.get_preset(key)
    assert preset.label in html
    assert _selected(html, "protocol") == expected.get("protocol", "oidc")
    assert _selected(html, "response_type") == "code"
    assert _checked(html, "enabled") and _checked(html, "visible")
    for name, value in expected.items():
        if name == "protocol":
            continue
        if isinstance(value, bool):
            assert _checked(html, name) is value, name
        else:
            assert _input_value(html, name) == value, name
    # The IdP-side steps, with the URL to paste at each of them.
    assert '<ol class="steps">' in html
    assert "Redirect URI (sign-in callback)" in html
    if preset.defaults.get("scheme"):
        assert f"http://localhost/signin-{preset.defaults['scheme']}" in html
    else:
        assert "http://localhost/signin-{scheme}" in html
    # Live callback URLs follow the scheme input (provider-form.js), and the secret is a
    # password input never pre-filled.
    assert 'data-callback-prefix="http://localhost/signin-"' in html
    assert "/static/provider-form.js" in html
    assert re.search(r'<input[^>]*name="client_secret"[^>]*type="password"', html) or re.search(
        r'<input[^>]*type="password"[^>]*name="client_secret"', html
    )
    assert 'name="replace_client_secret"' not in html


def test_every_input_has_a_label(app, people):
    html = browser_for(app, people.acme_admin).get(base(people.acme.id) + "/new/entra").text
    form = html[html.index('id="provider-form"') :]
    ids = re.findall(r'<(?:input|select|textarea)(?![^>]*type="hidden")[^>]*\sid="([^"]+)"', form)
    assert len(ids) > 20
    for field_id in ids:
        assert f'<label for="{field_id}"' in form, field_id


def test_unknown_preset_is_404(app, people):
    browser = browser_for(app, people.acme_admin)
    assert browser.get(base(people.acme.id) + "/new/nope").status_code == 404


def test_create_saves_the_provider_after_the_discovery_check(app, people, idp):
    browser = browser_for(app, people.acme_admin)
    response = csrf_post(
        browser,
        base(people.acme.id) + "/new/okta",
        form_data(
            idp.issuer(),
            client_secret="okta-secret-value",
            additional_scopes="groups offline_access",
            additional_claims="department",
            authorization_expression='"staff" in groups',
            role_claim="groups",
            role_mappings="Keyward-Admins = admin\nCN=Ops,OU=Groups = member",
            role_mapping_default="member",
            jit_provisioning="y",
            visible=None,
        ),
        token_from=base(people.acme.id) + "/new/okta",
    )
    assert response.status_code == 303, response.text
    assert response.headers["Location"] == base(people.acme.id)
    with app.app_context():
        row = db.session.scalar(select(SsoProvider).where(SsoProvider.scheme == "AcmeCorp-SSO"))
        assert row.account_id == people.acme.id
        assert row.display_name == "Acme Corp SSO" and row.authority == idp.issuer()
        assert crypto.decrypt(row.client_secret_encrypted) == "okta-secret-value"
        assert row.enabled is True and row.visible is False and row.jit_provisioning is True
        assert set(row.scopes) >= {"groups", "offline_access", "department"}
        assert row.authorization_expression == '"staff" in groups'
        assert row.role_claim == "groups" and row.role_mapping_default == "member"
        assert sorted((m.claim_value, m.role) for m in row.role_mappings) == [
            ("CN=Ops,OU=Groups", "member"),
            ("Keyward-Admins", "admin"),
        ]
        guid = str(row.id)
    events = audit_events(app, "provider.created")
    assert [e["target_id"] for e in events] == [guid]
    assert events[0]["actor"] == "admin@acme.example"
    listing = browser.get(response.headers["Location"]).text
    assert "has been created" in listing and "Acme Corp SSO" in listing


def test_oauth2_provider_is_created_with_its_endpoints(app, people, idp):
    browser = browser_for(app, people.acme_admin)
    issuer = idp.issuer()
    response = csrf_post(
        browser,
        base(people.acme.id) + "/new/oauth2",
        form_data(
            "",
            protocol="oauth2",
            scheme="GitThing",
            authorization_endpoint=f"{issuer}/authorize",
            token_endpoint=f"{issuer}/token",
            userinfo_endpoint=f"{issuer}/userinfo",
            subject_field="id",
            client_secret="oauth-secret",
        ),
        token_from=base(people.acme.id) + "/new/oauth2",
    )
    assert response.status_code == 303, response.text
    with app.app_context():
        row = db.session.scalar(select(SsoProvider).where(SsoProvider.scheme == "GitThing"))
        assert row.protocol == "oauth2" and row.subject_field == "id"
        assert row.token_endpoint == f"{issuer}/token"


def _field_error(html: str, field: str) -> str:
    """The error list tied to ``field``'s input with aria-describedby (asserts both)."""
    tag = re.search(rf'<(?:input|select|textarea)[^>]*name="{field}"[^>]*>', html)
    assert tag, f"no input {field}"
    assert re.search(rf'aria-describedby="[^"]*\b{field}-errors\b', tag.group(0)), tag.group(0)
    assert 'aria-invalid="true"' in tag.group(0)
    errors = re.search(rf'<ul class="errors[^"]*" id="{field}-errors">(.*?)</ul>', html, re.S)
    assert errors, f"no errors for {field}"
    return html_lib.unescape(errors.group(1))


@pytest.mark.parametrize(
    "changes,field,message",
    [
        ({"scheme": "1acme"}, "scheme", "must start with a letter"),
        ({"scheme": "acme sso"}, "scheme", "must start with a letter"),
        ({"scheme": "Google"}, "scheme", "is reserved"),
        ({"scheme": "ACME-sso"}, "scheme", "already in use"),
        ({"authority": "http://idp.example.com"}, "authority", "Authority URL"),
        ({"authority": "https://login.microsoftonline.com/{tenant}/v2.0"}, "authority", "{tenant}"),
        ({"icon_url": "javascript:alert(1)"}, "icon_url", "Icon URL"),
        (
            {"authorization_expression": 'email == "a" &&'},
            "authorization_expression",
            "Line 1, column",
        ),
        (
            {"role_mappings": "Admins = superuser", "role_claim": "groups"},
            "role_mappings",
            "superuser",
        ),
        ({"role_mappings": "no separator here", "role_claim": "groups"}, "role_mappings", "Line 1"),
        ({"display_name": ""}, "display_name", "Display name"),
        ({"client_id": ""}, "client_id", "Client ID"),
        ({"default_role": "root"}, "default_role", "Not a valid choice"),
    ],
)
def test_invalid_settings_are_shown_next_to_their_field_and_nothing_is_saved(
    app, people, idp, make_provider, changes, field, message
):
    make_provider(people.acme.id, scheme="acme-sso")
    before = _provider_count(app)
    browser = browser_for(app, people.acme_admin)
    response = csrf_post(
        browser,
        base(people.acme.id) + "/new/oidc",
        form_data(idp.issuer(), client_secret="typed-secret-9f8e", **changes),
        token_from=base(people.acme.id) + "/new/oidc",
    )
    assert response.status_code == 400
    html = response.text
    assert message in _field_error(html, field)
    # The summary at the top links to the field.
    summary = html[html.index('id="error-summary"') : html.index('id="provider-form"')]
    assert f'href="#{field}"' in summary
    # What the admin typed is kept (but never the secret).
    kept = {
        k: v
        for k, v in changes.items()
        if k not in ("role_mappings", "authorization_expression", "default_role")
    }
    for name, value in kept.items():
        assert _input_value(html, name) == value
    assert "typed-secret-9f8e" not in html
    assert _provider_count(app) == before


def test_all_field_errors_are_shown_at_once(app, people, idp):
    browser = browser_for(app, people.acme_admin)
    response = csrf_post(
        browser,
        base(people.acme.id) + "/new/oidc",
        form_data(
            idp.issuer(),
            scheme="9bad",
            icon_url="javascript:alert(1)",
            authorization_expression="(((",
        ),
        token_from=base(people.acme.id) + "/new/oidc",
    )
    assert response.status_code == 400
    for field in ("scheme", "icon_url", "authorization_expression"):
        assert _field_error(response.text, field)
    assert _provider_count(app) == 0


def test_discovery_failure_is_shown_next_to_the_authority(app, people, idp):
    browser = browser_for(app, people.acme_admin)
    response = csrf_post(
        browser,
        base(people.acme.id) + "/new/oidc",
        form_data(idp.issuer("missing")),
        token_from=base(people.acme.id) + "/new/oidc",
    )
    assert response.status_code == 400
    assert _field_error(response.text, "authority")
    assert _provider_count(app) == 0


def test_callback_urls_are_built_from_the_submitted_scheme_without_javascript(app, people, idp):
    browser = browser_for(app, people.acme_admin)
    response = csrf_post(
        browser,
        base(people.acme.id) + "/new/entra",
        form_data("https://login.microsoftonline.com/{tenant}/v2.0", scheme="Contoso-Entra"),
        token_from=base(people.acme.id) + "/new/entra",
    )
    assert response.status_code == 400
    html = response.text
    for url in (
        "http://localhost/signin-Contoso-Entra",
        "http://localhost/signout-callback-Contoso-Entra",
        "http://localhost/signout-Contoso-Entra",
    ):
        assert url in html
    assert "http://localhost/signin-entra<" not in html
