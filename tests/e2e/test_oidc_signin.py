"""Federated sign-in end to end against a real OpenID provider (node oidc-provider).

Keyward runs under Flask's test client; its outbound fetches (discovery, JWKS, token,
userinfo) go over real sockets to the provider, which this module starts.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest

from app.extensions import db
from app.models import ExternalLogin
from app.services import metadata
from app.services import providers
from app.services.providers import ProviderFields
from tests.conftest import AuthActions
from tests.conftest import base_config
from tests.e2e.oidc_idp import OidcIdp
from tests.e2e.oidc_idp import new_http_session
from tests.e2e.oidc_idp import sign_in_with_http
from tests.e2e.oidc_idp import sign_out_with_http
from tests.helpers import audit_events

PUBLIC_URL = "http://localhost"
SECRET = "client-secret-for-e2e"
FLOWS = {
    "CodeIdp": ("code", ["authorization_code"]),
    "ImplicitIdp": ("id_token", ["implicit"]),
    "HybridIdp": ("code id_token", ["authorization_code", "implicit"]),
}
ACCOUNTS = {
    "alice": {
        "sub": "alice-sub",
        "email": "alice@acme.example",
        "email_verified": True,
        "name": "Alice Liddell",
        "given_name": "Alice",
        "family_name": "Liddell",
        "groups": ["staff"],
    },
}


def client_metadata(scheme: str) -> dict:
    response_type, grants = FLOWS[scheme]
    return {
        "client_id": scheme.lower(),
        "client_secret": SECRET,
        "redirect_uris": [f"{PUBLIC_URL}/signin-{scheme}"],
        "post_logout_redirect_uris": [f"{PUBLIC_URL}/signout-callback-{scheme}"],
        "response_types": [response_type],
        "grant_types": grants,
        "token_endpoint_auth_method": "client_secret_basic",
        "backchannel_logout_uri": f"{PUBLIC_URL}/backchannel-logout-{scheme}",
        "backchannel_logout_session_required": True,
        "frontchannel_logout_uri": f"{PUBLIC_URL}/signout-{scheme}",
        "frontchannel_logout_session_required": True,
    }


OAUTH2_CLIENT = {
    "client_id": "oauthidp",
    "client_secret": SECRET,
    "redirect_uris": [f"{PUBLIC_URL}/signin-OAuthIdp"],
    "response_types": ["code"],
    "grant_types": ["authorization_code"],
    "token_endpoint_auth_method": "client_secret_basic",
}


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcIdp]:
    clients = [client_metadata(s) for s in FLOWS] + [OAUTH2_CLIENT]
    with OidcIdp(clients=clients, accounts=ACCOUNTS) as server:
        yield server


@pytest.fixture
def config(database_url, idp):
    # The provider is plain http on loopback: allowed for exactly its host:port.
    return base_config(
        database_url, OUTBOUND_ALLOW_PRIVATE=f"127.0.0.1:{idp.port}", PUBLIC_URL=PUBLIC_URL
    )


@pytest.fixture
def account(make_account):
    return make_account("Acme")


@pytest.fixture
def make_provider(app, idp, account):
    def _make(scheme: str = "CodeIdp", **changes) -> uuid.UUID:
        response_type = FLOWS[scheme][0]
        defaults = {
            "display_name": f"{scheme} login",
            "scheme": scheme,
            "authority": idp.issuer,
            "client_id": scheme.lower(),
            "client_secret": SECRET,
            "response_type": response_type,
            "jit_provisioning": True,
        }
        fields = ProviderFields(**{**defaults, **changes})
        with app.app_context():
            from app.services import accounts

            provider = providers.create_provider(fields, account=accounts.get_account(account.id))
            db.session.commit()
            return provider.id

    return _make


def start(client, provider_id) -> str:
    response = client.get(f"/sso/{provider_id}")
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def finish(client, answer):
    """Deliver the provider's answer the way the browser would."""
    if answer.mode == "query":
        return client.get(answer.url)
    return client.post(urlsplit(answer.url).path, data=answer.params)


def sign_in(client, provider_id, http=None):
    location = start(client, provider_id)
    if http is None:
        with new_http_session() as own:
            answer = sign_in_with_http(location, "alice", "any password", session=own)
    else:
        answer = sign_in_with_http(location, "alice", "any password", session=http)
    return finish(client, answer)


