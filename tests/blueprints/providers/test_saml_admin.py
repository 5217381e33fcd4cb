"""SAML 2.0 providers on the admin pages: presets with their IdP-side steps, create from
pasted metadata or a metadata URL (served over HTTP here), edit, certificate expiry with its
warning, and "Test sign-in" through the real SAML flow (an in-process pysaml2 IdP answers)."""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from lxml import etree
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import ExternalLogin
from app.models import SsoProvider
from app.services import presets
from app.services import saml
from tests.blueprints.providers.conftest import base
from tests.blueprints.providers.conftest import browser_for
from tests.blueprints.providers.conftest import csrf_post
from tests.blueprints.providers.conftest import form_data
from tests.conftest import base_config
from tests.e2e.saml_idp import NS
from tests.e2e.saml_idp import IdpCore
from tests.e2e.saml_idp import encode
from tests.e2e.saml_idp import make_key_pair
from tests.e2e.saml_idp import query_params
from tests.helpers import audit_events
from tests.helpers import serving

USERS = {
    "alice": {
        "name_id": "alice-0001",
        "attributes": {"email": ["alice@acme.example"], "groups": ["staff"]},
    }
}
ENTRA_EMAIL = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"


@pytest.fixture(scope="module")
def core() -> Iterator[IdpCore]:
    built = IdpCore("http://127.0.0.1:9", users=USERS)
    yield built
    built.close()


