"""Provider metadata: validation of what the IdP publishes, and concurrent first fetches."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.extensions import db
from app.models import ProviderMetadata
from app.models import SsoProvider
from app.models.base import utcnow
from app.services import metadata
from app.services import outbound
from app.services import providers
from app.services.providers import ProviderFields
from tests.helpers import audit_actions

ISSUER = "https://idp.example.com"
JWKS = {"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}


def _doc(**changes):
    return {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/a",
        "token_endpoint": f"{ISSUER}/t",
        "jwks_uri": f"{ISSUER}/jwks",
        **changes,
    }


@pytest.fixture
def provider_id(app, make_account, monkeypatch):
    monkeypatch.setattr(outbound, "check_url", lambda url: None)
    account = make_account()
    with app.app_context():
        from app.services import accounts

        row = providers.create_provider(
            ProviderFields(display_name="IdP", scheme="Idp", authority=ISSUER, client_id="c"),
            account=accounts.get_account(account.id),
        )
        db.session.commit()
        return row.id


def _serve(monkeypatch, discovery, jwks=JWKS, calls=None):
    def fake_fetch(url, **_):
        if calls is not None:
            calls.append(url)
        body = discovery if url.endswith("openid-configuration") else jwks
        headers = {"Cache-Control": "max-age=600"}
        return outbound.OutboundResponse(200, headers, json.dumps(body).encode(), url)

    monkeypatch.setattr(outbound, "fetch", fake_fetch)


@pytest.mark.parametrize(
    "discovery,jwks,error",
    [
        (_doc(issuer="https://other.example.com"), JWKS, "another issuer"),
        (_doc(jwks_uri=None), JWKS, "no jwks_uri"),
        (_doc(), {"keys": "nope"}, "not a JSON Web Key Set"),
        (_doc(), {"keys": [{"kty": "RSA", "n": "x", "e": "y", "d": "secret"}]}, "private"),
        (_doc(), {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "symmetric"),
    ],
)
def test_bad_metadata_is_refused_and_the_last_good_copy_kept(
    app, provider_id, monkeypatch, discovery, jwks, error
):
    _serve(monkeypatch, _doc())
    with app.app_context():
        row = db.session.get(SsoProvider, provider_id)
        assert metadata.refresh_provider_metadata(row).ok
        db.session.commit()
        _serve(monkeypatch, discovery, jwks)
        outcome = metadata.refresh_provider_metadata(row)
        db.session.commit()
        assert not outcome.ok and error in outcome.error
        record = db.session.get(ProviderMetadata, provider_id)
        assert record.jwks == JWKS and record.last_error == outcome.error
        assert record.key_ids == ["k1"]


def test_microsoft_multi_tenant_issuer_template_matches_common():
    assert metadata.issuer_matches(
        "https://login.microsoftonline.com/common/v2.0",
        "https://login.microsoftonline.com/{tenantid}/v2.0",
    )
    assert not metadata.issuer_matches(
        "https://login.microsoftonline.com/common/v2.0", "https://evil.example/{tenantid}/v2.0"
    )
    assert metadata.issuer_matches("https://a.example/", "https://a.example")


def test_concurrent_first_fetches_do_not_fail(app, make_app, provider_id, monkeypatch):
    """Two processes' first sign-ins both fetch; the second insert loses the race cleanly."""
    calls = []
    _serve(monkeypatch, _doc(), calls=calls)
    other = make_app()
    with app.app_context():
        mine = db.session.get(SsoProvider, provider_id)
        assert mine.metadata_record is None
        # The other process stores its copy between our read and our insert.
        with other.app_context():
            theirs = db.session.get(SsoProvider, provider_id)
            metadata.refresh_provider_metadata(theirs)
            db.session.commit()
        keys = metadata.provider_keys(mine)
        assert keys.discovery["issuer"] == ISSUER and keys.jwks == JWKS


