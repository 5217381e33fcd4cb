"""Profile "External logins": the list, link (with its re-authentication window), unlink with
the last-method guard, and the forged or replayed link callbacks that must link nothing.

The identity provider is replaced at its narrowest point: providers are plain OAuth 2.0 rows
(so starting a flow fetches nothing) and ``oidc.complete`` returns the identity the test
chooses. Everything else (state in the server-side session, the callback, the binding
checks, the service, the audit trail) is the real code. tests/e2e/test_external_logins.py runs
the same flows against a real OpenID provider.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from types import SimpleNamespace
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import ExternalLogin
from app.models import SsoProvider
from app.models.base import utcnow
from app.services import oidc
from app.services.linking import ExternalIdentity
from tests.conftest import DEFAULT_PASSWORD
from tests.conftest import AuthActions
from tests.helpers import audit_actions
from tests.helpers import audit_events
from tests.helpers import session_cookie
from tests.helpers import session_row
from tests.helpers import set_session_times

IDP = "https://idp.example.com"
EXTERNAL_LOGINS = "/account/external-logins"


# --- fixtures and helpers -------------------------------------------------------------------
class FakeIdp:
    """Stands in for oidc.complete: the identity the IdP "verified", and how often it ran
    (a refused binding must not even redeem the code)."""

    def __init__(self) -> None:
        self.subject = "idp-subject-1"
        self.email: str | None = "linked@idp.example"
        self.claims: dict = {}
        self.calls = 0

    def __call__(self, provider, params, flow) -> oidc.FederatedSignIn:
        self.calls += 1
        claims = {"sub": self.subject, "email": self.email, **self.claims}
        identity = ExternalIdentity(
            subject=self.subject, email=self.email, email_verified=False, claims=claims
        )
        return oidc.FederatedSignIn(identity, None)


@pytest.fixture
def idp(monkeypatch) -> FakeIdp:
    fake = FakeIdp()
    monkeypatch.setattr(oidc, "complete", fake)
    return fake


def make_provider(
    app, scheme: str, *, account_id: int | None = None, builtin: str | None = None, **fields
) -> SimpleNamespace:
    with app.app_context():
        provider = SsoProvider(
            protocol=fields.pop("protocol", "oauth2"),
            scheme=scheme,
            scheme_key=scheme.lower(),
            display_name=fields.pop("display_name", f"{scheme} login"),
            client_id="keyward",
            authorization_endpoint=f"{IDP}/{scheme}/authorize",
            token_endpoint=f"{IDP}/{scheme}/token",
            userinfo_endpoint=f"{IDP}/{scheme}/userinfo",
            account_id=account_id,
            builtin=builtin,
            **fields,
        )
        db.session.add(provider)
        db.session.commit()
        return SimpleNamespace(id=provider.id, scheme=scheme, name=provider.display_name)


def add_link(app, user_id, provider, subject: str = "existing-subject", email=None) -> int:
    with app.app_context():
        login = ExternalLogin(
            user_id=user_id, provider_id=provider.id, subject=subject, email=email
        )
        db.session.add(login)
        db.session.commit()
        return login.id


def logins_of(app, user_id) -> list[tuple[uuid.UUID, str]]:
    with app.app_context():
        rows = db.session.execute(
            select(ExternalLogin.provider_id, ExternalLogin.subject)
            .where(ExternalLogin.user_id == user_id)
            .order_by(ExternalLogin.id)
        )
        return [tuple(row) for row in rows]


def login_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(ExternalLogin))


def post(client, path: str, data: dict | None = None):
    return AuthActions(client).post(path, data, token_from="/account")


def start_link(client, provider) -> str:
    """Press "Link": the redirect to the IdP; returns the state it carries."""
    response = post(client, f"{EXTERNAL_LOGINS}/{provider.id}/link")
    assert response.status_code == 303, response.text
    location = response.headers["Location"]
    assert location.startswith(f"{IDP}/{provider.scheme}/authorize"), location
    return parse_qs(urlsplit(location).query)["state"][0]


def callback(client, provider, state: str):
    return client.get(f"/signin-{provider.scheme}", query_string={"code": "c-1", "state": state})


def sign_in_with(client, provider):
    """A plain sign-in through /sso/<guid> (a login flow), finished by the fake IdP."""
    response = client.get(f"/sso/{provider.id}")
    assert response.status_code == 303, response.text
    state = parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]
    return callback(client, provider, state)


def current_session(app, client):
    return session_row(app, session_cookie(client, app))


@pytest.fixture
def world(app, make_account, make_user) -> SimpleNamespace:
    acme, globex = make_account("Acme"), make_account("Globex")
    return SimpleNamespace(
        acme=acme,
        globex=globex,
        alice=make_user("alice@acme.example", account_id=acme.id),
        bob=make_user("bob@acme.example", account_id=acme.id),
        google=make_provider(app, "google", builtin="google", display_name="Google"),
        acme_sso=make_provider(app, "AcmeSSO", account_id=acme.id, display_name="Acme SSO"),
        globex_sso=make_provider(app, "GlobexSSO", account_id=globex.id, display_name="Globex SSO"),
    )


def signed_in(app, user):
    client = app.test_client()
    assert AuthActions(client).login(user.email).status_code == 303
    return client


# --- the page ---------------------------------------------------------------------------------
def test_page_lists_linked_logins_and_offers_the_others(app, world):
    make_provider(app, "AcmeOff", account_id=world.acme.id, display_name="Acme Off", enabled=False)
    saml = make_provider(
        app, "AcmeSaml", account_id=world.acme.id, display_name="Acme SAML", protocol="saml"
    )
    hidden = make_provider(
        app, "AcmeHidden", account_id=world.acme.id, display_name="Acme Hidden", visible=False
    )
    add_link(app, world.alice.id, world.acme_sso, "s-1", email="alice@corp.example")
    client = signed_in(app, world.alice)

    page = client.get(EXTERNAL_LOGINS)
    assert page.status_code == 200
    text = page.text
    # The linked login: provider, identity hint, when linked, last used, and "Unlink".
    assert "Acme SSO" in text and "alice@corp.example" in text and "Not yet" in text
    assert 'Unlink<span class="visually-hidden"> Acme SSO</span>' in text
    # Offered: the built-in provider and the account's other enabled ones (hidden too, and
    # SAML ones).
    assert 'Link<span class="visually-hidden"> Google</span>' in text
    assert f'action="{EXTERNAL_LOGINS}/{hidden.id}/link"' in text
    assert f'action="{EXTERNAL_LOGINS}/{saml.id}/link"' in text
    # Not offered: linked already, another account's, disabled.
    for name in ("Acme SSO", "Globex SSO", "Acme Off"):
        assert f'Link<span class="visually-hidden"> {name}</span>' not in text
    assert 'name="csrf_token"' in text
    # The profile leads here.
    assert f'href="{EXTERNAL_LOGINS}"' in client.get("/account").text


def test_anonymous_visitors_are_sent_to_sign_in(client, world):
    response = client.get(EXTERNAL_LOGINS)
    assert response.status_code in (302, 303)
    assert "/login" in response.headers["Location"]


def test_long_subjects_are_shown_shortened(app, world):
    add_link(app, world.alice.id, world.google, "1234567890abcdefghijklmnop")
    text = signed_in(app, world.alice).get(EXTERNAL_LOGINS).text
    assert "123456…mnop" in text and "1234567890abcdefghijklmnop" not in text


# --- link -----------------------------------------------------------------------------------
def test_link_lands_on_the_same_user_without_touching_sessions(app, world, idp):
    client = signed_in(app, world.alice)
    other_browser = signed_in(app, world.alice)
    before = current_session(app, client)

    state = start_link(client, world.acme_sso)
    response = callback(client, world.acme_sso, state)

    assert response.status_code == 303 and response.headers["Location"] == EXTERNAL_LOGINS
    assert logins_of(app, world.alice.id) == [(world.acme_sso.id, "idp-subject-1")]
    page = client.get(EXTERNAL_LOGINS).text
    assert "Your Acme SSO login is linked." in page and "linked@idp.example" in page
    # No new session, no rotation, nobody signed out.
    after = current_session(app, client)
    assert after.id == before.id and after.revoked_at is None
    assert after.authenticated_at == before.authenticated_at
    assert other_browser.get("/whoami").json["id"] == str(world.alice.id)
    [event] = audit_events(app, "auth.link.created")
    assert event["actor"] == world.alice.email
    assert event["details"] == {
        "provider": str(world.acme_sso.id),
        "subject": "idp-subject-1",
        "via": "profile",
    }
    # The two password sign-ins only: linking is no sign-in.
    assert audit_actions(app).count("auth.signin.succeeded") == 2


def test_after_linking_the_provider_signs_in_the_same_user(app, world, idp):
    client = signed_in(app, world.alice)
    callback(client, world.google, start_link(client, world.google))
    AuthActions(client).logout()
    assert client.get("/whoami").json == {"authenticated": False}

    response = sign_in_with(client, world.google)
    assert response.status_code == 303, response.text
    me = client.get("/whoami").json
    assert me["id"] == str(world.alice.id) and me["subject"] == "idp-subject-1"


def test_an_identity_linked_to_someone_else_is_refused_and_nothing_changes(app, world, idp):
    add_link(app, world.bob.id, world.acme_sso, "idp-subject-1")
    client = signed_in(app, world.alice)
    response = callback(client, world.acme_sso, start_link(client, world.acme_sso))
    assert response.status_code == 409
    assert "already belongs to another Keyward user" in response.text
    assert logins_of(app, world.alice.id) == []
    assert logins_of(app, world.bob.id) == [(world.acme_sso.id, "idp-subject-1")]
    assert client.get("/whoami").json["id"] == str(world.alice.id)
    [event] = audit_events(app, "auth.link.refused")
    assert event["details"]["reason"] == "identity_taken"
    assert event["details"]["subject"] == "idp-subject-1"


def test_one_login_per_provider(app, world, idp):
    client = signed_in(app, world.alice)
    state = start_link(client, world.acme_sso)
    # Linked meanwhile (another tab) with another subject: the link button is gone...
    add_link(app, world.alice.id, world.acme_sso, "first-subject")
    assert f"{world.acme_sso.id}/link" not in client.get(EXTERNAL_LOGINS).text
    response = post(client, f"{EXTERNAL_LOGINS}/{world.acme_sso.id}/link")
    assert response.status_code == 303 and response.headers["Location"] == EXTERNAL_LOGINS
    assert "Unlink it first" in client.get(EXTERNAL_LOGINS).text
    # ...and the callback of the flow started before is refused.
    response = callback(client, world.acme_sso, state)
    assert response.status_code == 409 and "Unlink it first" in response.text
    assert logins_of(app, world.alice.id) == [(world.acme_sso.id, "first-subject")]


def test_providers_of_other_accounts_cannot_be_linked(app, world, idp):
    client = signed_in(app, world.alice)
    response = post(client, f"{EXTERNAL_LOGINS}/{world.globex_sso.id}/link")
    assert response.status_code == 404
    assert post(client, f"{EXTERNAL_LOGINS}/not-a-guid/link").status_code == 404
    assert idp.calls == 0 and login_count(app) == 0


def test_linking_needs_a_csrf_token(app, world):
    client = signed_in(app, world.alice)
    response = client.post(f"{EXTERNAL_LOGINS}/{world.google.id}/link")
    assert response.status_code == 400


def test_the_cel_expression_applies_to_linking(app, world, idp):
    guarded = make_provider(
        app,
        "Guarded",
        account_id=world.acme.id,
        authorization_expression='"keyward-users" in groups',
    )
    idp.claims = {"groups": ["others"]}
    client = signed_in(app, world.alice)
    response = callback(client, guarded, start_link(client, guarded))
    assert response.status_code == 403
    assert "does not allow this login to be linked" in response.text
    assert login_count(app) == 0
    assert audit_events(app, "auth.link.refused")[0]["details"]["reason"] == "cel_refused"


# --- re-authentication ------------------------------------------------------------------------
def age_session(app, client, minutes: int) -> None:
    set_session_times(
        app, session_cookie(client, app), authenticated_at=utcnow() - timedelta(minutes=minutes)
    )


def test_a_recent_sign_in_links_at_once(app, world, idp):
    client = signed_in(app, world.alice)
    age_session(app, client, 9)
    start_link(client, world.google)


def test_an_older_sign_in_asks_for_the_password_then_goes_on_to_the_link(app, world, idp):
    client = signed_in(app, world.alice)
    age_session(app, client, 11)
    before = current_session(app, client)

    response = post(client, f"{EXTERNAL_LOGINS}/{world.google.id}/link")
    reauth = f"{EXTERNAL_LOGINS}/{world.google.id}/reauthenticate"
    assert response.status_code == 303 and response.headers["Location"] == reauth
    page = client.get(reauth)
    assert page.status_code == 200 and "Confirm it is you" in page.text
    assert 'type="password"' in page.text

    auth = AuthActions(client)
    wrong = auth.post(reauth, {"password": "not the password"}, token_from=reauth)
    assert wrong.status_code == 401 and "Password is not correct." in wrong.text
    assert current_session(app, client).id == before.id  # nothing renewed

    response = auth.post(reauth, {"password": DEFAULT_PASSWORD}, token_from=reauth)
    assert response.status_code == 303
    assert response.headers["Location"].startswith(f"{IDP}/google/authorize")
    renewed = current_session(app, client)
    assert renewed.id != before.id and renewed.authenticated_at > before.authenticated_at
    state = parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]
    assert callback(client, world.google, state).status_code == 303
    assert logins_of(app, world.alice.id) == [(world.google.id, "idp-subject-1")]


def test_an_older_sign_in_without_password_confirms_through_a_linked_provider(
    app, world, make_user, idp
):
    carol = make_user("carol@acme.example", None, account_id=world.acme.id)
    add_link(app, carol.id, world.google, "carol-google")
    client = app.test_client()
    idp.subject = "carol-google"
    assert sign_in_with(client, world.google).status_code == 303
    assert client.get("/whoami").json["id"] == str(carol.id)
    age_session(app, client, 30)
    before = current_session(app, client)

    response = post(client, f"{EXTERNAL_LOGINS}/{world.acme_sso.id}/link")
    reauth = response.headers["Location"]
    page = client.get(reauth).text
    assert 'type="password"' not in page and "Confirm with Google" in page

    via = f"{reauth}/{world.google.id}"
    response = post(client, via)
    assert response.headers["Location"].startswith(f"{IDP}/google/authorize")
    state = parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]
    # Google says it is carol: a fresh session, then straight on to Acme SSO's link flow.
    response = callback(client, world.google, state)
    assert response.status_code == 303
    assert response.headers["Location"].startswith(f"{IDP}/AcmeSSO/authorize")
    renewed = current_session(app, client)
    assert renewed.id != before.id and renewed.user_id == carol.id
    idp.subject = "carol-acme"
    state = parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]
    assert callback(client, world.acme_sso, state).status_code == 303
    assert logins_of(app, carol.id) == [
        (world.google.id, "carol-google"),
        (world.acme_sso.id, "carol-acme"),
    ]
    assert client.get("/whoami").json["id"] == str(carol.id)


def test_confirming_with_a_login_that_is_not_yours_is_refused(app, world, make_user, idp):
    add_link(app, world.alice.id, world.google, "alice-google")
    client = signed_in(app, world.alice)
    age_session(app, client, 30)
    before = current_session(app, client)
    post(client, f"{EXTERNAL_LOGINS}/{world.acme_sso.id}/link")
    response = post(
        client, f"{EXTERNAL_LOGINS}/{world.acme_sso.id}/reauthenticate/{world.google.id}"
    )
    state = parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]
    idp.subject = "somebody-else-at-google"
    response = callback(client, world.google, state)
    assert response.status_code == 403 and "not linked to your" in response.text
    assert current_session(app, client).id == before.id
    assert logins_of(app, world.alice.id) == [(world.google.id, "alice-google")]
    refused = audit_events(app, "auth.signin.refused")[-1]["details"]
    assert refused["reason"] == "reauth_mismatch" and refused["reauthentication"] is True


def test_confirming_only_through_your_own_linked_providers(app, world, idp):
    client = signed_in(app, world.alice)
    response = post(
        client, f"{EXTERNAL_LOGINS}/{world.acme_sso.id}/reauthenticate/{world.google.id}"
    )
    assert response.status_code == 404


# --- forged and replayed callbacks ------------------------------------------------------------
def test_a_link_callback_in_another_users_browser_links_nothing(app, world, idp):
    alice = signed_in(app, world.alice)
    bob = signed_in(app, world.bob)
    state = start_link(alice, world.acme_sso)
    response = callback(bob, world.acme_sso, state)
    assert response.status_code == 400 and "expired or was already used" in response.text
    assert idp.calls == 0 and login_count(app) == 0
    assert bob.get("/whoami").json["id"] == str(world.bob.id)


def test_a_replayed_link_callback_is_refused(app, world, idp):
    client = signed_in(app, world.alice)
    state = start_link(client, world.acme_sso)
    assert callback(client, world.acme_sso, state).status_code == 303
    response = callback(client, world.acme_sso, state)
    assert response.status_code == 400 and "expired or was already used" in response.text
    assert idp.calls == 1 and login_count(app) == 1


def test_a_login_flow_callback_never_links_to_the_signed_in_user(app, world, idp):
    client = signed_in(app, world.alice)
    idp.email = world.alice.email  # unverified: never a reason to link
    response = sign_in_with(client, world.acme_sso)
    assert response.status_code == 403
    assert login_count(app) == 0
    assert client.get("/whoami").json["id"] == str(world.alice.id)
    assert audit_events(app, "auth.link.created") == []


def test_a_link_flow_whose_session_changed_user_links_nothing(app, world, idp):
    client = signed_in(app, world.alice)
    state = start_link(client, world.acme_sso)
    # Someone signs in as bob in the same browser before the IdP answers.
    assert (
        AuthActions(client)
        .post("/login", {"email": world.bob.email, "password": DEFAULT_PASSWORD})
        .status_code
        == 303
    )
    response = callback(client, world.acme_sso, state)
    assert response.status_code == 403 and "another Keyward user" in response.text
    assert idp.calls == 0 and login_count(app) == 0
    [event] = audit_events(app, "auth.link.refused")
    assert event["actor"] == world.bob.email and event["target_id"] == str(world.alice.id)
    assert event["details"]["reason"] == "user_changed"


def test_a_link_flow_from_an_earlier_session_links_nothing(app, world, idp):
    client = signed_in(app, world.alice)
    state = start_link(client, world.acme_sso)
    # Alice signs in again (a new session record) before the IdP answers.
    AuthActions(client).post("/login", {"email": world.alice.email, "password": DEFAULT_PASSWORD})
    response = callback(client, world.acme_sso, state)
    assert response.status_code == 403 and "earlier session" in response.text
    assert idp.calls == 0 and login_count(app) == 0
    assert audit_events(app, "auth.link.refused")[0]["details"]["reason"] == "session_changed"


def test_a_link_flow_after_signing_out_links_nothing(app, world, idp):
    client = signed_in(app, world.alice)
    state = start_link(client, world.acme_sso)
    AuthActions(client).logout()
    response = callback(client, world.acme_sso, state)
    assert response.status_code == 400
    assert idp.calls == 0 and login_count(app) == 0
    assert client.get("/whoami").json == {"authenticated": False}


# --- unlink -----------------------------------------------------------------------------------
def test_unlink_removes_the_login_and_keeps_every_session(app, world):
    login_id = add_link(app, world.alice.id, world.acme_sso, "s-1")
    client = signed_in(app, world.alice)
    other_browser = signed_in(app, world.alice)
    before = current_session(app, client)

    response = post(client, f"{EXTERNAL_LOGINS}/{login_id}/unlink")
    assert response.status_code == 303 and response.headers["Location"] == EXTERNAL_LOGINS
    assert "Your Acme SSO login is unlinked." in client.get(EXTERNAL_LOGINS).text
    assert logins_of(app, world.alice.id) == []
    assert current_session(app, client).id == before.id
    assert other_browser.get("/whoami").json["authenticated"] is True
    [event] = audit_events(app, "auth.link.removed")
    assert event["details"] == {"provider": str(world.acme_sso.id), "subject": "s-1"}


def test_someone_elses_login_cannot_be_unlinked(app, world):
    login_id = add_link(app, world.bob.id, world.acme_sso, "s-1")
    client = signed_in(app, world.alice)
    assert post(client, f"{EXTERNAL_LOGINS}/{login_id}/unlink").status_code == 404
    assert post(client, f"{EXTERNAL_LOGINS}/99999/unlink").status_code == 404
    assert logins_of(app, world.bob.id) == [(world.acme_sso.id, "s-1")]
    assert audit_events(app, "auth.link.removed") == []


def test_the_last_way_to_sign_in_cannot_be_unlinked_until_a_password_is_set(
    app, world, make_user, idp
):
    carol = make_user("carol@acme.example", None, account_id=world.acme.id)
    login_id = add_link(app, carol.id, world.google, "carol-google")
    client = app.test_client()
    idp.subject = "carol-google"
    assert sign_in_with(client, world.google).status_code == 303

    page = client.get(EXTERNAL_LOGINS).text
    assert "Unlink<span" not in page
    assert "Your only way to sign in" in page and 'href="/account/password"' in page

    response = post(client, f"{EXTERNAL_LOGINS}/{login_id}/unlink")
    assert response.status_code == 303
    assert "Set a password first" in client.get(EXTERNAL_LOGINS).text
    assert logins_of(app, carol.id) == [(world.google.id, "carol-google")]

    # /account/password sets a first password without asking for a current one.
    form = client.get("/account/password").text
    assert "Set a password" in form and "current_password" not in form
    new_password = "tulip orbit lantern 73"
    response = AuthActions(client).post(
        "/account/password",
        {"new_password": new_password, "confirm_password": new_password},
        token_from="/account/password",
    )
    assert response.status_code == 303, response.text
    assert "Your password has been set." in client.get("/account").text

    assert post(client, f"{EXTERNAL_LOGINS}/{login_id}/unlink").status_code == 303
    assert logins_of(app, carol.id) == []
    AuthActions(client).logout()
    assert AuthActions(client).login(carol.email, new_password).status_code == 303


def test_a_login_at_a_disabled_provider_is_no_way_in(app, world, make_user, idp):
    carol = make_user("carol@acme.example", None, account_id=world.acme.id)
    google_login = add_link(app, carol.id, world.google, "carol-google")
    add_link(app, carol.id, world.acme_sso, "carol-acme")
    with app.app_context():
        db.session.get(SsoProvider, world.acme_sso.id).enabled = False
        db.session.commit()
    client = app.test_client()
    idp.subject = "carol-google"
    assert sign_in_with(client, world.google).status_code == 303
    post(client, f"{EXTERNAL_LOGINS}/{google_login}/unlink")
    assert len(logins_of(app, carol.id)) == 2
