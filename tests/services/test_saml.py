"""services.saml against responses built by an independent IdP (pysaml2, in-process).

Every response is made and signed by pysaml2 (tests/e2e/saml_idp.py IdpCore, xmlsec1) and
verified by python3-saml through services.saml, so both the happy path and each refusal go
through real signatures. The negative cases are what a broken IdP or an attacker holding a
valid response would send: each must be refused with its own ``check``.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from lxml import etree
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import Account
from app.models import ProviderCertificate
from app.models import SamlAssertionId
from app.models import SsoProvider
from app.services import outbound
from app.services import saml
from app.services.errors import ValidationError
from tests.conftest import base_config
from tests.e2e.saml_idp import NS
from tests.e2e.saml_idp import SHA1
from tests.e2e.saml_idp import IdpCore
from tests.e2e.saml_idp import SamlIdpError
from tests.e2e.saml_idp import comment_in_name_id
from tests.e2e.saml_idp import encode
from tests.e2e.saml_idp import hide_signed_assertion_in_extensions
from tests.e2e.saml_idp import make_key_pair
from tests.e2e.saml_idp import query_params
from tests.e2e.saml_idp import raw_query
from tests.e2e.saml_idp import set_audience
from tests.e2e.saml_idp import set_destination
from tests.e2e.saml_idp import set_in_response_to
from tests.e2e.saml_idp import set_recipient
from tests.e2e.saml_idp import shift_validity
from tests.e2e.saml_idp import wrap_with_evil_assertion

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "saml"
IDP_URL = "http://127.0.0.1:9"  # never contacted: the IdP runs in-process here
SP_ENTITY_ID = "http://localhost/saml/acme/metadata"
ACS = "http://localhost/signin-acme"
SLO = "http://localhost/signout-acme"
ENTRA_EMAIL = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"
USERS = {
    "alice": {
        "name_id": "alice-0001",
        "attributes": {
            "email": ["alice@example.com"],
            "firstName": ["Alice"],
            "lastName": ["Liddell"],
            "groups": ["admins", "staff"],
        },
    },
    "entra": {
        "name_id": "eK9x-persistent-id",
        "attributes": {
            ENTRA_EMAIL: ["bob@contoso.example"],
            "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname": ["Bob"],
            "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname": ["Builder"],
            "http://schemas.microsoft.com/identity/claims/displayname": ["Bob the Builder"],
            "http://schemas.microsoft.com/identity/claims/objectidentifier": ["oid-42"],
        },
    },
    "mallory": {"name_id": "admin@x.evil", "name_id_format": "email", "attributes": {}},
    "transient": {"name_id": "_t8f7e6d5", "name_id_format": "transient", "attributes": {}},
}


@pytest.fixture
def config(database_url):
    return base_config(database_url)


@pytest.fixture(scope="module")
def core():
    idp = IdpCore(IDP_URL, users=USERS)
    yield idp
    idp.close()


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


def _make_provider(core: IdpCore, **settings) -> SsoProvider:
    account = Account(name="Acme", slug=f"acme-{secrets.token_hex(4)}")
    db.session.add(account)
    db.session.flush()
    provider = SsoProvider(
        account_id=account.id,
        protocol="saml",
        display_name="Acme SAML",
        scheme="acme",
        scheme_key="acme",
        **settings,
    )
    db.session.add(provider)
    db.session.flush()
    saml.apply_idp_metadata(provider, saml.parse_idp_metadata(core.metadata_xml()))
    db.session.flush()
    core.add_sp_metadata(saml.sp_metadata_xml(provider))
    return provider


@pytest.fixture
def provider(ctx, core):
    return _make_provider(core)


def _sign_in(core: IdpCore, provider: SsoProvider, user: str = "alice", **response_options):
    """SP-initiated: an AuthnRequest, pysaml2's answer, and the ACS form."""
    request = saml.begin_sign_in(provider, relay_state="r1")
    asked = core.parse_authn_request(query_params(request.url))
    xml = core.response_xml(
        user,
        sp_entity_id=asked["issuer"],
        acs=asked["acs"],
        in_response_to=asked["id"],
        **response_options,
    )
    return request, {"SAMLResponse": encode(xml), "RelayState": "r1"}


def _refused(provider, form, expected_ids, check, **kwargs) -> saml.SamlRefused:
    with pytest.raises(saml.SamlRefused) as caught:
        saml.complete_sign_in(provider, form, expected_request_ids=expected_ids, **kwargs)
    assert caught.value.check == check, (caught.value.check, caught.value.detail)
    return caught.value


