"""services.oidc with the network stubbed: client authentication, userinfo sub, hybrid rules."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from app.extensions import db
from app.models import ProviderMetadata
from app.models import SsoProvider
from app.services import oidc
from app.services import outbound
from app.services import providers
from app.services.providers import ProviderFields
from tests.conftest import base_config

ISSUER = "https://idp.example.com"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"}, private=True)


@pytest.fixture
def config(database_url):
    return base_config(database_url)


def _discovery(**extra):
    return {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "userinfo_endpoint": f"{ISSUER}/userinfo",
        "jwks_uri": f"{ISSUER}/jwks",
        **extra,
    }


@pytest.fixture
def provider(app, make_account, monkeypatch):
    monkeypatch.setattr(outbound, "check_url", lambda url: None)
    account = make_account()

    def _make(response_type="code", discovery=None):
        with app.app_context():
            from app.services import accounts

            row = providers.create_provider(
                ProviderFields(
                    display_name="IdP",
                    scheme="Idp",
                    authority=ISSUER,
                    client_id="kw:client",
                    client_secret="s%cret+1",
                    response_type=response_type,
                ),
                account=accounts.get_account(account.id),
            )
            db.session.add(
                ProviderMetadata(
                    provider=row,
                    discovery=discovery or _discovery(),
                    jwks={"keys": [KEY.as_dict(private=False)]},
                )
            )
            db.session.commit()
            return row.id

    return _make


def _id_token(nonce, **claims):
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": "kw:client",
        "sub": "user-1",
        "iat": now,
        "exp": now + 300,
        "nonce": nonce,
        **claims,
    }
    return jwt.encode({"alg": "RS256", "kid": "k1"}, payload, KEY)


class FakeIdp:
    """Answers outbound.fetch like an IdP would, and records the requests."""

    def __init__(self, userinfo_sub="user-1"):
        self.calls = []
        self.userinfo_sub = userinfo_sub
        self.nonce = None

    def __call__(self, url, *, method="GET", headers=None, data=None, basic_auth=None, **_):
        self.calls.append({"url": url, "method": method, "data": data, "basic_auth": basic_auth})
        if url.endswith("/token"):
            body = {
                "access_token": "at-1",
                "token_type": "Bearer",
                "id_token": _id_token(self.nonce, at_hash=_half("at-1")),
            }
        elif url.endswith("/userinfo"):
            body = {"sub": self.userinfo_sub, "email": "u@example.com", "groups": ["g"]}
        else:
            raise AssertionError(f"unexpected fetch {url}")
        return outbound.OutboundResponse(200, {}, json.dumps(body).encode(), url)


def _half(value):
    digest = hashlib.sha256(value.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def _run_code_flow(app, provider_id, fake, monkeypatch):
    monkeypatch.setattr(outbound, "fetch", fake)
    with app.test_request_context():
        provider = db.session.get(SsoProvider, provider_id)
        request = oidc.begin(provider)
        fake.nonce = request.flow["nonce"]
        return oidc.complete(provider, {"code": "c-1", "state": request.state}, request.flow)


def test_code_flow_uses_basic_auth_with_form_encoded_credentials(app, provider, monkeypatch):
    fake = FakeIdp()
    result = _run_code_flow(app, provider(), fake, monkeypatch)
    assert result.identity.subject == "user-1"
    assert result.identity.claims["groups"] == ["g"]  # merged from userinfo
    token_call = fake.calls[0]
    # RFC 6749 §2.3.1: id and secret form-encoded before Basic.
    assert token_call["basic_auth"] == ("kw%3Aclient", "s%25cret%2B1")
    assert "client_secret" not in token_call["data"]
    assert token_call["data"]["code_verifier"] and token_call["data"]["grant_type"] == (
        "authorization_code"
    )


def test_client_secret_post_when_discovery_advertises_only_that(app, provider, monkeypatch):
    fake = FakeIdp()
    provider_id = provider(
        discovery=_discovery(token_endpoint_auth_methods_supported=["client_secret_post"])
    )
    _run_code_flow(app, provider_id, fake, monkeypatch)
    token_call = fake.calls[0]
    assert token_call["basic_auth"] is None
    assert token_call["data"]["client_secret"] == "s%cret+1"
    assert token_call["data"]["client_id"] == "kw:client"


def test_userinfo_sub_must_equal_the_id_tokens(app, provider, monkeypatch):
    with pytest.raises(oidc.SignInFailed) as failure:
        _run_code_flow(app, provider(), FakeIdp(userinfo_sub="someone-else"), monkeypatch)
    assert failure.value.check == "userinfo.sub"


def test_authorization_url_for_form_post_flows(app, provider):
    provider_id = provider(response_type="code id_token")
    with app.test_request_context():
        request = oidc.begin(db.session.get(SsoProvider, provider_id))
    query = parse_qs(urlsplit(request.url).query)
    assert query["response_mode"] == ["form_post"]
    assert query["response_type"] == ["code id_token"]
    assert query["code_challenge_method"] == ["S256"] and query["nonce"]


def test_expired_flow_is_refused_before_any_call(app, provider, monkeypatch):
    fake = FakeIdp()
    monkeypatch.setattr(outbound, "fetch", fake)
    provider_id = provider()
    with app.test_request_context():
        row = db.session.get(SsoProvider, provider_id)
        request = oidc.begin(row)
        flow = {**request.flow, "expires_at": int(time.time()) - 1}
        with pytest.raises(oidc.SignInFailed) as failure:
            oidc.complete(row, {"code": "c", "state": request.state}, flow)
    assert failure.value.check == "state_expired"
    assert fake.calls == []


def test_expired_id_token_gets_the_clock_skew_page_and_no_userinfo_call(app, provider, monkeypatch):
    class ExpiredIdp(FakeIdp):
        def __call__(self, url, **kwargs):
            if url.endswith("/token"):
                self.calls.append({"url": url})
                past = int(time.time()) - 3600
                token = _id_token(self.nonce, iat=past - 300, exp=past)
                body = {"access_token": "at-1", "token_type": "Bearer", "id_token": token}
                return outbound.OutboundResponse(200, {}, json.dumps(body).encode(), url)
            return super().__call__(url, **kwargs)

    fake = ExpiredIdp()
    with pytest.raises(oidc.SignInFailed) as failure:
        _run_code_flow(app, provider(), fake, monkeypatch)
    assert failure.value.check == "id_token.exp"
    assert "clocks" in failure.value.user_message
    assert [c["url"].rsplit("/", 1)[1] for c in fake.calls] == ["token"]
