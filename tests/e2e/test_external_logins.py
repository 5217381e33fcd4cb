"""External logins end to end against a real OpenID provider (node oidc-provider): a password
user links a provider from the profile and then signs in through it as the same user; the
re-authentication window (password, or a linked provider); a link answer delivered to
another browser; an identity already linked to someone else.

Keyward runs under Flask's test client; its discovery, JWKS, token and userinfo fetches go
over real sockets to the provider, which this module starts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import ExternalLogin
from app.models.base import utcnow
from app.services import accounts
from app.services import providers
from app.services.providers import ProviderFields
from tests.conftest import DEFAULT_PASSWORD
from tests.conftest import AuthActions
from tests.conftest import base_config
from tests.e2e.oidc_idp import OidcIdp
from tests.e2e.oidc_idp import new_http_session
from tests.e2e.oidc_idp import sign_in_with_http
from tests.helpers import audit_events
from tests.helpers import session_cookie
from tests.helpers import session_row
from tests.helpers import set_session_times

PUBLIC_URL = "http://localhost"
SECRET = "client-secret-for-the-link-e2e"
SCHEMES = ("AcmeLink", "AcmeOther")
EXTERNAL_LOGINS = "/account/external-logins"
# The identities at the IdP. Their emails differ from the Keyward users' on purpose: only
# the link can make the provider's sign-in land on the Keyward user.
ACCOUNTS = {
    "alice": {"sub": "alice-sub", "email": "alice@idp.example", "email_verified": True},
    "carol": {"sub": "carol-sub", "email": "carol@idp.example", "email_verified": True},
}


def client_metadata(scheme: str) -> dict:
    return {
        "client_id": scheme.lower(),
        "client_secret": SECRET,
        "redirect_uris": [f"{PUBLIC_URL}/signin-{scheme}"],
        "post_logout_redirect_uris": [f"{PUBLIC_URL}/signout-callback-{scheme}"],
        "response_types": ["code"],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "client_secret_basic",
    }


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcIdp]:
    with OidcIdp(clients=[client_metadata(s) for s in SCHEMES], accounts=ACCOUNTS) as server:
        yield server


@pytest.fixture
def config(database_url, idp):
    return base_config(
        database_url, OUTBOUND_ALLOW_PRIVATE=f"127.0.0.1:{idp.port}", PUBLIC_URL=PUBLIC_URL
    )


@pytest.fixture
def account(make_account):
    return make_account("Acme")


@pytest.fixture
def provider_ids(app, idp, account) -> dict[str, uuid.UUID]:
    """Two providers of the account, without JIT provisioning."""
    made = {}
    with app.app_context():
        owner = accounts.get_account(account.id)
        for scheme in SCHEMES:
            fields = ProviderFields(
                display_name=f"{scheme} SSO",
                scheme=scheme,
                authority=idp.issuer,
                client_id=scheme.lower(),
                client_secret=SECRET,
            )
            made[scheme] = providers.create_provider(fields, account=owner).id
        db.session.commit()
    return made


def press_link(client, provider_id) -> str:
    response = AuthActions(client).post(f"{EXTERNAL_LOGINS}/{provider_id}/link")
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def at_idp(location: str, login: str, http=None):
    """Sign in on the provider's pages; the answer for Keyward, not delivered yet."""
    if http is not None:
        return sign_in_with_http(location, login, "any password", session=http)
    with new_http_session() as own:
        return sign_in_with_http(location, login, "any password", session=own)


def deliver(client, answer):
    assert answer.mode == "query"
    return client.get(answer.url)


def sso_sign_in(client, provider_id, login: str, http=None):
    response = client.get(f"/sso/{provider_id}")
    assert response.status_code == 303, response.text
    return deliver(client, at_idp(response.headers["Location"], login, http))


def logins(app) -> list[tuple]:
    with app.app_context():
        rows = db.session.execute(
            select(
                ExternalLogin.user_id, ExternalLogin.provider_id, ExternalLogin.subject
            ).order_by(ExternalLogin.id)
        )
        return [tuple(row) for row in rows]


def age_session(app, client, minutes: int) -> None:
    set_session_times(
        app, session_cookie(client, app), authenticated_at=utcnow() - timedelta(minutes=minutes)
    )


def test_password_user_links_a_provider_then_signs_in_through_it(
    app, idp, account, provider_ids, make_user
):
    user = make_user("alice@keyward.example", account_id=account.id)
    provider_id = provider_ids["AcmeLink"]
    # Before the link, the provider's identity is nobody here (no JIT, another email).
    stranger = app.test_client()
    assert sso_sign_in(stranger, provider_id, "alice").status_code == 403

    client = app.test_client()
    assert AuthActions(client).login(user.email).status_code == 303
    before = session_cookie(client, app)
    page = client.get(EXTERNAL_LOGINS).text
    assert 'Link<span class="visually-hidden"> AcmeLink SSO</span>' in page

    response = deliver(client, at_idp(press_link(client, provider_id), "alice"))
    assert response.status_code == 303 and response.headers["Location"] == EXTERNAL_LOGINS
    page = client.get(EXTERNAL_LOGINS).text
    assert "Your AcmeLink SSO login is linked." in page and "alice@idp.example" in page
    assert session_cookie(client, app) == before  # the session was not rotated
    assert logins(app) == [(user.id, provider_id, "alice-sub")]
    [event] = audit_events(app, "auth.link.created")
    assert event["details"]["provider"] == str(provider_id)
    assert event["details"]["subject"] == "alice-sub"

    AuthActions(client).logout()
    assert client.get("/whoami").json == {"authenticated": False}
    # From /login: the account's button, then the IdP, then back as the same user.
    assert f"/sso/{provider_id}" in client.get(f"/login/{account.slug}").text
    assert sso_sign_in(client, provider_id, "alice").status_code == 303
    me = client.get("/whoami").json
    assert me["id"] == str(user.id) and me["email"] == user.email
    assert me["provider_id"] == str(provider_id) and me["subject"] == "alice-sub"
    assert "Not yet" not in client.get(EXTERNAL_LOGINS).text  # last used is set now