# --- the happy path ------------------------------------------------------------------------
def test_sp_initiated_sign_in_returns_the_verified_identity(provider, core):
    request, form = _sign_in(core, provider)

    identity = saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])

    assert identity.subject == "alice-0001"
    assert identity.nameid_format == saml.NAMEID_PERSISTENT
    assert identity.in_response_to == request.request_id
    assert identity.session_index
    assert identity.email == "alice@example.com"
    assert (identity.given_name, identity.family_name) == ("Alice", "Liddell")
    assert identity.attributes["groups"] == ["admins", "staff"]
    assert identity.not_on_or_after > dt.datetime.now(dt.UTC)


def test_identity_from_gives_linking_the_subject_profile_and_cel_claims(provider, core):
    request, form = _sign_in(core, provider)
    identity = saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])

    external = saml.identity_from(provider, identity)

    assert external.subject == "alice-0001"
    assert external.email == "alice@example.com"
    assert external.email_verified is False  # SAML says nothing; the provider flag decides
    assert external.sid == identity.session_index
    # Single values unwrapped, several kept as a list: what CEL expressions read.
    assert external.claims == {
        "email": "alice@example.com",
        "firstName": "Alice",
        "lastName": "Liddell",
        "groups": ["admins", "staff"],
    }


def test_entra_claim_names_are_read_by_default(provider, core):
    request, form = _sign_in(core, provider, user="entra")

    identity = saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])

    assert identity.email == "bob@contoso.example"
    assert (identity.given_name, identity.family_name) == ("Bob", "Builder")
    assert identity.name == "Bob the Builder"


def test_configured_attribute_names_replace_the_defaults(provider, core):
    provider.saml_email_attribute = "groups"
    provider.saml_name_attribute = "firstName"
    request, form = _sign_in(core, provider)

    identity = saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])

    assert identity.email == "admins"
    assert identity.name == "Alice"


def test_signed_response_and_both_are_accepted_when_required(provider, core):
    for signed in ("response", "both"):
        provider.saml_signed = signed
        request, form = _sign_in(core, provider, sign=signed)

        identity = saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])

        assert identity.subject == "alice-0001"


# --- the AuthnRequest ----------------------------------------------------------------------
def test_authn_request_is_an_http_redirect_to_the_idp(provider, core):
    request = saml.begin_sign_in(provider, relay_state="state-1")

    assert request.url.startswith(f"{IDP_URL}/sso?SAMLRequest=")
    params = query_params(request.url)
    assert params["RelayState"] == "state-1"
    assert "Signature" not in params
    asked = core.parse_authn_request(params)
    assert asked["id"] == request.request_id
    assert asked["issuer"] == SP_ENTITY_ID
    assert asked["acs"] == ACS
    assert asked["destination"] == f"{IDP_URL}/sso"


def test_authn_request_is_signed_when_the_provider_signs_requests(provider, core):
    provider.saml_sign_requests = True
    saml.generate_sp_keypair(provider)
    core.add_sp_metadata(saml.sp_metadata_xml(provider))

    request = saml.begin_sign_in(provider, relay_state="s")

    params = query_params(request.url)
    assert params["SigAlg"] == "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    # pysaml2 verifies the query signature with the certificate from our SP metadata.
    assert core.parse_authn_request(params)["signed"] is True
    tampered = dict(params, RelayState="other")
    with pytest.raises(SamlIdpError):
        core.parse_authn_request(tampered)


def test_relay_state_longer_than_80_bytes_is_refused(provider):
    with pytest.raises(ValueError):
        saml.begin_sign_in(provider, relay_state="x" * 81)


# --- IdP-initiated -------------------------------------------------------------------------
def test_idp_initiated_sign_in_is_refused_by_default(provider, core):
    xml = core.response_xml("alice", sp_entity_id=SP_ENTITY_ID, acs=ACS, in_response_to=None)

    refusal = _refused(provider, {"SAMLResponse": encode(xml)}, [], "unsolicited")
    assert refusal.status == 403


def test_idp_initiated_sign_in_is_accepted_when_allowed(provider, core):
    provider.saml_allow_idp_initiated = True
    xml = core.response_xml("alice", sp_entity_id=SP_ENTITY_ID, acs=ACS, in_response_to=None)

    identity = saml.complete_sign_in(
        provider, {"SAMLResponse": encode(xml)}, expected_request_ids=[]
    )

    assert identity.subject == "alice-0001"
    assert identity.in_response_to is None