class MetadataServer(ThreadingHTTPServer):
    """Serves ``documents[path]`` as SAML metadata; other paths answer 404."""

    daemon_threads = False
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _MetadataHandler)
        self.documents: dict[str, str] = {}

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class _MetadataHandler(BaseHTTPRequestHandler):
    server: MetadataServer

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        document = self.server.documents.get(self.path)
        body = (document or "not found").encode()
        self.send_response(200 if document is not None else 404)
        self.send_header("Content-Type", "application/samlmetadata+xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def metadata_server() -> Iterator[MetadataServer]:
    with serving(MetadataServer()) as server:
        yield server


@pytest.fixture
def config(database_url, idp, metadata_server) -> dict:
    allowed = f"127.0.0.1:{idp.port},127.0.0.1:{metadata_server.port}"
    return base_config(database_url, OUTBOUND_ALLOW_PRIVATE=allowed)


def saml_form(**changes) -> dict:
    """What the provider form posts for a SAML provider (None leaves a key out): the OpenID
    Connect form's fields empty, and the SAML ones."""
    saml_fields = {
        "protocol": "saml",
        "display_name": "Acme SAML",
        "scheme": "AcmeSaml",
        "authority": None,
        "client_id": "",
        "saml_metadata_xml": "",
        "saml_metadata_url": "",
        "saml_signed": "assertion",
        "saml_nameid_format": "",
        "saml_email_attribute": "",
        "saml_given_name_attribute": "",
        "saml_family_name_attribute": "",
        "saml_name_attribute": "",
        "jit_provisioning": "y",
    }
    return form_data("", **{**saml_fields, **changes})


def _input_value(html: str, name: str) -> str | None:
    match = re.search(rf'<input[^>]*name="{name}"[^>]*>', html)
    if not match:
        return None
    value = re.search(r'value="([^"]*)"', match.group(0))
    return html_lib.unescape(value.group(1)) if value else ""


def _provider(app, scheme: str = "AcmeSaml") -> SsoProvider:
    with app.app_context():
        row = db.session.scalar(select(SsoProvider).where(SsoProvider.scheme == scheme))
        if row is not None:
            row.certificates  # noqa: B018 - load before leaving the session
            db.session.expunge(row)
        return row


def _create(app, people, core, **changes):
    browser = browser_for(app, people.acme_admin)
    path = base(people.acme.id) + "/new/saml-entra"
    data = saml_form(saml_metadata_xml=core.metadata_xml(), **changes)
    return browser, csrf_post(browser, path, data, token_from=path)


# --- presets -------------------------------------------------------------------------------
def test_picker_offers_the_saml_presets(app, people):
    html = browser_for(app, people.acme_admin).get(base(people.acme.id) + "/new").text
    for label in (
        "SAML: Microsoft Entra ID",
        "SAML: Okta",
        "SAML: Google Workspace",
        "SAML: ADFS",
    ):
        assert label in html
    assert "cannot be created here yet" not in html


@pytest.mark.parametrize(
    "key,expected",
    [
        ("saml-entra", {"saml_email_attribute": ENTRA_EMAIL}),
        ("saml-okta", {"saml_email_attribute": "email", "role_claim": "groups"}),
        ("saml-google", {"saml_given_name_attribute": "firstName"}),
        (
            "saml-adfs",
            {
                "saml_metadata_url": (
                    "https://{adfs-host}/FederationMetadata/2007-06/FederationMetadata.xml"
                )
            },
        ),
    ],
)
def test_each_saml_preset_prefills_the_form_and_lists_the_idp_steps(app, people, key, expected):
    response = browser_for(app, people.acme_admin).get(base(people.acme.id) + f"/new/{key}")
    assert response.status_code == 200
    html = response.text
    preset = presets.get_preset(key)
    assert preset.protocol == "saml"
    assert re.search(r'<option selected value="saml"|<option value="saml" selected', html)
    for name, value in expected.items():
        assert _input_value(html, name) == value, name
    scheme = preset.defaults["scheme"]
    # The IdP-side steps carry the URLs to enter there, built from the scheme.
    assert '<ol class="steps">' in html
    steps = html[html.index('<ol class="steps">') : html.index("</ol>")]
    assert f"http://localhost/saml/{scheme}/metadata" in steps
    for url in (
        f"http://localhost/saml/{scheme}/metadata",
        f"http://localhost/signin-{scheme}",
        f"http://localhost/signout-{scheme}",
    ):
        assert url in html
    # The URLs follow the scheme as it is typed (prefix + scheme + suffix).
    assert 'data-callback-prefix="http://localhost/saml/" data-callback-suffix="/metadata"' in html
    assert "Back-channel logout URI" not in html


# --- create --------------------------------------------------------------------------------
def test_create_from_pasted_metadata(app, people, core):
    browser, response = _create(
        app,
        people,
        core,
        saml_email_attribute="email",
        saml_signed="both",
        saml_allow_idp_initiated="y",
        saml_nameid_format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
    )
    assert response.status_code == 303, response.text
    row = _provider(app)
    assert row.protocol == "saml" and row.account_id == people.acme.id
    assert row.saml_idp_entity_id == core.entity_id
    assert row.saml_sso_url == core.sso_url and row.saml_slo_url == core.slo_url
    assert row.saml_signed == "both" and row.saml_allow_idp_initiated is True
    assert row.saml_email_attribute == "email"
    assert row.saml_nameid_format == "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    assert [c.fingerprint_sha256 for c in row.certificates] == [
        saml.certificate_facts(core.signing_key.cert_pem)[0]
    ]
    assert row.client_id is None and row.saml_sp_key_encrypted is None
    assert audit_events(app, "provider.created")[-1]["details"]["protocol"] == "saml"
    listing = browser.get(response.headers["Location"]).text
    assert "has been created" in listing
    assert "http://localhost/saml/AcmeSaml/metadata" in listing
    assert "valid until" in listing
    # The button is on the account's sign-in page.
    assert f"/sso/{row.id}" in app.test_client().get(f"/login?account={people.acme.id}").text


def test_create_from_a_metadata_url(app, people, core, metadata_server):
    metadata_server.documents["/idp/metadata"] = core.metadata_xml()
    url = metadata_server.url("/idp/metadata")
    browser = browser_for(app, people.acme_admin)
    path = base(people.acme.id) + "/new/saml-okta"
    response = csrf_post(
        browser, path, saml_form(saml_metadata_url=url, saml_sign_requests="y"), token_from=path
    )
    assert response.status_code == 303, response.text
    row = _provider(app)
    assert row.saml_metadata_url == url and row.saml_idp_entity_id == core.entity_id
    # Signing requests made a key pair: the certificate is in the SP metadata, the key is not.
    assert row.saml_sp_key_encrypted and "PRIVATE KEY" not in row.saml_sp_key_encrypted
    metadata = app.test_client().get("/saml/AcmeSaml/metadata")
    descriptor = etree.fromstring(metadata.data).find("md:SPSSODescriptor", NS)
    assert descriptor.get("AuthnRequestsSigned") == "true"
    assert descriptor.find("md:KeyDescriptor", NS) is not None