@pytest.mark.parametrize("scheme", list(FLOWS))
def test_each_response_type_signs_in_and_provisions_the_user(
    app, client, make_provider, account, scheme
):
    provider_id = make_provider(scheme)
    response = sign_in(client, provider_id)
    assert response.status_code == 303, response.text
    assert response.headers["Location"] == "/"
    me = client.get("/whoami").json
    assert me["authenticated"] is True
    assert me["email"] == "alice@acme.example"
    assert me["provider_id"] == str(provider_id)
    assert me["subject"] == "alice-sub"
    assert me["account_ids"] == [account.id]
    assert audit_events(app, "auth.signin.succeeded")[-1]["details"]["method"] == "oidc"


def test_code_flow_authorization_request_carries_state_nonce_and_pkce(client, make_provider):
    location = start(client, make_provider("CodeIdp"))
    query = parse_qs(urlsplit(location).query)
    assert query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43
    assert len(query["state"][0]) >= 43 and len(query["nonce"][0]) >= 43
    assert query["scope"] == ["openid profile email"]
    assert query["redirect_uri"] == [f"{PUBLIC_URL}/signin-CodeIdp"]
    assert "response_mode" not in query


@pytest.mark.parametrize("scheme", ["ImplicitIdp", "HybridIdp"])
def test_form_post_without_the_cookie_is_relayed_from_our_own_origin(
    app, client, make_provider, scheme
):
    provider_id = make_provider(scheme)
    location = start(client, provider_id)
    with new_http_session() as http:
        answer = sign_in_with_http(location, "alice", "pw", session=http)
    assert answer.mode == "form_post"
    path = urlsplit(answer.url).path
    # The cross-site POST arrives without the SameSite=Lax cookie...
    cookieless = app.test_client()
    relay = cookieless.post(path, data=answer.params)
    assert relay.status_code == 200
    assert 'name="keyward_relay" value="1"' in relay.text
    assert "relay.js" in relay.text
    assert cookieless.get("/whoami").json == {"authenticated": False}
    # ...and the same-origin re-post (which carries it) completes the sign-in.
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', relay.text))
    response = client.post(path, data=fields)
    assert response.status_code == 303
    assert client.get("/whoami").json["subject"] == "alice-sub"


def test_state_is_used_once_and_bound_to_the_browser(app, client, make_provider):
    provider_id = make_provider("CodeIdp")
    location = start(client, provider_id)
    with new_http_session() as http:
        answer = sign_in_with_http(location, "alice", "pw", session=http)
    # Another browser replaying the callback (a stolen redirect) gets nothing.
    thief = app.test_client()
    stolen = thief.get(answer.url)
    assert stolen.status_code == 400
    assert "expired or was already used" in stolen.text
    assert thief.get("/whoami").json == {"authenticated": False}
    assert finish(client, answer).status_code == 303
    # The same callback again in the same browser: the state is spent.
    replay = client.get(answer.url)
    assert replay.status_code == 400
    refusals = [e["details"]["reason"] for e in audit_events(app, "auth.signin.refused")]
    assert refusals.count("state") == 2


def test_idp_error_response_is_a_clear_page(app, client, make_provider):
    provider_id = make_provider("CodeIdp")
    location = start(client, provider_id)
    state = parse_qs(urlsplit(location).query)["state"][0]
    response = client.get(
        "/signin-CodeIdp",
        query_string={
            "state": state,
            "error": "access_denied",
            "error_description": "<script>alert(1)</script>",
        },
    )
    assert response.status_code == 401
    assert "refused the sign-in (access_denied)" in response.text
    assert "<script>alert(1)</script>" not in response.text
    assert "Reference:" in response.text or "reference" in response.text
    assert client.get("/whoami").json == {"authenticated": False}


def test_warm_sign_in_fetches_no_metadata(app, idp, make_provider):
    provider_id = make_provider("CodeIdp")
    assert sign_in(app.test_client(), provider_id).status_code == 303  # cold: fetches once
    idp.reset_counters()
    for _ in range(3):
        assert sign_in(app.test_client(), provider_id).status_code == 303
    counters = idp.counters()
    assert counters["discovery"] == 0 and counters["jwks"] == 0
    assert counters["token"] == 3