def test_answer_to_another_browsers_request_is_refused_even_with_idp_initiated_on(provider, core):
    provider.saml_allow_idp_initiated = True
    _request, form = _sign_in(core, provider)

    _refused(provider, form, ["ONELOGIN_someone_else"], "in_response_to")


def test_in_response_to_mismatch_is_refused(provider, core):
    request, _form = _sign_in(core, provider)
    xml = core.response_xml(
        "alice",
        sp_entity_id=SP_ENTITY_ID,
        acs=ACS,
        in_response_to=request.request_id,
        before_signing=set_in_response_to("ONELOGIN_forged"),
    )

    _refused(provider, {"SAMLResponse": encode(xml)}, [request.request_id], "in_response_to")


def test_unsigned_in_response_to_on_the_response_cannot_disagree_with_the_assertion(provider, core):
    request, _form = _sign_in(core, provider)
    # The Response element is not signed (assertion signing): an attacker can change it.
    xml = core.response_xml(
        "alice",
        sp_entity_id=SP_ENTITY_ID,
        acs=ACS,
        in_response_to="ONELOGIN_victims_request",
        after_signing=lambda root: root.set("InResponseTo", request.request_id),
    )

    # python3-saml already finds no SubjectConfirmation answering that InResponseTo.
    _refused(provider, {"SAMLResponse": encode(xml)}, [request.request_id], "subject_confirmation")


# --- negative cases ------------------------------------------------------------------------
def test_unsigned_assertion_is_refused(provider, core):
    request, form = _sign_in(core, provider, sign="none")

    refusal = _refused(provider, form, [request.request_id], "unsigned")
    assert refusal.status == 401


def test_signed_response_without_signed_assertion_is_refused_when_assertions_must_be_signed(
    provider, core
):
    request, form = _sign_in(core, provider, sign="response")

    _refused(provider, form, [request.request_id], "unsigned")


def test_signature_by_an_unknown_key_is_refused(provider, core):
    request, form = _sign_in(core, provider, key_pair=make_key_pair("not the IdP"))

    _refused(provider, form, [request.request_id], "signature")


def test_tampered_signed_assertion_is_refused(provider, core):
    def change_name_id(root):
        root.find("saml:Assertion/saml:Subject/saml:NameID", NS).text = "admin@example.com"

    request, form = _sign_in(core, provider, after_signing=change_name_id)

    _refused(provider, form, [request.request_id], "signature")


@pytest.mark.parametrize(
    "wrap",
    [
        wrap_with_evil_assertion(before=True),
        wrap_with_evil_assertion(before=False),
        wrap_with_evil_assertion(same_id=True),
        hide_signed_assertion_in_extensions(),
    ],
    ids=["evil-first", "evil-last", "evil-same-id", "signed-in-extensions"],
)
def test_signature_wrapping_is_refused(provider, core, wrap):
    request, form = _sign_in(core, provider, after_signing=wrap)

    refusal = _refused(provider, form, [request.request_id], "wrapping")
    assert "admin@example.com" not in refusal.message


def test_wrong_audience_is_refused(provider, core):
    request, form = _sign_in(
        core, provider, before_signing=set_audience("https://other-app.example/saml")
    )

    _refused(provider, form, [request.request_id], "audience")


def test_missing_audience_restriction_is_refused(provider, core):
    def drop_audience(root):
        conditions = root.find("saml:Assertion/saml:Conditions", NS)
        for restriction in conditions.findall("saml:AudienceRestriction", NS):
            conditions.remove(restriction)

    request, form = _sign_in(core, provider, before_signing=drop_audience)

    _refused(provider, form, [request.request_id], "audience")


def test_wrong_destination_is_refused(provider, core):
    request, form = _sign_in(
        core, provider, after_signing=set_destination("http://localhost/signin-acme-other")
    )

    _refused(provider, form, [request.request_id], "destination")


def test_missing_destination_is_refused(provider, core):
    request, form = _sign_in(
        core, provider, after_signing=lambda root: root.attrib.pop("Destination")
    )

    _refused(provider, form, [request.request_id], "destination")


def test_recipient_that_only_contains_the_acs_url_is_refused(provider, core):
    # python3-saml accepts any Recipient that contains our URL as a substring.
    request, form = _sign_in(
        core, provider, before_signing=set_recipient(f"https://evil.example/?next={ACS}")
    )

    _refused(provider, form, [request.request_id], "recipient")