@pytest.mark.parametrize(
    "changes,field,fragment",
    [
        ({}, "saml_metadata_xml", "Paste the identity provider's metadata XML"),
        ({"saml_metadata_xml": "<not xml"}, "saml_metadata_xml", "not valid XML"),
        (
            {"saml_metadata_xml": "<EntityDescriptor xmlns='urn:x'/>"},
            "saml_metadata_xml",
            "no SAML identity provider",
        ),
        ({"saml_metadata_url": "http://idp.example.com/md"}, "saml_metadata_url", "https"),
        ({"saml_metadata_url": "METADATA_404"}, "saml_metadata_url", "could not be loaded"),
        ({"saml_signed": "nothing"}, "saml_signed", "Not a valid choice"),
        (
            {"saml_metadata_xml": "CORE", "saml_email_attribute": "e" * 256},
            "saml_email_attribute",
            "255",
        ),
    ],
)
def test_bad_saml_settings_are_shown_next_to_their_field(
    app, people, core, metadata_server, changes, field, fragment
):
    if changes.get("saml_metadata_url") == "METADATA_404":
        changes["saml_metadata_url"] = metadata_server.url("/missing")
    if changes.get("saml_metadata_xml") == "CORE":
        changes["saml_metadata_xml"] = core.metadata_xml()
    browser = browser_for(app, people.acme_admin)
    path = base(people.acme.id) + "/new/saml-entra"
    response = csrf_post(browser, path, saml_form(**changes), token_from=path)
    assert response.status_code == 400
    html = html_lib.unescape(response.text)
    errors = re.search(rf'<ul class="errors[^"]*" id="{field}-errors">(.*?)</ul>', html, re.S)
    assert errors, html[:3000]
    assert fragment in errors.group(1)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SsoProvider)) == 0


# --- edit ----------------------------------------------------------------------------------
def test_edit_keeps_the_metadata_unless_replaced(app, people, core):
    browser, _ = _create(app, people, core)
    row = _provider(app)
    path = base(people.acme.id) + f"/{row.id}/edit"
    page = browser.get(path).text
    assert core.entity_id in page and "Signing certificates" in page
    assert "Left empty, the stored metadata is kept." in page
    # The stored document is not put back into the textarea.
    assert "EntityDescriptor" not in re.search(
        r'<textarea[^>]*name="saml_metadata_xml"[^>]*>(.*?)</textarea>', page, re.S
    ).group(1)
    response = csrf_post(
        browser, path, saml_form(saml_email_attribute="mail", saml_signed="response"), path
    )
    assert response.status_code == 303, response.text
    edited = _provider(app)
    assert (edited.saml_email_attribute, edited.saml_signed) == ("mail", "response")
    assert edited.saml_idp_entity_id == core.entity_id and len(edited.certificates) == 1
    assert edited.version == row.version + 1
    changes = audit_events(app, "provider.updated")[-1]["details"]["changes"]
    assert set(changes) == {"saml_email_attribute", "saml_signed"}
    # Pasting a document with another certificate replaces the trusted ones.
    rotated = IdpCore(core.base_url, key_pairs=[make_key_pair("next")], users=USERS)
    try:
        response = csrf_post(
            browser, path, saml_form(saml_metadata_xml=rotated.metadata_xml()), path
        )
    finally:
        rotated.close()
    assert response.status_code == 303
    replaced = _provider(app)
    assert [c.fingerprint_sha256 for c in replaced.certificates] != [
        c.fingerprint_sha256 for c in edited.certificates
    ]
    details = audit_events(app, "provider.updated")[-1]["details"]["changes"]
    assert details["saml_metadata"]["certificates"]["removed"]


def test_turning_on_request_signing_makes_a_key_pair(app, people, core):
    browser, _ = _create(app, people, core)
    row = _provider(app)
    path = base(people.acme.id) + f"/{row.id}/edit"
    assert csrf_post(browser, path, saml_form(saml_sign_requests="y"), path).status_code == 303
    signed = _provider(app)
    assert signed.saml_sign_requests and signed.saml_sp_cert and signed.saml_sp_key_encrypted
    assert "saml_sp_key" in audit_events(app, "provider.updated")[-1]["details"]["changes"]
    # Saving again keeps the same key pair.
    assert csrf_post(browser, path, saml_form(saml_sign_requests="y"), path).status_code == 303
    assert _provider(app).saml_sp_cert == signed.saml_sp_cert


