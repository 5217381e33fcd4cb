"""A user provisioned by SCIM signs in through the account's OpenID provider (node
oidc-provider) and lands on that user: matched by Entra's ``oid`` claim = SCIM externalId.

Keyward runs under Flask's test client; its outbound fetches go to the provider over real
sockets. SCIM requests go through the same app with a bearer token.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.extensions import db
from app.models import ExternalLogin
from app.services import accounts
from app.services import providers
from app.services import scim_tokens
from app.services.providers import ProviderFields
from tests.conftest import base_config
from tests.e2e.oidc_idp import OidcIdp
from tests.e2e.oidc_idp import new_http_session
from tests.e2e.oidc_idp import sign_in_with_http
from tests.helpers import audit_events
from tests.scim.conftest import ScimClient

PUBLIC_URL = "http://localhost"
SECRET = "client-secret-for-scim-e2e"
OBJECT_ID = "6f1c0b5e-2f3a-4d8e-9a51-8e3c1a7d2b40"
# What the IdP asserts: a subject that is not the object id (Entra's pairwise sub), the
# object id in "oid", and an address that differs from the provisioned userName.
IDP_ACCOUNTS = {
    "bjensen": {
        "sub": "pairwise-subject-of-bjensen",
        "oid": OBJECT_ID,
        "email": "babs@personal.example",
        "email_verified": False,
        "name": "Barbara Jensen",
    },
}
CLIENT = {
    "client_id": "entra",
    "client_secret": SECRET,
    "redirect_uris": [f"{PUBLIC_URL}/signin-Entra"],
    "response_types": ["code"],
    "grant_types": ["authorization_code"],
    "token_endpoint_auth_method": "client_secret_basic",
}


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcIdp]:
    with OidcIdp(clients=[CLIENT], accounts=IDP_ACCOUNTS) as server:
        yield server


@pytest.fixture
def config(database_url, idp):
    return base_config(
        database_url,
        OUTBOUND_ALLOW_PRIVATE=f"127.0.0.1:{idp.port}",
        PUBLIC_URL=PUBLIC_URL,
        SCIM_RATE_LIMIT="1000/second",
    )


@pytest.fixture
def setup(app, idp, make_account):
    account = make_account("Contoso", "contoso")
    with app.app_context():
        provider = providers.create_provider(
            ProviderFields(
                display_name="Entra ID",
                scheme="Entra",
                authority=idp.issuer,
                client_id="entra",
                client_secret=SECRET,
                # No just-in-time creation: only provisioned users may sign in.
                jit_provisioning=False,
                external_id_claim="oid",
            ),
            account=accounts.get_account(account.id),
        )
        _row, token = scim_tokens.create_token(
            accounts.get_account(account.id), "Entra provisioning", provider_id=provider.id
        )
        db.session.commit()
        provider_id = provider.id
    return account, provider_id, ScimClient(app.test_client(), token)


def sign_in(client, provider_id):
    start = client.get(f"/sso/{provider_id}")
    assert start.status_code == 303, start.text
    with new_http_session() as http:
        answer = sign_in_with_http(start.headers["Location"], "bjensen", "pw", session=http)
    assert answer.mode == "query"
    return client.get(answer.url)


def provision(scim) -> str:
    response = scim.post(
        "/Users",
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "bjensen@contoso.example",
            "externalId": OBJECT_ID,
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [{"value": "bjensen@contoso.example", "type": "work", "primary": True}],
            "active": True,
        },
    )
    assert response.status_code == 201, response.text
    return response.json["id"]


def test_a_provisioned_user_signs_in_through_the_accounts_provider(app, client, setup):
    account, provider_id, scim = setup
    user_id = provision(scim)

    response = sign_in(client, provider_id)

    assert response.status_code == 303, response.text
    me = client.get("/whoami").json
    assert me["authenticated"] is True
    assert me["id"] == user_id
    assert me["email"] == "bjensen@contoso.example"
    assert me["account_ids"] == [account.id]
    assert me["subject"] == "pairwise-subject-of-bjensen"
    with app.app_context():
        login = db.session.query(ExternalLogin).one()
        assert str(login.user_id) == user_id
    linked = audit_events(app, "auth.link.created")
    assert linked and linked[-1]["details"].get("via") == "external_id"


def test_deprovisioned_users_are_refused_and_lose_their_session(app, client, setup):
    _account, provider_id, scim = setup
    user_id = provision(scim)
    assert sign_in(client, provider_id).status_code == 303
    assert client.get("/whoami").json["authenticated"] is True

    patch = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
    }
    assert scim.patch(f"/Users/{user_id}", patch).status_code == 200

    # The session ended at once...
    assert client.get("/whoami").json == {"authenticated": False}
    # ...and signing in again is refused.
    refused = sign_in(app.test_client(), provider_id)
    assert refused.status_code == 403
    assert audit_events(app, "auth.signin.refused")[-1]["details"]["reason"] == "user_inactive"


def test_without_provisioning_nobody_gets_in(app, client, setup):
    _account, provider_id, _scim = setup

    response = sign_in(client, provider_id)

    assert response.status_code == 403
    assert client.get("/whoami").json == {"authenticated": False}
    assert audit_events(app, "auth.signin.refused")[-1]["details"]["reason"] == "no_account"