def test_expired_assertion_is_refused(provider, core):
    request, form = _sign_in(
        core, provider, before_signing=shift_validity(issued=-dt.timedelta(minutes=20))
    )

    _refused(provider, form, [request.request_id], "expired")


def test_clock_skew_tolerance_is_bounded_by_saml_clock_skew(provider, core):
    # 60 s ahead: within SAML_CLOCK_SKEW (120 s by default).
    request, form = _sign_in(
        core, provider, before_signing=shift_validity(issued=dt.timedelta(seconds=60))
    )
    assert saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])

    # 200 s ahead: python3-saml's own 300 s drift would accept it, our skew does not.
    request, form = _sign_in(
        core, provider, before_signing=shift_validity(issued=dt.timedelta(seconds=200))
    )
    _refused(provider, form, [request.request_id], "not_yet_valid")


def test_now_moves_the_validity_window(provider, core):
    request, form = _sign_in(core, provider)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)

    _refused(provider, form, [request.request_id], "expired", now=later)


def test_sha1_signature_is_refused(provider, core):
    request, form = _sign_in(core, provider, algorithms=SHA1)

    _refused(provider, form, [request.request_id], "algorithm")


def test_comment_inside_name_id_cannot_shorten_the_subject(provider, core):
    # The IdP asserts "admin@x.evil"; the attacker inserts a comment after "admin@x" without
    # breaking the signature. The subject must stay the whole signed text.
    request, form = _sign_in(
        core, provider, user="mallory", after_signing=comment_in_name_id(len("admin@x"))
    )
    xml = base64.b64decode(form["SAMLResponse"]).decode()
    assert "admin@x<!---->.evil" in xml

    identity = saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])

    assert identity.subject == "admin@x.evil"


def test_transient_name_id_is_refused(provider, core):
    request, form = _sign_in(core, provider, user="transient")

    _refused(provider, form, [request.request_id], "name_id")


def test_idp_error_status_is_refused(provider, core):
    def fail(root):
        code = root.find("samlp:Status/samlp:StatusCode", NS)
        code.set("Value", "urn:oasis:names:tc:SAML:2.0:status:Responder")

    request, form = _sign_in(core, provider, sign="both", before_signing=fail)

    _refused(provider, form, [request.request_id], "status")


@pytest.mark.parametrize(
    "value",
    [
        "not base64 at all!",
        base64.b64encode(b"<not-xml").decode(),
        base64.b64encode(
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b"<samlp:Response xmlns:samlp='urn:oasis:names:tc:SAML:2.0:protocol'>&x;"
            b"</samlp:Response>"
        ).decode(),
    ],
    ids=["base64", "xml", "xxe"],
)
def test_malformed_answers_are_refused(provider, value):
    _refused(provider, {"SAMLResponse": value}, ["x"], "malformed")


def test_missing_saml_response_is_refused(provider):
    _refused(provider, {}, ["x"], "malformed")


def test_provider_without_certificates_is_not_configured(ctx):
    account = Account(name="Bare", slug="bare")
    db.session.add(account)
    db.session.flush()
    bare = SsoProvider(
        account_id=account.id,
        protocol="saml",
        display_name="Bare",
        scheme="bare",
        scheme_key="bare",
        saml_idp_entity_id="https://idp.example/",
        saml_sso_url="https://idp.example/sso",
    )
    db.session.add(bare)
    db.session.flush()

    with pytest.raises(saml.SamlRefused) as caught:
        saml.begin_sign_in(bare)

    assert (caught.value.check, caught.value.status) == ("configuration", 503)


# --- replay --------------------------------------------------------------------------------
def test_replayed_assertion_is_refused(provider, core, app):
    request, form = _sign_in(core, provider)
    saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])

    refusal = _refused(provider, form, [request.request_id], "replay")

    assert refusal.status == 400
    rows = db.session.scalar(select(func.count()).select_from(SamlAssertionId))
    # Redis keeps the replay cache when it is configured, else the database does.
    assert rows == (0 if app.config["REDIS_URL"] else 1)


def test_replay_is_refused_by_another_web_process(provider, core, make_app):
    request, form = _sign_in(core, provider)
    saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])
    provider_id = provider.id
    db.session.commit()

    other = make_app()
    with other.app_context():
        again = db.session.get(SsoProvider, provider_id)
        with pytest.raises(saml.SamlRefused) as caught:
            saml.complete_sign_in(again, form, expected_request_ids=[request.request_id])

    assert caught.value.check == "replay"


