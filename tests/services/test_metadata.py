"""Provider metadata: validation of what the IdP publishes, and concurrent first fetches."""

from __future__ import annotations

import json

import pytest

from app.extensions import db
from app.models import ProviderMetadata
from app.models import SsoProvider
from app.services import metadata
from app.services import outbound
from app.services import providers
from app.services.providers import ProviderFields

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