def test_an_old_sign_in_confirms_the_password_then_links(
    app, idp, account, provider_ids, make_user
):
    user = make_user("alice@keyward.example", account_id=account.id)
    provider_id = provider_ids["AcmeLink"]
    client = app.test_client()
    AuthActions(client).login(user.email)
    age_session(app, client, 11)

    reauth = press_link(client, provider_id)
    assert urlsplit(reauth).path == f"{EXTERNAL_LOGINS}/{provider_id}/reauthenticate"
    response = AuthActions(client).post(reauth, {"password": DEFAULT_PASSWORD}, token_from=reauth)
    assert response.status_code == 303
    assert response.headers["Location"].startswith(idp.authorization_endpoint)
    assert deliver(client, at_idp(response.headers["Location"], "alice")).status_code == 303
    assert logins(app) == [(user.id, provider_id, "alice-sub")]


def test_a_user_without_password_confirms_through_a_linked_provider(
    app, idp, account, provider_ids, make_user
):
    carol = make_user("carol@keyward.example", None, account_id=account.id)
    first, second = provider_ids["AcmeLink"], provider_ids["AcmeOther"]
    with app.app_context():
        db.session.add(ExternalLogin(user_id=carol.id, provider_id=first, subject="carol-sub"))
        db.session.commit()
    client = app.test_client()
    with new_http_session() as http:
        assert sso_sign_in(client, first, "carol", http).status_code == 303
        assert client.get("/whoami").json["id"] == str(carol.id)
        age_session(app, client, 30)

        reauth = press_link(client, second)
        assert "Confirm with AcmeLink SSO" in client.get(reauth).text
        response = AuthActions(client).post(f"{reauth}/{first}", token_from=reauth)
        # The IdP still knows carol (single sign-on): no form, straight back.
        back = deliver(client, at_idp(response.headers["Location"], "carol", http))
        assert back.status_code == 303
        assert back.headers["Location"].startswith(idp.authorization_endpoint)
        assert "client_id=acmeother" in back.headers["Location"]
        done = deliver(client, at_idp(back.headers["Location"], "carol", http))
    assert done.status_code == 303 and done.headers["Location"] == EXTERNAL_LOGINS
    assert logins(app) == [(carol.id, first, "carol-sub"), (carol.id, second, "carol-sub")]
    assert client.get("/whoami").json["id"] == str(carol.id)


def test_a_link_answer_delivered_to_another_browser_links_nothing(
    app, idp, account, provider_ids, make_user
):
    alice = make_user("alice@keyward.example", account_id=account.id)
    bob = make_user("bob@keyward.example", account_id=account.id)
    provider_id = provider_ids["AcmeLink"]
    alice_browser, bob_browser = app.test_client(), app.test_client()
    AuthActions(alice_browser).login(alice.email)
    AuthActions(bob_browser).login(bob.email)

    answer = at_idp(press_link(alice_browser, provider_id), "alice")
    stolen = deliver(bob_browser, answer)
    assert stolen.status_code == 400 and "expired or was already used" in stolen.text
    assert logins(app) == []
    assert bob_browser.get("/whoami").json["id"] == str(bob.id)
    # The flow is still alice's, in alice's browser only.
    assert deliver(alice_browser, answer).status_code == 303
    assert logins(app) == [(alice.id, provider_id, "alice-sub")]
    # And spent: a replay is refused.
    assert deliver(alice_browser, answer).status_code == 400


def test_an_identity_linked_to_someone_else_is_refused(app, idp, account, provider_ids, make_user):
    alice = make_user("alice@keyward.example", account_id=account.id)
    bob = make_user("bob@keyward.example", account_id=account.id)
    provider_id = provider_ids["AcmeLink"]
    with app.app_context():
        db.session.add(ExternalLogin(user_id=bob.id, provider_id=provider_id, subject="alice-sub"))
        db.session.commit()
    client = app.test_client()
    AuthActions(client).login(alice.email)
    response = deliver(client, at_idp(press_link(client, provider_id), "alice"))
    assert response.status_code == 409
    assert "already belongs to another Keyward user" in response.text
    assert logins(app) == [(bob.id, provider_id, "alice-sub")]
    assert client.get("/whoami").json["id"] == str(alice.id)
    assert session_row(app, session_cookie(client, app)).revoked_at is None