def test_database_replay_cache_forgets_expired_ids(make_app, core, monkeypatch):
    # The database replay cache only (REDIS_URL unset for this app), purged at this sign-in.
    monkeypatch.setattr(saml, "_next_purge", 0.0)
    app = make_app(REDIS_URL="")
    with app.app_context():
        provider = _make_provider(core)
        past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        db.session.add(SamlAssertionId(assertion_id_hash="0" * 64, expires_at=past))
        db.session.flush()
        request, form = _sign_in(core, provider)

        saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])

        hashes = db.session.scalars(select(SamlAssertionId.assertion_id_hash)).all()
        assert "0" * 64 not in hashes
        assert len(hashes) == 1
        db.session.rollback()


def test_database_replay_cache_on_sqlite_commits_at_once_on_postgresql_with_the_sign_in(
    make_app, core
):
    # SQLite's one write lock would otherwise be held from this row to the sign-in's commit,
    # making every concurrent sign-in wait; PostgreSQL locks only the row.
    app = make_app(REDIS_URL="")
    with app.app_context():
        provider = _make_provider(core)
        db.session.commit()  # the caller's transaction has written nothing yet
        request, form = _sign_in(core, provider)
        saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])
        sqlite = db.engine.dialect.name == "sqlite"
        db.session.rollback()  # the sign-in failed after the checks

        rows = db.session.scalar(select(func.count()).select_from(SamlAssertionId))
        assert rows == (1 if sqlite else 0)
        if sqlite:
            # Used is used: the same answer is refused even though its sign-in never committed.
            _refused(provider, form, [request.request_id], "replay")
        else:
            saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])
            db.session.commit()
            _refused(provider, form, [request.request_id], "replay")


def test_database_replay_cache_joins_a_sqlite_transaction_that_already_writes(make_app, core):
    # A second connection would wait for the caller's own write lock: the row goes into the
    # caller's transaction instead, and leaves with its rollback.
    app = make_app(REDIS_URL="")
    with app.app_context():
        provider = _make_provider(core)
        db.session.flush()  # the caller's transaction writes (on SQLite: holds the lock)
        request, form = _sign_in(core, provider)
        started = time.monotonic()
        saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])
        assert time.monotonic() - started < 5  # no wait for a lock that never comes free
        assert db.session.scalar(select(func.count()).select_from(SamlAssertionId)) == 1
        db.session.rollback()
        assert db.session.scalar(select(func.count()).select_from(SamlAssertionId)) == 0


# --- certificate rollover ------------------------------------------------------------------
def test_rollover_accepts_the_new_and_the_old_certificate_then_drops_the_old(ctx):
    idp = IdpCore(IDP_URL, users=USERS)
    try:
        provider = _make_provider(idp)
        old_key = idp.signing_key
        new_key = idp.rotate_certificate(keep_old=True)
        result = saml.apply_idp_metadata(provider, saml.parse_idp_metadata(idp.metadata_xml()))
        db.session.flush()
        assert len(result["added"]) == 1 and result["removed"] == []
        assert len(provider.certificates) == 2

        for pair in (new_key, old_key):
            request, form = _sign_in(idp, provider, key_pair=pair)
            assert saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])

        idp.rotate_certificate(keep_old=False)
        idp.key_pairs = [new_key]
        idp._server = None
        result = saml.apply_idp_metadata(provider, saml.parse_idp_metadata(idp.metadata_xml()))
        db.session.flush()
        assert len(result["removed"]) == 1
        request, form = _sign_in(idp, provider, key_pair=old_key)
        _refused(provider, form, [request.request_id], "signature")
    finally:
        idp.close()


# --- metadata ------------------------------------------------------------------------------
def test_entra_metadata_is_parsed_with_both_rollover_certificates(ctx):
    metadata = saml.parse_idp_metadata((FIXTURES / "entra_metadata.xml").read_text())

    tenant = "9188040d-6c67-4c5b-b112-36a304b66dad"
    assert metadata.entity_id == f"https://sts.windows.net/{tenant}/"
    assert metadata.sso_url == f"https://login.microsoftonline.com/{tenant}/saml2"
    assert metadata.slo_url == f"https://login.microsoftonline.com/{tenant}/saml2"
    assert len(metadata.certificates) == 2
    assert all(pem.startswith("-----BEGIN CERTIFICATE-----") for pem in metadata.certificates)