# --- refresh timing, backoff and health ------------------------------------------------------
def _serve_answers(monkeypatch, answers, calls=None):
    """Serve (status, headers, body) for discovery and JWKS URLs from ``answers``, a dict
    keyed by "discovery"/"jwks" (defaults: the good documents, no headers)."""

    def fake_fetch(url, **_):
        kind = "discovery" if url.endswith("openid-configuration") else "jwks"
        if calls is not None:
            calls.append(kind)
        status, headers, body = answers.get(kind) or (
            200,
            {},
            _doc() if kind == "discovery" else JWKS,
        )
        return outbound.OutboundResponse(status, headers, json.dumps(body).encode(), url)

    monkeypatch.setattr(outbound, "fetch", fake_fetch)


def _refresh(app, provider_id):
    with app.app_context():
        outcome = metadata.refresh_provider_metadata(db.session.get(SsoProvider, provider_id))
        db.session.commit()
        record = db.session.get(ProviderMetadata, provider_id)
        db.session.expunge(record)
        return outcome, record


@pytest.mark.parametrize(
    "discovery_headers,jwks_headers,seconds",
    [
        ({"Cache-Control": "max-age=600"}, {"Cache-Control": "public, max-age=7200"}, 600),
        ({"Cache-Control": "max-age=10"}, {}, 300),  # never below METADATA_REFRESH_MIN_SECONDS
        ({"Cache-Control": "max-age=31536000"}, {"Cache-Control": "max-age=31536000"}, 86400),
        ({}, {}, 3600),  # no max-age: METADATA_REFRESH_DEFAULT_SECONDS
        ({"Cache-Control": "no-store"}, {}, 300),
        ({"Cache-Control": 'private, max-age="900"'}, {"Cache-Control": "max-age=1200"}, 900),
    ],
)
def test_refresh_is_due_after_max_age_within_bounds(
    app, provider_id, monkeypatch, discovery_headers, jwks_headers, seconds
):
    _serve_answers(
        monkeypatch,
        {"discovery": (200, discovery_headers, _doc()), "jwks": (200, jwks_headers, JWKS)},
    )
    outcome, record = _refresh(app, provider_id)
    assert outcome.ok
    assert record.next_refresh_at - record.fetched_at == timedelta(seconds=seconds)
    assert record.expires_at == record.next_refresh_at and record.failure_count == 0


def test_bounds_and_default_come_from_the_settings(app, provider_id, monkeypatch):
    app.config.update(
        METADATA_REFRESH_MIN_SECONDS=60,
        METADATA_REFRESH_MAX_SECONDS=120,
        METADATA_REFRESH_DEFAULT_SECONDS=90,
    )
    _serve_answers(monkeypatch, {})
    _, record = _refresh(app, provider_id)
    assert record.next_refresh_at - record.fetched_at == timedelta(seconds=90)
    _serve_answers(monkeypatch, {"jwks": (200, {"Cache-Control": "max-age=5"}, JWKS)})
    _, record = _refresh(app, provider_id)
    assert record.next_refresh_at - record.fetched_at == timedelta(seconds=60)


def test_failures_back_off_exponentially_and_a_success_resets(app, provider_id, monkeypatch):
    _serve_answers(monkeypatch, {})
    _, good = _refresh(app, provider_id)
    _serve_answers(monkeypatch, {"jwks": (503, {}, {"error": "down"})})
    waits = []
    for _ in range(8):
        outcome, record = _refresh(app, provider_id)
        assert not outcome.ok and record.last_error == "the JWKS answered HTTP 503"
        waits.append(int((record.next_refresh_at - record.last_error_at).total_seconds()))
    # METADATA_REFRESH_BACKOFF_SECONDS (60) doubled per failure, capped at 3600.
    assert waits == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert record.failure_count == 8
    assert record.jwks == good.jwks and record.last_success_at == good.last_success_at

    _serve_answers(monkeypatch, {})
    outcome, record = _refresh(app, provider_id)
    assert outcome.ok and record.failure_count == 0 and record.last_error is None
    assert record.last_error_at is not None  # kept: when it last went wrong