def test_key_rotation_at_the_provider_is_picked_up_with_one_jwks_fetch(app, idp, make_provider):
    provider_id = make_provider("CodeIdp")
    assert sign_in(app.test_client(), provider_id).status_code == 303
    idp.rotate_keys(keep_old=False)
    idp.reset_counters()
    browser = app.test_client()
    assert sign_in(browser, provider_id).status_code == 303
    assert browser.get("/whoami").json["authenticated"] is True
    assert idp.jwks_fetches() == 1
    # The next sign-in uses the refreshed keys from the cache.
    assert sign_in(app.test_client(), provider_id).status_code == 303
    assert idp.jwks_fetches() == 1


def test_unknown_kid_refreshes_are_shared_and_cooled_down(app, idp, make_provider):
    provider_id = make_provider("CodeIdp")
    with app.app_context():
        provider = providers.get_provider(provider_id)
        keys = metadata.provider_keys(provider)
        db.session.commit()
        idp.reset_counters()
        for _ in range(5):
            metadata.refresh_jwks_for_unknown_kid(provider, keys)
    assert idp.jwks_fetches() == 1


def test_cel_expression_refuses_before_anything_is_created(app, client, make_provider):
    provider_id = make_provider("CodeIdp", authorization_expression='"admins" in claims.groups')
    response = sign_in(client, provider_id)
    assert response.status_code == 403
    assert client.get("/whoami").json == {"authenticated": False}
    with app.app_context():
        assert db.session.query(ExternalLogin).count() == 0
    assert audit_events(app, "auth.signin.refused")[-1]["details"]["reason"] == "cel_refused"


def test_cel_expression_allows_when_true(client, make_provider):
    provider_id = make_provider("CodeIdp", authorization_expression='"staff" in claims.groups')
    assert sign_in(client, provider_id).status_code == 303
    assert client.get("/whoami").json["authenticated"] is True


def test_unknown_disabled_and_other_account_guids_get_clear_pages(
    app, client, make_provider, make_account
):
    provider_id = make_provider("CodeIdp")
    assert client.get(f"/sso/{uuid.uuid4()}").status_code == 404
    assert client.get("/sso/not-a-guid").status_code == 404
    other = make_account("Globex")
    assert client.get(f"/sso/{provider_id}?account={other.id}").status_code == 404
    with app.app_context():
        providers.set_enabled(providers.get_provider(provider_id), False)
        db.session.commit()
    disabled = client.get(f"/sso/{provider_id}")
    assert disabled.status_code == 403 and "disabled" in disabled.text
    assert client.get("/signin-CodeIdp?state=x&code=y").status_code == 403
    assert client.get("/signin-NoSuchScheme?state=x").status_code == 404


def test_login_page_shows_the_accounts_visible_enabled_providers(
    app, client, account, make_provider
):
    visible = make_provider("CodeIdp")
    hidden = make_provider("ImplicitIdp", visible=False)
    page = client.get(f"/login?account={account.id}").text
    assert "Sign in with CodeIdp login" in page and f"/sso/{visible}" in page
    assert f"/sso/{hidden}" not in page
    assert "CodeIdp login" in client.get(f"/login/{account.slug}").text
    assert "CodeIdp login" not in client.get("/login").text
    # A hidden provider still works by its direct URL.
    assert sign_in(client, hidden).status_code == 303


def test_rp_initiated_logout_ends_the_session_here_and_at_the_idp(app, client, make_provider):
    provider_id = make_provider("CodeIdp")
    with new_http_session() as http:
        assert sign_in(client, provider_id, http=http).status_code == 303
        response = AuthActions(client).logout()
        assert response.status_code == 303
        end_session = response.headers["Location"]
        query = parse_qs(urlsplit(end_session).query)
        assert query["post_logout_redirect_uri"] == [f"{PUBLIC_URL}/signout-callback-CodeIdp"]
        assert query["id_token_hint"][0].count(".") == 2 and query["state"]
        assert client.get("/whoami").json == {"authenticated": False}
        back = sign_out_with_http(end_session, session=http)
    assert back.location.startswith(f"{PUBLIC_URL}/signout-callback-CodeIdp?")
    landed = client.get(back.location)
    assert landed.status_code == 303 and landed.headers["Location"] == "/login"
    assert "You have signed out." in client.get("/login").text


def _session_sid(app) -> str:
    from app.models import Session

    with app.app_context():
        return db.session.query(Session.idp_sid).filter(Session.idp_sid.is_not(None)).one()[0]