def test_okta_metadata_uses_the_redirect_binding_and_has_no_slo(ctx):
    metadata = saml.parse_idp_metadata((FIXTURES / "okta_metadata.xml").read_text())

    assert metadata.entity_id == "http://www.okta.com/exk1a2b3c4d5e6f7g8h9"
    assert metadata.sso_url.endswith("/sso/saml")
    assert metadata.slo_url is None
    assert len(metadata.certificates) == 1
    assert metadata.nameid_formats == [
        "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
        "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
    ]


def test_applied_metadata_records_each_certificate_and_its_expiry(ctx, provider):
    metadata = saml.parse_idp_metadata((FIXTURES / "entra_metadata.xml").read_text())

    saml.apply_idp_metadata(provider, metadata)
    db.session.flush()

    rows = db.session.scalars(
        select(ProviderCertificate).where(ProviderCertificate.provider_id == provider.id)
    ).all()
    assert len(rows) == 2
    assert {row.use for row in rows} == {"signing"}
    assert all(row.not_after > dt.datetime.now(dt.UTC) + dt.timedelta(days=365) for row in rows)
    assert all(len(row.fingerprint_sha256) == 64 for row in rows)
    assert provider.saml_idp_entity_id == metadata.entity_id
    assert provider.saml_metadata_xml == metadata.xml


def test_metadata_with_an_external_entity_is_refused(ctx):
    with pytest.raises(ValidationError) as caught:
        saml.parse_idp_metadata((FIXTURES / "xxe_metadata.xml").read_text())

    assert "root:" not in caught.value.message


@pytest.mark.parametrize(
    "document, message",
    [
        (
            "<md:EntityDescriptor xmlns:md='urn:oasis:names:tc:SAML:2.0:metadata' entityID='x'/>",
            "no SAML identity provider",
        ),
        (
            (FIXTURES / "okta_metadata.xml").read_text().replace("HTTP-Redirect", "HTTP-Artifact"),
            "HTTP-Redirect",
        ),
        (
            (FIXTURES / "okta_metadata.xml")
            .read_text()
            .replace('use="signing"', 'use="encryption"'),
            "no signing certificate",
        ),
    ],
    ids=["not-an-idp", "no-redirect-sso", "no-signing-certificate"],
)
def test_unusable_metadata_is_refused(ctx, document, message):
    with pytest.raises(ValidationError) as caught:
        saml.parse_idp_metadata(document)

    assert message in caught.value.message


def test_one_idp_is_picked_from_an_entities_descriptor(ctx, core):
    okta = (FIXTURES / "okta_metadata.xml").read_text().split("?>", 1)[1]
    ours = core.metadata_xml().split("?>", 1)[1]
    bundle = (
        "<md:EntitiesDescriptor xmlns:md='urn:oasis:names:tc:SAML:2.0:metadata'>"
        f"{okta}{ours}</md:EntitiesDescriptor>"
    )

    metadata = saml.parse_idp_metadata(bundle, entity_id=core.entity_id)

    assert metadata.entity_id == core.entity_id


def test_metadata_is_fetched_through_the_outbound_fetcher(ctx, core, monkeypatch):
    seen = []

    def fake_fetch(url, **kwargs):
        seen.append(url)
        return outbound.OutboundResponse(200, {}, core.metadata_xml().encode(), url)

    monkeypatch.setattr(outbound, "fetch", fake_fetch)

    metadata = saml.fetch_idp_metadata("https://idp.example.com/metadata")

    assert seen == ["https://idp.example.com/metadata"]
    assert metadata.entity_id == core.entity_id


def test_metadata_fetch_refuses_private_addresses(ctx):
    with pytest.raises(outbound.OutboundRefused):
        saml.fetch_idp_metadata("http://127.0.0.1:9/metadata")


# --- SP metadata and URLs ------------------------------------------------------------------
def test_sp_metadata_names_the_entity_acs_slo_and_nameid_formats(provider):
    xml = saml.sp_metadata_xml(provider)
    root = etree.fromstring(xml.encode())

    assert root.get("entityID") == SP_ENTITY_ID
    sp = root.find("md:SPSSODescriptor", NS)
    assert sp.get("WantAssertionsSigned") == "true"
    assert sp.get("AuthnRequestsSigned") == "false"
    acs = sp.find("md:AssertionConsumerService", NS)
    assert (acs.get("Binding"), acs.get("Location")) == (saml.BINDING_POST, ACS)
    slo = sp.find("md:SingleLogoutService", NS)
    assert (slo.get("Binding"), slo.get("Location")) == (saml.BINDING_REDIRECT, SLO)
    formats = [node.text for node in sp.findall("md:NameIDFormat", NS)]
    assert formats[0] == saml.NAMEID_PERSISTENT
    assert sp.find("md:KeyDescriptor", NS) is None
    _assert_schema_valid(root)


