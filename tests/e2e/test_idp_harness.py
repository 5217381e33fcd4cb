"""The end-to-end identity provider itself (node oidc-provider), without Keyward.

These tests prove that the harness the Keyward end-to-end tests rely on does what they need:
the discovery document, the three response types, ID tokens that verify against the JWKS,
key rotation, the request counters and the three kinds of logout.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import urlencode
from urllib.parse import urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.e2e.oidc_idp import IdpFlowError
from tests.e2e.oidc_idp import OidcIdp
from tests.e2e.oidc_idp import OidcIdpError
from tests.e2e.oidc_idp import new_http_session
from tests.e2e.oidc_idp import sign_in_with_http
from tests.e2e.oidc_idp import sign_out_with_http
from tests.helpers import serving
from tests.live_server import free_port

RP = "http://localhost"
REDIRECT_URI = f"{RP}/signin-oidc"
POST_LOGOUT_URI = f"{RP}/signout-callback-oidc"
FRONTCHANNEL_URI = f"{RP}/signout-oidc"
OTHER_BACKCHANNEL_URI = f"http://127.0.0.1:{free_port()}/backchannel-logout-other"
ALICE = {
    "sub": "alice-0001",
    "email": "alice@example.com",
    "email_verified": True,
    "name": "Alice Liddell",
    "given_name": "Alice",
    "family_name": "Liddell",
    "groups": ["admins", "staff"],
    "tid": "tenant-1",
    "oid": "object-1",
}


class _BackchannelReceiver(BaseHTTPRequestHandler):
    """A relying party's back-channel logout endpoint: keeps the posted bodies."""

    received: list[dict[str, str]]

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode()
        self.server.received.append(dict(parse_qsl(body)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BackchannelReceiver)
    server.received = []  # type: ignore[attr-defined]
    with serving(server):
        yield server


@pytest.fixture(scope="module")
def idp(receiver) -> Iterator[OidcIdp]:
    port = receiver.server_address[1]
    client = {
        "client_id": "keyward",
        "client_secret": "keyward-secret",
        "redirect_uris": [REDIRECT_URI],
        "post_logout_redirect_uris": [POST_LOGOUT_URI],
        "response_types": ["code", "id_token", "code id_token"],
        "grant_types": ["authorization_code", "implicit"],
        "token_endpoint_auth_method": "client_secret_basic",
        "id_token_signed_response_alg": "RS256",
        "backchannel_logout_uri": f"http://127.0.0.1:{port}/backchannel-logout-oidc",
        "backchannel_logout_session_required": True,
        "frontchannel_logout_uri": FRONTCHANNEL_URI,
        "frontchannel_logout_session_required": True,
    }
    other = {
        "client_id": "other",
        "client_secret": "other-secret",
        "redirect_uris": ["http://127.0.0.1:9/signin-other"],
        "response_types": ["code"],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "client_secret_post",
        "backchannel_logout_uri": OTHER_BACKCHANNEL_URI,
    }
    accounts = {"alice": ALICE, "bob": {"sub": "bob-0002", "email": "bob@example.com"}}
    accounts["carol"] = {"sub": "carol-3", "email": "carol@example.com", "password": "carol-pw"}
    with OidcIdp(clients=[client, other], accounts=accounts) as server:
        yield server


@pytest.fixture
def http() -> Iterator:
    with new_http_session() as session:
        yield session


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_url(idp: OidcIdp, **params: str) -> str:
    query = {
        "client_id": "keyward",
        "redirect_uri": REDIRECT_URI,
        "scope": "openid email profile",
        "state": secrets.token_urlsafe(8),
        "nonce": secrets.token_urlsafe(8),
        **params,
    }
    return f"{idp.authorization_endpoint}?{urlencode(query)}"


def get_json(http, url: str) -> Any:
    with http.get(url, timeout=10) as response:
        assert response.status_code == 200, response.text
        return response.json()


def verify_id_token(http, idp: OidcIdp, id_token: str) -> jwt.Token:
    keys = KeySet.import_key_set(get_json(http, idp.jwks_uri))
    token = jwt.decode(id_token, keys, algorithms=["RS256"])
    assert token.claims["iss"] == idp.issuer
    assert token.claims["aud"] == "keyward"
    return token


def code_flow(http, idp: OidcIdp, login: str = "alice") -> dict[str, Any]:
    """authorize (code + PKCE) -> sign in -> token endpoint; the token response."""
    verifier, challenge = pkce_pair()
    url = authorize_url(
        idp, response_type="code", code_challenge=challenge, code_challenge_method="S256"
    )
    result = sign_in_with_http(url, login, "any password", session=http)
    assert result.mode == "query", result
    with http.post(
        idp.token_endpoint,
        data={
            "grant_type": "authorization_code",
            "code": result.params["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        auth=("keyward", "keyward-secret"),
        timeout=10,
    ) as response:
        assert response.status_code == 200, response.text
        return response.json()


# --- discovery -----------------------------------------------------------------------------
def test_discovery_document(idp, http):
    assert idp.issuer.startswith("http://127.0.0.1:")
    document = get_json(http, idp.discovery_url)
    assert document["issuer"] == idp.issuer
    assert document["jwks_uri"] == idp.jwks_uri
    assert document["authorization_endpoint"] == idp.authorization_endpoint
    assert document["token_endpoint"] == idp.token_endpoint
    assert document["end_session_endpoint"] == idp.end_session_endpoint
    assert document["backchannel_logout_supported"] is True
    assert document["backchannel_logout_session_supported"] is True
    assert document["authorization_response_iss_parameter_supported"] is True
    assert "S256" in document["code_challenge_methods_supported"]
    assert "form_post" in document["response_modes_supported"]
    assert {"code", "id_token", "code id_token"} <= set(document["response_types_supported"])
    assert "RS256" in document["id_token_signing_alg_values_supported"]
    assert {"groups", "tid", "oid", "email", "name"} <= set(document["claims_supported"])


# --- the three response types --------------------------------------------------------------
def test_code_flow_with_pkce_by_plain_http(idp, http):
    verifier, challenge = pkce_pair()
    url = authorize_url(
        idp,
        response_type="code",
        code_challenge=challenge,
        code_challenge_method="S256",
        state="the-state",
        nonce="the-nonce",
    )
    result = sign_in_with_http(url, "alice", "whatever", session=http)

    assert result.mode == "query"
    assert result.redirect_uri == REDIRECT_URI
    assert result.params["state"] == "the-state"
    assert result.params["iss"] == idp.issuer  # RFC 9207
    assert result.params["code"]

    with http.post(
        idp.token_endpoint,
        data={
            "grant_type": "authorization_code",
            "code": result.params["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        auth=("keyward", "keyward-secret"),  # client_secret_basic
        timeout=10,
    ) as response:
        assert response.status_code == 200, response.text
        tokens = response.json()

    token = verify_id_token(http, idp, tokens["id_token"])
    claims = token.claims
    assert token.header["alg"] == "RS256"
    assert token.header["kid"] == idp.signing_kid()
    assert claims["sub"] == ALICE["sub"]
    assert claims["email"] == ALICE["email"]
    assert claims["email_verified"] is True
    assert claims["name"] == ALICE["name"]
    assert claims["groups"] == ALICE["groups"]
    assert claims["tid"] == "tenant-1" and claims["oid"] == "object-1"
    assert claims["nonce"] == "the-nonce"
    assert claims["sid"]

    with http.get(
        idp.userinfo_endpoint,
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200, response.text
        assert response.json()["email"] == ALICE["email"]


def test_code_flow_requires_pkce(idp):
    result = sign_in_with_http(authorize_url(idp, response_type="code"), "alice", "x")
    assert result.params["error"] == "invalid_request"
    assert "PKCE" in result.params["error_description"]


def test_id_token_with_form_post(idp, http):
    url = authorize_url(
        idp, response_type="id_token", response_mode="form_post", nonce="n-implicit"
    )
    result = sign_in_with_http(url, "bob", "pw")

    assert result.mode == "form_post"
    assert result.url == REDIRECT_URI
    assert set(result.fields) >= {"id_token", "state"}
    assert "code" not in result.fields
    # oidc-provider leaves out RFC 9207's iss when the response carries an ID token (its iss
    # claim names the issuer): a relying party must accept a form_post without it.
    assert "iss" not in result.fields
    claims = verify_id_token(http, idp, result.fields["id_token"]).claims
    assert claims["sub"] == "bob-0002"
    assert claims["email"] == "bob@example.com"
    assert claims["nonce"] == "n-implicit"
    assert claims["sid"]


def test_code_id_token_with_form_post(idp, http):
    verifier, challenge = pkce_pair()
    url = authorize_url(
        idp,
        response_type="code id_token",
        response_mode="form_post",
        code_challenge=challenge,
        code_challenge_method="S256",
    )
    result = sign_in_with_http(url, "alice", "pw", session=http)

    assert result.mode == "form_post"
    assert set(result.fields) >= {"code", "id_token", "state"}
    assert "iss" not in result.fields  # the ID token's iss claim stands for it
    claims = verify_id_token(http, idp, result.fields["id_token"]).claims
    assert claims["c_hash"]
    assert claims["email"] == ALICE["email"]


def test_wrong_password_and_unknown_login_are_refused(idp):
    url = authorize_url(idp, response_type="id_token", response_mode="form_post")
    with pytest.raises(IdpFlowError, match="Invalid login or password"):
        sign_in_with_http(url, "carol", "wrong")
    with pytest.raises(IdpFlowError, match="Invalid login or password"):
        sign_in_with_http(url, "nobody", "pw")
    assert sign_in_with_http(url, "carol", "carol-pw").fields["id_token"]


def test_accounts_can_be_added_at_runtime(idp, http):
    idp.add_account("dave", {"sub": "dave-4", "email": "dave@example.com", "roles": ["x"]})
    url = authorize_url(idp, response_type="id_token", response_mode="form_post")
    result = sign_in_with_http(url, "dave", "pw")
    claims = verify_id_token(http, idp, result.fields["id_token"]).claims
    assert claims["sub"] == "dave-4"
    assert claims["roles"] == ["x"]


# --- keys and counters ----------------------------------------------------------------------
def test_key_rotation_changes_the_jwks_kid(idp, http):
    first = idp.signing_kid()
    assert [key["kid"] for key in get_json(http, idp.jwks_uri)["keys"]] == idp.published_kids()

    second = idp.rotate_keys(keep_old=True)
    assert second != first
    assert [key["kid"] for key in get_json(http, idp.jwks_uri)["keys"]] == [second, first]

    third = idp.rotate_keys()
    jwks = get_json(http, idp.jwks_uri)
    assert [key["kid"] for key in jwks["keys"]] == [third]
    assert jwks["keys"][0]["alg"] == "RS256" and "d" not in jwks["keys"][0]

    # New tokens are signed with the new key; the provider's sessions survive the rotation.
    tokens = code_flow(http, idp)
    assert verify_id_token(http, idp, tokens["id_token"]).header["kid"] == third


def test_counters_count_discovery_and_jwks_fetches(idp, http):
    idp.reset_counters()
    assert idp.jwks_fetches() == 0 and idp.discovery_fetches() == 0
    get_json(http, idp.discovery_url)
    get_json(http, idp.jwks_uri)
    get_json(http, idp.jwks_uri)
    assert idp.discovery_fetches() == 1
    assert idp.jwks_fetches() == 2
    assert idp.counters()["jwks"] == 2
    idp.reset_counters()
    assert idp.counters()["discovery"] == 0


# --- logout ---------------------------------------------------------------------------------
def test_rp_initiated_logout_with_front_and_back_channel(idp, http, receiver):
    tokens = code_flow(http, idp)
    sid = verify_id_token(http, idp, tokens["id_token"]).claims["sid"]
    idp.reset_counters()
    receiver.received.clear()

    query = urlencode(
        {
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": POST_LOGOUT_URI,
            "state": "logout-state",
        }
    )
    result = sign_out_with_http(f"{idp.end_session_endpoint}?{query}", session=http)

    location = urlsplit(result.location)
    assert f"{location.scheme}://{location.netloc}{location.path}" == POST_LOGOUT_URI
    assert dict(parse_qsl(location.query)) == {"state": "logout-state"}

    # Front-channel: one iframe for the client, with iss and sid.
    assert len(result.frontchannel_urls) == 1
    frontchannel = urlsplit(result.frontchannel_urls[0])
    assert f"{frontchannel.scheme}://{frontchannel.netloc}{frontchannel.path}" == FRONTCHANNEL_URI
    assert dict(parse_qsl(frontchannel.query)) == {"iss": idp.issuer, "sid": sid}
    assert idp.frontchannel_logouts() == [
        {"client_id": "keyward", "url": result.frontchannel_urls[0], "sid": sid}
    ]

    # Back-channel: a logout token delivered to the client, and recorded.
    [record] = idp.backchannel_logouts()
    assert record["status"] == 200 and record["error"] is None
    assert receiver.received == [{"logout_token": record["logout_token"]}]
    logout = verify_id_token(http, idp, record["logout_token"])
    assert logout.header["typ"] == "logout+jwt"
    assert logout.claims["sub"] == ALICE["sub"]
    assert logout.claims["sid"] == sid
    assert "http://schemas.openid.net/event/backchannel-logout" in logout.claims["events"]
    assert "nonce" not in logout.claims

    # The provider's session is gone: the next authorization shows the sign-in form again.
    _, challenge = pkce_pair()
    url = authorize_url(
        idp, response_type="code", code_challenge=challenge, code_challenge_method="S256"
    )
    with http.get(url, timeout=10) as response:
        assert 'id="login-form"' in response.text


def test_logout_of_one_client_keeps_the_provider_session(idp, http):
    tokens = code_flow(http, idp, login="bob")
    sid = verify_id_token(http, idp, tokens["id_token"]).claims["sid"]
    idp.reset_counters()

    query = urlencode({"id_token_hint": tokens["id_token"]})
    result = sign_out_with_http(f"{idp.end_session_endpoint}?{query}", session=http, confirm=False)

    assert result.location.startswith(f"{idp.issuer}/session/end/success")
    assert [record["sid"] for record in idp.frontchannel_logouts()] == [sid]
    assert [record["sid"] for record in idp.backchannel_logouts()] == [sid]
    # Still signed in at the provider: no form, a new sid for the client.
    url = authorize_url(idp, response_type="id_token", response_mode="form_post")
    result = sign_in_with_http(url, "ignored", "ignored", session=http)
    claims = verify_id_token(http, idp, result.fields["id_token"]).claims
    assert claims["sub"] == "bob-0002"
    assert claims["sid"] != sid


def test_single_sign_on_then_back_channel_logout_on_demand(idp, http):
    code_flow(http, idp, login="bob")
    # Second authorization in the same provider session: no form (the login is not used).
    url = authorize_url(idp, response_type="id_token", response_mode="form_post")
    result = sign_in_with_http(url, "ignored", "ignored", session=http)
    claims = verify_id_token(http, idp, result.fields["id_token"]).claims
    assert claims["sub"] == "bob-0002"

    idp.reset_counters()
    record = idp.send_backchannel_logout("keyward", "bob-0002", claims["sid"])
    assert record["status"] == 200
    assert verify_id_token(http, idp, record["logout_token"]).claims["sid"] == claims["sid"]


def test_undeliverable_back_channel_logout_is_still_recorded(idp):
    # A Keyward test driven by Flask's test client registers a back-channel URI nothing
    # listens on: the provider's delivery fails, the test takes the token from the record.
    record = idp.send_backchannel_logout("other", "alice-0001", "some-sid")
    assert record["status"] is None
    assert record["error"]
    assert record["uri"] == OTHER_BACKCHANNEL_URI
    assert record["client_id"] == "other"
    assert record["sid"] is None  # "other" has no backchannel_logout_session_required
    assert record in idp.backchannel_logouts()

    with pytest.raises(OidcIdpError, match="no backchannel_logout_uri"):
        idp.send_backchannel_logout("unknown", "alice-0001")


# --- failures are clear ---------------------------------------------------------------------
def test_missing_node_modules_is_a_clear_error(tmp_path: Path):
    with pytest.raises(OidcIdpError, match="npm ci --prefix tests/e2e/idp"):
        OidcIdp(idp_dir=tmp_path).start()


def test_missing_node_is_a_clear_error():
    with pytest.raises(OidcIdpError, match="Node.js"):
        OidcIdp(node="/nonexistent/node").start()


def test_invalid_configuration_shows_the_provider_output():
    bad = {"client_id": "bad", "client_secret": "x", "redirect_uris": ["not a url"]}
    with pytest.raises(OidcIdpError, match="redirect_uris"):
        OidcIdp(clients=[bad]).start()
