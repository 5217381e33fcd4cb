"""Provider administration end to end against the real OpenID provider (node oidc-provider):
renaming a scheme keeps existing logins signing in, the IdP's groups map to roles, and
"Test sign-in" runs the real flow without creating a session or changing a row."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent
from app.models import ExternalLogin
from app.models import Membership
from app.models import ProviderSchemeAlias
from app.models import SsoProvider
from app.models import User
from app.models.base import utcnow
from app.services import accounts
from app.services import providers
from app.services.providers import ProviderFields
from tests.conftest import AuthActions
from tests.conftest import base_config
from tests.conftest import csrf_token_from
from tests.e2e.oidc_idp import OidcIdp
from tests.e2e.oidc_idp import new_http_session
from tests.e2e.oidc_idp import sign_in_with_http
from tests.helpers import audit_events
from tests.helpers import session_cookie

PUBLIC_URL = "http://localhost"
SECRET = "client-secret-for-admin-e2e"
OLD, NEW = "AcmeOld", "AcmeNew"
ACCOUNTS = {
    "alice": {
        "sub": "alice-sub",
        "email": "alice@acme.example",
        "email_verified": True,
        "name": "Alice Liddell",
        "groups": ["staff", "keyward-admins"],
    },
}
# Registered at the IdP: only the old callback URL (an IdP nobody updated yet), and a second
# client that has both (an IdP updated after the rename).
STALE_CLIENT = {
    "client_id": "acme-stale",
    "client_secret": SECRET,
    "redirect_uris": [f"{PUBLIC_URL}/signin-{OLD}"],
    "response_types": ["code"],
    "grant_types": ["authorization_code"],
    "token_endpoint_auth_method": "client_secret_basic",
}
UPDATED_CLIENT = {**STALE_CLIENT, "client_id": "acme-updated"}
UPDATED_CLIENT["redirect_uris"] = [f"{PUBLIC_URL}/signin-{OLD}", f"{PUBLIC_URL}/signin-{NEW}"]


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcIdp]:
    with OidcIdp(clients=[STALE_CLIENT, UPDATED_CLIENT], accounts=ACCOUNTS) as server:
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
def make_provider(app, idp, account):
    def _make(client_id: str = "acme-stale", **changes) -> uuid.UUID:
        fields = ProviderFields(
            **{
                "display_name": "Acme SSO",
                "scheme": OLD,
                "authority": idp.issuer,
                "client_id": client_id,
                "client_secret": SECRET,
                "jit_provisioning": True,
                **changes,
            }
        )
        with app.app_context():
            provider = providers.create_provider(fields, account=accounts.get_account(account.id))
            db.session.commit()
            return provider.id

    return _make


def _update(app, provider_id, **changes) -> None:
    with app.app_context():
        provider = providers.get_provider(provider_id)
        current = ProviderFields(
            display_name=provider.display_name,
            scheme=provider.scheme,
            authority=provider.authority,
            client_id=provider.client_id,
            jit_provisioning=provider.jit_provisioning,
            role_claim=provider.role_claim,
            role_mapping_default=provider.role_mapping_default,
            role_mappings=tuple((m.claim_value, m.role) for m in provider.role_mappings),
            enabled=provider.enabled,
        )
        providers.update_provider(provider, ProviderFields(**{**vars(current), **changes}))
        db.session.commit()


def _start(client, provider_id) -> str:
    response = client.get(f"/sso/{provider_id}")
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def _sign_in(client, provider_id):
    location = _start(client, provider_id)
    with new_http_session() as http:
        answer = sign_in_with_http(location, "alice", "any password", session=http)
    assert answer.mode == "query"
    return answer, client.get(answer.url)


def _count(app, model, *where) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


def test_rename_keeps_logins_and_the_old_callback_works_until_the_alias_ends(
    app, idp, make_provider
):
    provider_id = make_provider()
    first = app.test_client()
    _, response = _sign_in(first, provider_id)
    assert response.status_code == 303, response.text
    user_id = first.get("/whoami").json["id"]

    _update(app, provider_id, scheme=NEW)
    with app.app_context():
        provider = providers.get_provider(provider_id)
        assert providers.callback_urls(provider)["signin"] == f"{PUBLIC_URL}/signin-{NEW}"
        assert [a.scheme for a in providers.live_aliases(provider)] == [OLD]

    # The IdP still knows only the old URL: requests keep sending it, and the answer that
    # comes back to the old path signs the same user in through the same login.
    browser = app.test_client()
    location = _start(browser, provider_id)
    assert parse_qs(urlsplit(location).query)["redirect_uri"] == [f"{PUBLIC_URL}/signin-{OLD}"]
    with new_http_session() as http:
        answer = sign_in_with_http(location, "alice", "any password", session=http)
    assert urlsplit(answer.url).path == f"/signin-{OLD}"
    assert browser.get(answer.url).status_code == 303
    me = browser.get("/whoami").json
    assert (me["id"], me["provider_id"]) == (user_id, str(provider_id))
    assert _count(app, ExternalLogin, ExternalLogin.provider_id == provider_id) == 1
    assert _count(app, User) == 1
    renamed = audit_events(app, "provider.updated")[-1]["details"]["changes"]["scheme"]
    assert (renamed["before"], renamed["after"]) == (OLD, NEW)


def test_after_the_grace_period_the_new_callback_is_used_and_the_old_one_is_gone(
    app, idp, make_provider
):
    provider_id = make_provider("acme-updated")
    assert _sign_in(app.test_client(), provider_id)[1].status_code == 303
    _update(app, provider_id, scheme=NEW)
    with app.app_context():
        for alias in db.session.scalars(select(ProviderSchemeAlias)):
            alias.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    browser = app.test_client()
    answer, response = _sign_in(browser, provider_id)
    assert urlsplit(answer.url).path == f"/signin-{NEW}"
    assert response.status_code == 303, response.text
    assert browser.get("/whoami").json["email"] == "alice@acme.example"
    assert _count(app, User) == 1
    # An answer at the expired old path finds no provider.
    assert app.test_client().get(f"/signin-{OLD}?state=x&code=y").status_code == 404


def test_groups_claim_maps_to_a_role_at_every_sign_in_and_each_change_is_audited(
    app, idp, make_provider, account
):
    provider_id = make_provider(
        role_claim="groups",
        role_mappings=(("keyward-admins", "admin"), ("staff", "member")),
    )
    browser = app.test_client()
    assert _sign_in(browser, provider_id)[1].status_code == 303
    user_id = uuid.UUID(browser.get("/whoami").json["id"])
    with app.app_context():
        role = db.session.scalar(
            select(Membership.role).where(
                Membership.user_id == user_id, Membership.account_id == account.id
            )
        )
    assert role == "admin"  # the highest role among the matching groups
    changes = audit_events(app, "membership.role.changed")
    assert [(c["details"]["before"], c["details"]["after"]) for c in changes] == [
        ("member", "admin")  # JIT made the member, the mapping promoted them
    ]
    # Signing in again with the same groups changes nothing and records nothing.
    assert _sign_in(app.test_client(), provider_id)[1].status_code == 303
    assert len(audit_events(app, "membership.role.changed")) == 1
    # The mapping changes: the next sign-in applies it.
    _update(app, provider_id, role_mappings=(("staff", "member"),))
    assert _sign_in(app.test_client(), provider_id)[1].status_code == 303
    last = audit_events(app, "membership.role.changed")[-1]["details"]
    assert (last["before"], last["after"]) == ("admin", "member")


@pytest.fixture
def admin(app, make_user, account):
    user = make_user("admin@acme.example", account_id=account.id, role="admin")
    client = app.test_client()
    assert AuthActions(client).login(user.email).status_code == 303
    return client


def _test_sign_in(app, admin, account, provider_id):
    page = admin.get("/account")
    response = admin.post(
        f"/admin/accounts/{account.id}/sso-providers/{provider_id}/test",
        data={"csrf_token": csrf_token_from(page.text)},
    )
    assert response.status_code == 303, response.text
    with new_http_session() as http:
        answer = sign_in_with_http(
            response.headers["Location"], "alice", "any password", session=http
        )
    return admin.get(answer.url)


def test_test_sign_in_shows_claims_and_verdict_and_writes_nothing(
    app, idp, make_provider, account, admin
):
    provider_id = make_provider(
        enabled=False,  # admins test before enabling
        authorization_expression='"staff" in claims.groups',
        role_claim="groups",
        role_mappings=(("keyward-admins", "admin"),),
    )
    cookie = session_cookie(admin, app)
    users_before = _count(app, User)
    audit_before = _count(app, AuditEvent)
    result = _test_sign_in(app, admin, account, provider_id)
    assert result.status_code == 200, result.text
    assert "alice-sub" in result.text and "keyward-admins" in result.text  # the claims
    assert "Creates a new user" in result.text  # JIT would create alice
    assert 'id="test-role">admin' in result.text
    assert "allows the sign-in" in result.text
    # No session, user, login or audit row came of it; the admin is still themselves.
    assert session_cookie(admin, app) == cookie
    assert admin.get("/whoami").json["email"] == "admin@acme.example"
    assert _count(app, User) == users_before
    assert _count(app, ExternalLogin) == 0
    assert _count(app, AuditEvent) == audit_before
    with app.app_context():
        assert db.session.get(SsoProvider, provider_id).enabled is False


def test_test_sign_in_shows_a_cel_refusal(app, idp, make_provider, account, admin):
    provider_id = make_provider(authorization_expression='"finance" in claims.groups')
    result = _test_sign_in(app, admin, account, provider_id)
    assert result.status_code == 200
    assert "refuses the sign-in" in result.text
    assert _count(app, User) == 1  # only the admin


def test_a_test_callback_in_another_browser_is_refused(app, idp, make_provider, account, admin):
    provider_id = make_provider()
    page = admin.get("/account")
    response = admin.post(
        f"/admin/accounts/{account.id}/sso-providers/{provider_id}/test",
        data={"csrf_token": csrf_token_from(page.text)},
    )
    with new_http_session() as http:
        answer = sign_in_with_http(response.headers["Location"], "alice", "pw", session=http)
    thief = app.test_client()
    stolen = thief.get(answer.url)
    assert stolen.status_code == 400
    assert "alice-sub" not in stolen.text
    assert thief.get("/whoami").json == {"authenticated": False}


def test_a_member_cannot_start_a_test_sign_in(app, make_provider, make_user, account):
    provider_id = make_provider()
    member = make_user("member@acme.example", account_id=account.id, role="member")
    client = app.test_client()
    auth = AuthActions(client)
    auth.login(member.email)
    response = auth.post(f"/admin/accounts/{account.id}/sso-providers/{provider_id}/test")
    assert response.status_code == 403


def test_ending_the_aliases_switches_to_the_new_callback_at_once(
    app, idp, make_provider, account, admin
):
    provider_id = make_provider("acme-updated")
    _update(app, provider_id, scheme=NEW)
    assert _start(app.test_client(), provider_id).count(f"signin-{OLD}") == 1
    page = admin.get(f"/admin/accounts/{account.id}/sso-providers/{provider_id}/edit")
    assert "Use the new callback URLs now" in page.text
    response = admin.post(
        f"/admin/accounts/{account.id}/sso-providers/{provider_id}/end-aliases",
        data={"csrf_token": csrf_token_from(page.text)},
    )
    assert response.status_code == 303
    ended = audit_events(app, "provider.aliases_ended")
    assert [e["details"]["schemes"] for e in ended] == [[OLD]]
    browser = app.test_client()
    answer, response = _sign_in(browser, provider_id)
    assert urlsplit(answer.url).path == f"/signin-{NEW}"
    assert response.status_code == 303
    assert app.test_client().get(f"/signin-{OLD}?state=x&code=y").status_code == 404