def _x5c(days: int) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after((now + timedelta(days=days)).replace(microsecond=0))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def _not_after(x5c: str) -> datetime:
    return x509.load_der_x509_certificate(base64.b64decode(x5c)).not_valid_after_utc


def test_cert_expiry_is_the_earliest_signing_certificate_in_the_jwks(app, provider_id, monkeypatch):
    soon, later, encryption = _x5c(20), _x5c(400), _x5c(5)
    jwks = {
        "keys": [
            {"kty": "EC", "kid": "a", "x5c": [later, soon]},  # the leaf comes first
            {"kty": "EC", "kid": "b", "x5c": [soon]},
            {"kty": "EC", "kid": "enc", "use": "enc", "x5c": [encryption]},
            {"kty": "EC", "kid": "junk", "x5c": ["not base64!"]},
            {"kty": "EC", "kid": "plain"},
        ]
    }
    _serve_answers(monkeypatch, {"jwks": (200, {}, jwks)})
    outcome, record = _refresh(app, provider_id)
    assert outcome.ok
    assert record.cert_expiry == _not_after(soon)
    assert record.key_ids == ["a", "b", "enc", "junk", "plain"]
    assert record.cert_expiry_status == "soon"
    with app.app_context():
        health = providers.serialise(db.session.get(SsoProvider, provider_id))["health"]
    assert health["cert_expiry"] == _not_after(soon).isoformat()
    assert health["key_ids"] == ["a", "b", "enc", "junk", "plain"]


def test_cert_expiry_status_warns_from_thirty_days_before():
    now = utcnow()
    assert ProviderMetadata(cert_expiry=None).cert_expiry_status is None
    assert ProviderMetadata(cert_expiry=now - timedelta(minutes=1)).cert_expiry_status == "expired"
    assert ProviderMetadata(cert_expiry=now + timedelta(days=29)).cert_expiry_status == "soon"
    assert ProviderMetadata(cert_expiry=now + timedelta(days=31)).cert_expiry_status == "ok"


def test_unknown_kid_refresh_updates_key_ids_and_cert_expiry(app, provider_id, monkeypatch):
    _serve_answers(monkeypatch, {})
    _refresh(app, provider_id)
    rotated = _x5c(90)
    new_jwks = {"keys": [{"kty": "EC", "kid": "k2", "x5c": [rotated]}]}
    _serve_answers(monkeypatch, {"jwks": (200, {}, new_jwks)})
    with app.app_context():
        provider = db.session.get(SsoProvider, provider_id)
        keys = metadata.refresh_jwks_for_unknown_kid(provider, metadata.provider_keys(provider))
        assert keys.jwks == new_jwks
        record = db.session.get(ProviderMetadata, provider_id)
        assert record.key_ids == ["k2"] and record.cert_expiry == _not_after(rotated)


def _row(account_id, scheme, **values) -> SsoProvider:
    row = SsoProvider(
        account_id=account_id,
        display_name=scheme,
        scheme=scheme,
        scheme_key=scheme.lower(),
        authority=ISSUER,
        client_id="c",
        **values,
    )
    db.session.add(row)
    return row


def test_due_providers_are_the_enabled_ones_never_refreshed_or_past_their_time(app, make_account):
    account = make_account()
    now = utcnow()
    with app.app_context():
        never = _row(account.id, "Never")
        past = _row(account.id, "Past")
        future = _row(account.id, "Future")
        _row(account.id, "Disabled", enabled=False)
        _row(account.id, "Plain", protocol="oauth2")
        _row(account.id, "SamlPasted", protocol="saml")
        saml = _row(account.id, "SamlUrl", protocol="saml", saml_metadata_url=f"{ISSUER}/md")
        unset = _row(account.id, "Unset")
        db.session.flush()
        db.session.add_all(
            [
                ProviderMetadata(provider_id=past.id, next_refresh_at=now - timedelta(seconds=1)),
                ProviderMetadata(provider_id=future.id, next_refresh_at=now + timedelta(hours=1)),
                ProviderMetadata(provider_id=unset.id),  # rows from before migration 0006
            ]
        )
        db.session.commit()
        expected = sorted([never.id, past.id, saml.id, unset.id])

        assert metadata.due_provider_ids(now) == expected
        assert metadata.due_provider_ids(now + timedelta(hours=2)) == sorted([*expected, future.id])