def test_each_certificate_expiry_is_shown_with_a_warning_within_30_days(app, people):
    soon = IdpCore("http://127.0.0.1:9", key_pairs=[make_key_pair("soon", days=10)])
    later = make_key_pair("later", days=365)
    both = IdpCore("http://127.0.0.1:9", key_pairs=[later, soon.signing_key])
    try:
        browser = browser_for(app, people.acme_admin)
        path = base(people.acme.id) + "/new/saml-entra"
        data = saml_form(saml_metadata_xml=both.metadata_xml())
        assert csrf_post(browser, path, data, token_from=path).status_code == 303
    finally:
        soon.close()
        both.close()
    row = _provider(app)
    assert len(row.certificates) == 2
    for page in (
        browser.get(base(people.acme.id)).text,
        browser.get(base(people.acme.id) + f"/{row.id}/edit").text,
    ):
        items = re.findall(r'<li class="certificate">(.*?)</li>', page, re.S)
        assert len(items) == 2
        # Soonest first, with the warning; the other has none.
        assert "Expires within 30 days" in items[0]
        assert "Expires within 30 days" not in items[1]
        expiry = min(c.not_after for c in row.certificates)
        assert expiry.strftime("%Y-%m-%d") in items[0]


# --- test sign-in --------------------------------------------------------------------------
def _answer(core: IdpCore, location: str) -> tuple[str, dict]:
    asked = core.parse_authn_request(query_params(location))
    xml = core.response_xml(
        "alice", sp_entity_id=asked["issuer"], acs=asked["acs"], in_response_to=asked["id"]
    )
    return urlsplit(asked["acs"]).path, {"SAMLResponse": encode(xml), "RelayState": ""}


@pytest.mark.parametrize("enabled", [True, False])
def test_test_sign_in_runs_the_saml_flow_and_writes_nothing(app, people, core, enabled):
    browser, _ = _create(app, people, core, enabled="y" if enabled else None)
    row = _provider(app)
    core.add_sp_metadata(app.test_client().get("/saml/AcmeSaml/metadata").text)
    me = browser.get("/whoami").json
    started = csrf_post(browser, base(people.acme.id) + f"/{row.id}/test", {}, base(people.acme.id))
    assert started.status_code == 303
    assert started.headers["Location"].startswith(f"{core.sso_url}?SAMLRequest=")
    path, form = _answer(core, started.headers["Location"])
    result = browser.post(path, data=form)
    assert result.status_code == 200, result.text
    assert "This was a test" in result.text
    assert "Attributes received" in result.text and "alice@acme.example" in result.text
    assert "alice-0001" in result.text
    assert "Creates a new user" in result.text
    # Still the admin's own session; no user, link or sign-in recorded.
    assert browser.get("/whoami").json == me
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ExternalLogin)) == 0
    methods = [e["details"]["method"] for e in audit_events(app, "auth.signin.succeeded")]
    assert methods == ["password"]  # the admin's own sign-in only


def test_test_sign_in_shows_a_refused_answer(app, people, core):
    browser, _ = _create(app, people, core)
    row = _provider(app)
    core.add_sp_metadata(app.test_client().get("/saml/AcmeSaml/metadata").text)
    started = csrf_post(browser, base(people.acme.id) + f"/{row.id}/test", {}, base(people.acme.id))
    asked = core.parse_authn_request(query_params(started.headers["Location"]))
    xml = core.response_xml(
        "alice",
        sp_entity_id=asked["issuer"],
        acs=asked["acs"],
        in_response_to=asked["id"],
        sign="none",
    )
    result = browser.post(urlsplit(asked["acs"]).path, data={"SAMLResponse": encode(xml)})
    assert result.status_code == 200
    assert "The sign-in failed" in result.text and "<code>unsigned</code>" in result.text


def test_other_accounts_cannot_see_or_test_a_saml_provider(app, people, core):
    _create(app, people, core)
    row = _provider(app)
    outsider = browser_for(app, people.globex_admin)
    assert outsider.get(base(people.acme.id) + f"/{row.id}/edit").status_code == 403
    response = csrf_post(outsider, base(people.acme.id) + f"/{row.id}/test", {}, "/account")
    assert response.status_code == 403