def test_backchannel_logout_ends_the_session_and_refuses_replays(app, client, idp, make_provider):
    provider_id = make_provider("CodeIdp")
    assert sign_in(client, provider_id).status_code == 303
    sid = _session_sid(app)
    idp.reset_counters()
    idp.send_backchannel_logout("codeidp", "alice-sub", sid=sid)
    token = idp.backchannel_logouts()[-1]["logout_token"]
    idp_server = app.test_client()  # server to server: no cookie
    response = idp_server.post("/backchannel-logout-CodeIdp", data={"logout_token": token})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert client.get("/whoami").json == {"authenticated": False}
    replay = idp_server.post("/backchannel-logout-CodeIdp", data={"logout_token": token})
    assert replay.status_code == 400


def test_backchannel_logout_with_a_forged_token_changes_nothing(app, client, make_provider):
    provider_id = make_provider("CodeIdp")
    assert sign_in(client, provider_id).status_code == 303
    id_token_like = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZS1zdWIifQ."
    for token in (id_token_like, "garbage", ""):
        response = app.test_client().post(
            "/backchannel-logout-CodeIdp", data={"logout_token": token}
        )
        assert response.status_code == 400
    assert client.get("/whoami").json["authenticated"] is True


def test_frontchannel_logout_by_iss_and_sid_without_a_cookie(app, client, idp, make_provider):
    provider_id = make_provider("CodeIdp")
    assert sign_in(client, provider_id).status_code == 303
    sid = _session_sid(app)
    iframe = app.test_client()
    wrong = iframe.get("/signout-CodeIdp", query_string={"iss": "http://evil", "sid": sid})
    assert wrong.status_code == 400
    assert client.get("/whoami").json["authenticated"] is True
    response = iframe.get("/signout-CodeIdp", query_string={"iss": idp.issuer, "sid": sid})
    assert response.status_code == 200
    assert "frame-ancestors *" in response.headers["Content-Security-Policy"]
    assert client.get("/whoami").json == {"authenticated": False}


def test_plain_oauth2_provider_reads_the_identity_from_userinfo(app, client, idp, account):
    fields = ProviderFields(
        protocol="oauth2",
        display_name="OAuth login",
        scheme="OAuthIdp",
        client_id="oauthidp",
        client_secret=SECRET,
        authorization_endpoint=idp.authorization_endpoint,
        token_endpoint=idp.token_endpoint,
        userinfo_endpoint=idp.userinfo_endpoint,
        # This provider's userinfo needs the openid scope; OAuth 2.0 sends only what is set.
        additional_scopes="openid email profile",
        subject_field="sub",
        trust_email_verified=True,
        jit_provisioning=True,
    )
    with app.app_context():
        from app.services import accounts

        provider = providers.create_provider(fields, account=accounts.get_account(account.id))
        db.session.commit()
        provider_id = provider.id
    location = start(client, provider_id)
    query = parse_qs(urlsplit(location).query)
    assert "nonce" not in query and query["code_challenge_method"] == ["S256"]
    idp.reset_counters()
    assert sign_in(client, provider_id).status_code == 303
    me = client.get("/whoami").json
    assert (me["email"], me["subject"]) == ("alice@acme.example", "alice-sub")
    counters = idp.counters()
    assert counters["userinfo"] == 1 and counters["discovery"] == 0


def test_without_jit_an_unknown_user_gets_the_no_account_page(app, client, make_provider):
    provider_id = make_provider("CodeIdp", jit_provisioning=False)
    response = sign_in(client, provider_id)
    assert response.status_code == 403
    assert "no Keyward user" in response.text or "No Keyward user" in response.text
    assert client.get("/whoami").json == {"authenticated": False}
    assert audit_events(app, "auth.signin.refused")[-1]["details"]["reason"] == "no_account"


def test_a_tampered_front_channel_id_token_is_refused_before_any_token_call(
    app, client, idp, make_provider
):
    provider_id = make_provider("HybridIdp")
    location = start(client, provider_id)
    with new_http_session() as http:
        answer = sign_in_with_http(location, "alice", "pw", session=http)
    header, payload, signature = answer.params["id_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory-sub"  # another identity, with the original signature
    tampered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = dict(answer.params, id_token=f"{header}.{tampered}.{signature}")
    idp.reset_counters()
    response = client.post(urlsplit(answer.url).path, data=forged)
    assert response.status_code == 401
    assert "token is not valid" in response.text
    assert idp.counters()["token"] == 0  # the code was never redeemed
    assert client.get("/whoami").json == {"authenticated": False}
    reason = audit_events(app, "auth.signin.refused")[-1]["details"]["reason"]
    assert reason == "id_token.signature"