def test_refresh_if_needed_refreshes_only_what_needs_it(app, provider_id, monkeypatch):
    calls = []
    _serve_answers(monkeypatch, {}, calls=calls)
    with app.app_context():
        assert metadata.refresh_if_needed(uuid.uuid4()) == "missing"
        assert metadata.refresh_if_needed(provider_id) == "refreshed"
        db.session.commit()
        assert metadata.refresh_if_needed(provider_id) == "not_due"
        # Asked for before the last refresh started: that refresh already answers it.
        assert metadata.refresh_if_needed(provider_id, requested_at=utcnow() - timedelta(1)) == (
            "fresh"
        )
        assert metadata.refresh_if_needed(provider_id, requested_at=utcnow()) == "refreshed"
        db.session.commit()
    assert calls == ["discovery", "jwks", "discovery", "jwks"]


# --- SAML -------------------------------------------------------------------------------------
def _idp_metadata(entity_id: str, *certs: str) -> str:
    keys = "".join(
        '<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data>'
        f"<ds:X509Certificate>{cert}</ds:X509Certificate>"
        "</ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        for cert in certs
    )
    return (
        '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
        f'xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="{entity_id}">'
        '<md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
        f"{keys}"
        '<md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" '
        f'Location="{entity_id}/sso"/>'
        "</md:IDPSSODescriptor></md:EntityDescriptor>"
    )


def test_saml_metadata_refresh_applies_the_certificates_and_records_health(
    app, make_account, monkeypatch
):
    url = f"{ISSUER}/saml/metadata"
    first, second = _x5c(300), _x5c(25)
    served = {"status": 200, "body": _idp_metadata(ISSUER, first)}

    def fake_fetch(fetched, **_):
        assert fetched == url
        headers = {"Cache-Control": "max-age=1800"}
        return outbound.OutboundResponse(served["status"], headers, served["body"].encode(), url)

    monkeypatch.setattr(outbound, "fetch", fake_fetch)
    account = make_account()
    with app.app_context():
        row = _row(account.id, "Saml", protocol="saml", saml_metadata_url=url)
        db.session.commit()
        provider_id = row.id

    outcome, record = _refresh(app, provider_id)
    assert outcome.ok and record.cert_expiry == _not_after(first)
    assert audit_actions(app)[-1] == "provider.certificates.updated"
    assert record.next_refresh_at - record.fetched_at == timedelta(seconds=1800)
    assert record.discovery is None and record.jwks is None

    # The IdP rolls over: the new certificate is published next to the old one.
    served["body"] = _idp_metadata(ISSUER, first, second)
    _, record = _refresh(app, provider_id)
    assert record.cert_expiry == _not_after(second) and record.cert_expiry_status == "soon"
    with app.app_context():
        provider = db.session.get(SsoProvider, provider_id)
        assert provider.saml_sso_url == f"{ISSUER}/sso"
        fingerprints = sorted(c.fingerprint_sha256 for c in provider.certificates)
        assert record.key_ids == [fp[:16] for fp in fingerprints]
        assert providers.serialise(provider)["health"]["cert_expiry"] == (
            _not_after(second).isoformat()
        )

    # Down: the certificates stay as they were (sign-ins go on), the error is recorded.
    served["status"] = 503
    outcome, record = _refresh(app, provider_id)
    assert not outcome.ok and record.failure_count == 1
    with app.app_context():
        assert len(db.session.get(SsoProvider, provider_id).certificates) == 2