def test_sp_metadata_carries_the_signing_certificate_when_requests_are_signed(provider):
    provider.saml_sign_requests = True
    provider.saml_nameid_format = saml.NAMEID_EMAIL
    cert = saml.generate_sp_keypair(provider)

    root = etree.fromstring(saml.sp_metadata_xml(provider).encode())

    sp = root.find("md:SPSSODescriptor", NS)
    assert sp.get("AuthnRequestsSigned") == "true"
    published = sp.find("md:KeyDescriptor/ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS).text
    assert published in cert.replace("\n", "")
    assert [node.text for node in sp.findall("md:NameIDFormat", NS)] == [saml.NAMEID_EMAIL]
    assert "PRIVATE KEY" not in saml.sp_metadata_xml(provider)
    assert provider.saml_sp_key_encrypted and "PRIVATE" not in provider.saml_sp_key_encrypted
    _assert_schema_valid(root)


def _assert_schema_valid(root):
    from onelogin.saml2.xml_utils import OneLogin_Saml2_XML

    assert not isinstance(
        OneLogin_Saml2_XML.validate_xml(root, "saml-schema-metadata-2.0.xsd"), str
    )


@pytest.mark.parametrize(
    "public_url", ["https://sso.example.com", "https://sso.example.com:8443/keyward"]
)
def test_urls_come_from_public_url(make_app, core, public_url):
    app = make_app(PUBLIC_URL=public_url)
    with app.app_context():
        provider = _make_provider(core)
        assert saml.acs_url(provider) == f"{public_url}/signin-acme"
        assert saml.sp_entity_id(provider) == f"{public_url}/saml/acme/metadata"
        request, form = _sign_in(core, provider)
        assert saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])
        db.session.rollback()


def test_destination_is_compared_with_public_url_not_the_host_header(provider, core, app):
    request, form = _sign_in(core, provider)
    # A request that arrives with another Host changes nothing: the ACS URL is PUBLIC_URL's.
    with app.test_request_context("/signin-acme", method="POST", headers={"Host": "evil.example"}):
        assert saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])

    # And a response addressed to that Host is refused even when it arrives there.
    evil_acs = "http://evil.example/signin-acme"
    xml = core.response_xml(
        "alice",
        sp_entity_id=SP_ENTITY_ID,
        acs=evil_acs,
        in_response_to=request.request_id,
    )
    with app.test_request_context("/signin-acme", method="POST", headers={"Host": "evil.example"}):
        _refused(provider, {"SAMLResponse": encode(xml)}, [request.request_id], "destination")


def test_renamed_scheme_alias_builds_its_own_urls(provider, core):
    core.add_sp_metadata(saml.sp_metadata_xml(provider, scheme="old-acme"))
    request = saml.begin_sign_in(provider, scheme="old-acme")
    asked = core.parse_authn_request(query_params(request.url))
    assert asked["acs"] == "http://localhost/signin-old-acme"
    xml = core.response_xml(
        "alice", sp_entity_id=asked["issuer"], acs=asked["acs"], in_response_to=asked["id"]
    )

    identity = saml.complete_sign_in(
        provider,
        {"SAMLResponse": encode(xml)},
        expected_request_ids=[request.request_id],
        scheme="old-acme",
    )

    assert identity.subject == "alice-0001"


# --- single logout -------------------------------------------------------------------------
def _signed_in(core, provider):
    request, form = _sign_in(core, provider)
    return saml.complete_sign_in(provider, form, expected_request_ids=[request.request_id])


def test_sp_initiated_logout_round_trip(provider, core):
    identity = _signed_in(core, provider)

    url, request_id = saml.logout_request_url(
        provider,
        name_id=identity.subject,
        session_index=identity.session_index,
        relay_state="bye",
        name_id_format=identity.nameid_format,
    )

    assert url.startswith(f"{IDP_URL}/slo?SAMLRequest=")
    asked, response_url = core.logout_response_url(query_params(url))
    assert asked["id"] == request_id
    assert asked["name_id"] == "alice-0001"
    assert asked["session_indexes"] == [identity.session_index]
    assert response_url.startswith(f"{SLO}?SAMLResponse=")
    assert saml.handle_logout_response(provider, raw_query(response_url), [request_id]) == "bye"


def test_logout_response_to_another_request_is_refused(provider, core):
    identity = _signed_in(core, provider)
    url, _request_id = saml.logout_request_url(
        provider, name_id=identity.subject, session_index=identity.session_index
    )
    _asked, response_url = core.logout_response_url(query_params(url))

    with pytest.raises(saml.SamlRefused) as caught:
        saml.handle_logout_response(provider, raw_query(response_url), ["ONELOGIN_other"])

    assert caught.value.check == "in_response_to"


def test_no_logout_url_without_an_idp_slo_endpoint(provider):
    provider.saml_slo_url = None

    assert saml.logout_request_url(provider, name_id="a", session_index=None) is None


def test_idp_initiated_logout_request_names_the_sessions_and_is_answered(provider, core):
    identity = _signed_in(core, provider)
    url, request_id = core.logout_request_url(
        "alice", identity.session_index, sp_entity_id=SP_ENTITY_ID, relay_state="rs"
    )
    assert url.startswith(f"{SLO}?SAMLRequest=")

    target, response_url = saml.handle_idp_logout_request(provider, raw_query(url))

    assert target.name_id == "alice-0001"
    assert target.session_indexes == [identity.session_index]
    assert response_url.startswith(f"{IDP_URL}/slo?SAMLResponse=")
    params = query_params(response_url)
    assert params["RelayState"] == "rs"
    xml = zlib.decompress(base64.b64decode(params["SAMLResponse"]), -15)
    answer = etree.fromstring(xml)
    assert answer.get("InResponseTo") == request_id
    assert answer.get("Destination") == f"{IDP_URL}/slo"
    status = answer.find("samlp:Status/samlp:StatusCode", NS).get("Value")
    assert status == "urn:oasis:names:tc:SAML:2.0:status:Success"


def test_idp_logout_request_is_also_accepted_as_a_mapping(provider, core):
    url, _id = core.logout_request_url("alice", None, sp_entity_id=SP_ENTITY_ID)

    target, _response_url = saml.handle_idp_logout_request(provider, query_params(url))

    assert (target.name_id, target.session_indexes) == ("alice-0001", [])


@pytest.mark.parametrize(
    "options, check",
    [
        ({"sign": False}, "unsigned"),
        ({"algorithm": SHA1[0]}, "algorithm"),
        ({"destination": "http://localhost/signout-other"}, "destination"),
    ],
    ids=["unsigned", "sha1", "wrong-destination"],
)
def test_bad_idp_logout_requests_are_refused(provider, core, options, check):
    url, _id = core.logout_request_url("alice", None, sp_entity_id=SP_ENTITY_ID, **options)
    if "destination" in options:
        # Delivered to our real SLO URL although addressed elsewhere.
        url = SLO + "?" + urlsplit(url).query

    with pytest.raises(saml.SamlRefused) as caught:
        saml.handle_idp_logout_request(provider, raw_query(url))

    assert caught.value.check == check


def test_idp_logout_request_signed_by_an_unknown_key_is_refused(provider, core):
    impostor = IdpCore(IDP_URL, users=USERS)
    try:
        impostor.add_sp_metadata(saml.sp_metadata_xml(provider))
        url, _id = impostor.logout_request_url("alice", None, sp_entity_id=SP_ENTITY_ID)

        with pytest.raises(saml.SamlRefused) as caught:
            saml.handle_idp_logout_request(provider, raw_query(url))

        assert caught.value.check == "signature"
    finally:
        impostor.close()


def test_replayed_idp_logout_request_is_refused(provider, core):
    url, _id = core.logout_request_url("alice", None, sp_entity_id=SP_ENTITY_ID)
    saml.handle_idp_logout_request(provider, raw_query(url))

    with pytest.raises(saml.SamlRefused) as caught:
        saml.handle_idp_logout_request(provider, raw_query(url))

    assert caught.value.check == "replay"


def test_stale_idp_logout_request_is_refused(provider, core):
    url, _id = core.logout_request_url("alice", None, sp_entity_id=SP_ENTITY_ID)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)

    with pytest.raises(saml.SamlRefused) as caught:
        saml.handle_idp_logout_request(provider, raw_query(url), now=later)

    assert caught.value.check == "expired"


def test_deflate_bomb_is_refused(provider):
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = bomb.compress(b"<" + b"a" * (20 * 1024 * 1024)) + bomb.flush()
    query = "SAMLRequest=" + base64.b64encode(data).decode().replace("+", "%2B").replace(
        "/", "%2F"
    ).replace("=", "%3D")

    with pytest.raises(saml.SamlRefused) as caught:
        saml.handle_idp_logout_request(provider, query)

    assert caught.value.check == "malformed"
