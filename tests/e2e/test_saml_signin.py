"""SAML 2.0 sign-in and single logout end to end against an independent IdP (pysaml2).

Keyward runs under Flask's test client. The IdP runs in its own process (SamlIdp) for the
flows a browser goes through: SP-initiated and IdP-initiated sign-in, logout both ways,
certificate rollover, signed requests and a renamed scheme. The refusals use the same IdP
in-process (IdpCore): it answers an AuthnRequest Keyward really issued, and each answer is
broken the way a faulty IdP or an attacker would break it. Every refusal must leave no
session, show a page with a correlation id, and say why in the audit log.
"""

from __future__ import annotations

import datetime as dt
import html
import re
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests
from lxml import etree
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import ExternalLogin
from app.models import Membership
from app.models import Session
from app.models import SsoProvider
from app.services import accounts
from app.services import providers
from app.services import saml
from app.services import users
from app.services.providers import ProviderFields
from tests.conftest import DEFAULT_PASSWORD
from tests.conftest import AuthActions
from tests.conftest import base_config
from tests.e2e.saml_idp import NS
from tests.e2e.saml_idp import IdpCore
from tests.e2e.saml_idp import SamlIdp
from tests.e2e.saml_idp import comment_in_name_id
from tests.e2e.saml_idp import encode
from tests.e2e.saml_idp import make_key_pair
from tests.e2e.saml_idp import parse_form
from tests.e2e.saml_idp import query_params
from tests.e2e.saml_idp import set_audience
from tests.e2e.saml_idp import set_destination
from tests.e2e.saml_idp import shift_validity
from tests.e2e.saml_idp import sign_in_with_http
from tests.e2e.saml_idp import wrap_with_evil_assertion
from tests.helpers import audit_events
from tests.helpers import session_cookie
from tests.helpers import session_row
from tests.helpers import set_session_times

PUBLIC_URL = "http://localhost"
USERS = {
    "alice": {
        "name_id": "alice-0001",
        "attributes": {
            "email": ["alice@acme.example"],
            "firstName": ["Alice"],
            "lastName": ["Liddell"],
            "groups": ["staff"],
        },
    },
    "bob": {
        "name_id": "bob-0002",
        "attributes": {"email": ["bob@acme.example"], "groups": ["admins", "staff"]},
    },
    # An email-format NameID the attacker owns at the IdP; the victim is "admin@x".
    "mallory": {"name_id": "admin@x.evil", "name_id_format": "email", "attributes": {}},
}


@pytest.fixture(scope="module")
def idp() -> Iterator[SamlIdp]:
    # No auto-login: every sign-in fills the IdP's own login form (Login, Password).
    with SamlIdp(users=USERS) as server:
        yield server


@pytest.fixture(scope="module")
def core() -> Iterator[IdpCore]:
    """The same kind of IdP in-process, for crafted (broken) answers; never contacted."""
    built = IdpCore("http://127.0.0.1:9", users=USERS)
    yield built
    built.close()


@pytest.fixture
def config(database_url, idp):
    # The IdP is plain http on loopback: allowed for exactly its host:port.
    return base_config(
        database_url, OUTBOUND_ALLOW_PRIVATE=f"127.0.0.1:{idp.port}", PUBLIC_URL=PUBLIC_URL
    )


@pytest.fixture
def account(make_account):
    return make_account("Acme")


def sp_entity_id(scheme: str) -> str:
    return f"{PUBLIC_URL}/saml/{scheme}/metadata"


@pytest.fixture
def make_provider(app, idp, account):
    """A SAML provider of Acme from the IdP's metadata URL, registered at the IdP by
    Keyward's own SP metadata; returns its GUID."""

    def _make(scheme: str = "AcmeSaml", *, register: bool = True, **changes) -> uuid.UUID:
        values = {
            "protocol": "saml",
            "display_name": "Acme SAML",
            "scheme": scheme,
            "saml_metadata_url": idp.metadata_url,
            "jit_provisioning": True,
            "trust_email_verified": True,
            **changes,
        }
        with app.app_context():
            provider = providers.create_provider(
                ProviderFields(**values), account=accounts.get_account(account.id)
            )
            db.session.commit()
            provider_id = provider.id
        if register:
            idp.add_sp(metadata_xml=app.test_client().get(f"/saml/{scheme}/metadata").text)
        return provider_id

    return _make


@pytest.fixture
def core_provider(app, core, account):
    """A SAML provider whose metadata was pasted from the in-process IdP."""
    with app.app_context():
        provider = providers.create_provider(
            ProviderFields(
                protocol="saml",
                display_name="Core SAML",
                scheme="CoreSaml",
                saml_metadata_xml=core.metadata_xml(),
                jit_provisioning=True,
                trust_email_verified=True,
            ),
            account=accounts.get_account(account.id),
        )
        db.session.commit()
        provider_id = provider.id
    core.add_sp_metadata(app.test_client().get("/saml/CoreSaml/metadata").text)
    return provider_id


# --- helpers -------------------------------------------------------------------------------
def start(client, provider_id, **query) -> str:
    response = client.get(f"/sso/{provider_id}", query_string=query)
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def at_idp(location: str, login: str = "alice"):
    """The IdP's login form filled in, up to its auto-submit POST form for the ACS."""
    with requests.Session() as http:
        return sign_in_with_http(location, login=login, password="any password", session=http)


def post_acs(client, form, **extra):
    return client.post(urlsplit(form.action).path, data={**form.fields, **extra})


def sign_in(client, provider_id, login: str = "alice", **query):
    return post_acs(client, at_idp(start(client, provider_id, **query), login))


def whoami(client) -> dict:
    return client.get("/whoami").json


def signed_in_sessions(app) -> int:
    with app.app_context():
        return db.session.scalar(
            select(func.count())
            .select_from(Session)
            .where(Session.user_id.is_not(None), Session.revoked_at.is_(None))
        )


def only_session(app) -> Session:
    with app.app_context():
        row = db.session.scalars(select(Session).where(Session.user_id.is_not(None))).one()
        db.session.expunge(row)
        return row


def relay_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html))


def assert_refused(app, client, response, reason: str, status: int, sessions: int = 0) -> None:
    """A clear page with the correlation id, no session (``sessions`` signed-in sessions
    existed before), and the reason in the audit log."""
    assert response.status_code == status, response.text
    assert "Sign-in failed" in response.text
    request_id = response.headers["X-Request-ID"]
    assert f"<code>{request_id}</code>" in response.text
    assert "Traceback" not in response.text
    assert whoami(client) == {"authenticated": False}
    assert signed_in_sessions(app) == sessions
    event = audit_events(app, "auth.signin.refused")[-1]
    assert event["details"]["reason"] == reason
    assert event["details"]["method"] == "saml"
    assert event["request_id"] == request_id


# --- SP-initiated sign-in ------------------------------------------------------------------
def test_sp_initiated_sign_in_lands_signed_in_with_provider_and_subject(
    app, client, idp, make_provider, account
):
    provider_id = make_provider()
    location = start(client, provider_id, next="/account")
    assert location.startswith(f"{idp.sso_url}?SAMLRequest=")
    form = at_idp(location)
    assert form.action == f"{PUBLIC_URL}/signin-AcmeSaml"
    response = post_acs(client, form)
    assert response.status_code == 303, response.text
    assert response.headers["Location"] == "/account"
    me = whoami(client)
    assert me["authenticated"] is True
    assert me["email"] == "alice@acme.example"
    assert me["provider_id"] == str(provider_id)
    assert me["subject"] == "alice-0001"
    assert me["account_ids"] == [account.id]
    # The session keeps the NameID and SessionIndex that single logout needs.
    session = only_session(app)
    answered = [e for e in idp.events() if e["type"] == "response"][-1]
    assert (session.idp_subject, session.idp_sid) == ("alice-0001", answered["session_index"])
    assert session.auth_method == "saml"
    asked = [e for e in idp.events() if e["type"] == "authn_request"][-1]
    assert asked["issuer"] == sp_entity_id("AcmeSaml")
    assert asked["acs"] == f"{PUBLIC_URL}/signin-AcmeSaml"
    assert answered["in_response_to"] == asked["id"]
    event = audit_events(app, "auth.signin.succeeded")[-1]
    assert event["details"]["method"] == "saml" and event["details"]["created"] is True


def test_login_page_shows_the_saml_button(client, make_provider, account):
    provider_id = make_provider(register=False)
    page = client.get(f"/login?account={account.id}").text
    assert "Acme SAML" in page and f"/sso/{provider_id}" in page


def test_cookieless_post_to_the_acs_is_relayed_from_our_own_origin(app, client, make_provider):
    provider_id = make_provider()
    form = at_idp(start(client, provider_id))
    # The IdP's cross-site POST arrives without the SameSite=Lax cookie...
    cookieless = app.test_client()
    relay = post_acs(cookieless, form)
    assert relay.status_code == 200
    assert 'name="keyward_relay" value="1"' in relay.text and "relay.js" in relay.text
    fields = relay_fields(relay.text)
    assert fields["SAMLResponse"] == form.fields["SAMLResponse"]
    assert whoami(cookieless) == {"authenticated": False}
    # ...and the same-origin re-post (which carries it) completes the sign-in.
    response = client.post(urlsplit(form.action).path, data=fields)
    assert response.status_code == 303
    assert whoami(client)["subject"] == "alice-0001"


def test_jit_linking_cel_and_role_mapping_follow_the_same_rules(
    app, client, make_provider, make_user, account
):
    # Bob already has a Keyward user: the (trusted) email links it, and his groups map to
    # the admin role in Acme.
    make_user("bob@acme.example", account_id=account.id, role="member")
    provider_id = make_provider(
        role_claim="groups",
        role_mappings=(("admins", "admin"),),
        authorization_expression='"staff" in claims.groups',
    )
    assert sign_in(client, provider_id, login="bob").status_code == 303
    assert whoami(client)["email"] == "bob@acme.example"
    link = audit_events(app, "auth.link.created")[-1]
    assert link["details"]["via"] == "email" and link["details"]["subject"] == "bob-0002"
    with app.app_context():
        bob = users.find_by_email("bob@acme.example")
        role = db.session.scalar(
            select(Membership.role).where(
                Membership.user_id == bob.id, Membership.account_id == account.id
            )
        )
    assert role == "admin"
    # The next sign-in finds the link (subject), not the email.
    again = app.test_client()
    assert sign_in(again, provider_id, login="bob").status_code == 303
    assert audit_events(app, "auth.signin.succeeded")[-1]["details"]["linked"] is False


def test_cel_expression_over_the_attributes_refuses(app, client, make_provider):
    provider_id = make_provider(authorization_expression='"admins" in claims.groups')
    response = sign_in(client, provider_id, login="alice")
    assert response.status_code == 403
    assert whoami(client) == {"authenticated": False}
    assert audit_events(app, "auth.signin.refused")[-1]["details"]["reason"] == "cel_refused"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ExternalLogin)) == 0


def test_without_jit_an_unknown_user_gets_the_no_account_page(app, client, make_provider):
    provider_id = make_provider(jit_provisioning=False)
    response = sign_in(client, provider_id)
    assert response.status_code == 403
    assert "no Keyward user" in response.text
    assert whoami(client) == {"authenticated": False}
    event = audit_events(app, "auth.signin.refused")[-1]
    assert event["details"]["reason"] == "no_account"
    assert event["details"]["method"] == "saml"


def test_untrusted_email_does_not_link_an_existing_user(app, client, make_provider, make_user):
    make_user("alice@acme.example")
    provider_id = make_provider(trust_email_verified=False)
    response = sign_in(client, provider_id)
    assert response.status_code == 403
    assert whoami(client) == {"authenticated": False}
    assert audit_events(app, "auth.signin.refused")[-1]["details"]["reason"] == "email_unverified"


def test_disabled_provider_refuses_the_sso_link_and_the_acs(app, client, make_provider):
    provider_id = make_provider()
    form = at_idp(start(client, provider_id))
    with app.app_context():
        providers.set_enabled(providers.get_provider(provider_id), False)
        db.session.commit()
    assert client.get(f"/sso/{provider_id}").status_code == 403
    response = post_acs(client, form)
    assert_refused(app, client, response, "provider_disabled", 403)


# --- IdP-initiated sign-in -----------------------------------------------------------------
# --- linking from the profile ----------------------------------------------------------------
EXTERNAL_LOGINS = "/account/external-logins"


def press_link(client, provider_id) -> str:
    response = AuthActions(client).post(f"{EXTERNAL_LOGINS}/{provider_id}/link")
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def saml_logins(app) -> list[tuple]:
    with app.app_context():
        rows = db.session.execute(
            select(ExternalLogin.user_id, ExternalLogin.provider_id, ExternalLogin.subject)
        )
        return [tuple(row) for row in rows]


def test_a_password_user_links_the_saml_provider_then_signs_in_through_it(
    app, client, account, make_provider, make_user
):
    # The IdP's alice has another email than the Keyward user: only the link joins them.
    user = make_user("alice@keyward.example", account_id=account.id)
    provider_id = make_provider(jit_provisioning=False)
    assert sign_in(app.test_client(), provider_id).status_code == 403  # nobody here yet

    assert AuthActions(client).login(user.email).status_code == 303
    before = session_cookie(client, app)
    assert f'action="{EXTERNAL_LOGINS}/{provider_id}/link"' in client.get(EXTERNAL_LOGINS).text
    response = post_acs(client, at_idp(press_link(client, provider_id)))

    assert response.status_code == 303 and response.headers["Location"] == EXTERNAL_LOGINS
    assert "Your Acme SAML login is linked." in client.get(EXTERNAL_LOGINS).text
    assert session_cookie(client, app) == before  # a link signs nobody in
    assert saml_logins(app) == [(user.id, provider_id, "alice-0001")]
    [event] = audit_events(app, "auth.link.created")
    assert event["details"]["subject"] == "alice-0001"

    AuthActions(client).logout()
    assert sign_in(client, provider_id).status_code == 303
    me = whoami(client)
    assert (me["id"], me["provider_id"], me["subject"]) == (
        str(user.id),
        str(provider_id),
        "alice-0001",
    )


def test_an_old_session_confirms_through_its_saml_login_then_links_another(
    app, client, account, make_provider, make_user
):
    carol = make_user("carol@keyward.example", None, account_id=account.id)  # no password
    linked = make_provider(jit_provisioning=False)
    second = make_provider("AcmeSamlTwo", display_name="Acme Two", jit_provisioning=False)
    with app.app_context():
        db.session.add(ExternalLogin(user_id=carol.id, provider_id=linked, subject="alice-0001"))
        db.session.commit()
    assert sign_in(client, linked).status_code == 303
    set_session_times(
        app,
        session_cookie(client, app),
        authenticated_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30),
    )

    reauth = press_link(client, second)
    assert urlsplit(reauth).path == f"{EXTERNAL_LOGINS}/{second}/reauthenticate"
    assert "Confirm with Acme SAML" in client.get(reauth).text
    response = AuthActions(client).post(f"{reauth}/{linked}", token_from=reauth)
    assert response.status_code == 303
    # The IdP confirms carol through the linked login: a new session, then the link request.
    back = post_acs(client, at_idp(response.headers["Location"]))
    assert back.status_code == 303 and back.headers["Location"].startswith(idp_sso_url(app))
    done = post_acs(client, at_idp(back.headers["Location"]))

    assert done.status_code == 303 and done.headers["Location"] == EXTERNAL_LOGINS
    assert sorted(saml_logins(app), key=lambda row: row[1] == second) == [
        (carol.id, linked, "alice-0001"),
        (carol.id, second, "alice-0001"),
    ]
    assert whoami(client)["id"] == str(carol.id)
    # The re-authentication is a SAML session: it keeps the NameID format for single logout.
    current = session_row(app, session_cookie(client, app))
    assert current.provider_id == linked
    assert current.data["saml_nameid_format"] == saml.NAMEID_PERSISTENT
    [event] = audit_events(app, "auth.link.created")
    assert event["details"]["provider"] == str(second)


def idp_sso_url(app) -> str:
    with app.app_context():
        sso = db.session.scalars(select(SsoProvider.saml_sso_url)).first()
    return urlsplit(sso)._replace(query="").geturl()


def test_a_saml_link_answer_after_another_sign_in_in_that_browser_links_nothing(
    app, client, account, make_provider, make_user
):
    alice = make_user("alice@keyward.example", account_id=account.id)
    bob = make_user("bob@keyward.example", account_id=account.id)
    provider_id = make_provider(jit_provisioning=False)
    AuthActions(client).login(alice.email)
    answer = at_idp(press_link(client, provider_id))
    # Bob signs in in the same browser before the answer comes back (the pending request
    # travels with the session data): the flow was started by another user in another
    # session record.
    relogin = AuthActions(client).post("/login", {"email": bob.email, "password": DEFAULT_PASSWORD})
    assert relogin.status_code == 303
    assert whoami(client)["id"] == str(bob.id)

    response = post_acs(client, answer)

    assert response.status_code == 403, response.text
    assert "Traceback" not in response.text
    assert saml_logins(app) == []
    assert whoami(client)["id"] == str(bob.id)
    [event] = audit_events(app, "auth.link.refused")
    assert event["details"]["reason"] == "user_changed"


def _idp_initiated_form(idp: SamlIdp, scheme: str, relay_state: str | None = None):
    page = requests.get(
        idp.idp_initiated_url(sp_entity_id(scheme), "alice", relay_state), timeout=30
    )
    page.raise_for_status()
    return parse_form(page.text)


def test_idp_initiated_sign_in_is_refused_by_default(app, client, idp, make_provider):
    make_provider()
    form = _idp_initiated_form(idp, "AcmeSaml")
    relay = post_acs(client, form)
    assert relay.status_code == 200 and "keyward_relay" in relay.text
    response = client.post(urlsplit(form.action).path, data=relay_fields(relay.text))
    assert_refused(app, client, response, "unsolicited", 403)
    assert "Start from Keyward" in response.text


def test_idp_initiated_sign_in_works_when_allowed(app, client, idp, make_provider):
    provider_id = make_provider(saml_allow_idp_initiated=True)
    form = _idp_initiated_form(idp, "AcmeSaml", relay_state="/account")
    # The IdP's POST comes without any cookie: relayed, then completed.
    relay = post_acs(client, form)
    assert relay.status_code == 200
    response = client.post(urlsplit(form.action).path, data=relay_fields(relay.text))
    assert response.status_code == 303
    # A RelayState that is a local path is where the user is sent.
    assert response.headers["Location"] == "/account"
    me = whoami(client)
    assert (me["provider_id"], me["subject"]) == (str(provider_id), "alice-0001")


def test_idp_initiated_relay_state_is_never_an_open_redirect(client, idp, make_provider):
    make_provider(saml_allow_idp_initiated=True)
    form = _idp_initiated_form(idp, "AcmeSaml", relay_state="https://evil.example/")
    response = post_acs(client, form, keyward_relay="1")
    assert response.status_code == 303 and response.headers["Location"] == "/"


# --- single logout -------------------------------------------------------------------------
def test_sp_initiated_logout_goes_to_the_idp_and_comes_back(app, client, idp, make_provider):
    provider_id = make_provider()
    assert sign_in(client, provider_id).status_code == 303
    session = only_session(app)
    response = AuthActions(client).logout()
    assert response.status_code == 303
    location = response.headers["Location"]
    assert location.startswith(f"{idp.slo_url}?SAMLRequest=")
    # Signed out here at once, whatever the IdP does.
    assert whoami(client) == {"authenticated": False}
    assert signed_in_sessions(app) == 0
    at_idp_slo = requests.get(location, allow_redirects=False, timeout=30)
    assert at_idp_slo.status_code == 303
    back = at_idp_slo.headers["Location"]
    assert back.startswith(f"{PUBLIC_URL}/signout-AcmeSaml?SAMLResponse=")
    asked = [e for e in idp.events() if e["type"] == "logout_request"][-1]
    assert asked["issuer"] == sp_entity_id("AcmeSaml")
    assert asked["name_id"] == "alice-0001"
    assert asked["session_indexes"] == [session.idp_sid]
    parts = urlsplit(back)
    landed = client.get(f"{parts.path}?{parts.query}")
    assert landed.status_code == 303 and landed.headers["Location"] == "/login"
    assert "You have signed out." in client.get("/login").text
    # The LogoutResponse is used once: the same answer again gets no "signed out" claim.
    client.get(f"{parts.path}?{parts.query}")
    assert "did not confirm" in client.get("/login").text


def test_idp_initiated_logout_without_our_cookie_ends_the_session(app, client, idp, make_provider):
    provider_id = make_provider()
    assert sign_in(client, provider_id).status_code == 303
    other_browser = app.test_client()
    assert sign_in(other_browser, provider_id).status_code == 303  # a second session of alice
    sid = _sid_of(app, client)
    url = idp.logout_request_url("alice", sid, sp_entity_id=sp_entity_id("AcmeSaml"))
    parts = urlsplit(url)
    assert parts.path == "/signout-AcmeSaml"
    # Another site's redirect: no cookie.
    cookieless = app.test_client()
    response = cookieless.get(f"{parts.path}?{parts.query}")
    assert response.status_code == 303, response.text
    answer = response.headers["Location"]
    assert answer.startswith(f"{idp.slo_url}?SAMLResponse=")
    assert "Signature=" not in answer  # this SP does not sign (no key pair)
    assert whoami(client) == {"authenticated": False}
    # Only the session with that SessionIndex ended.
    assert whoami(other_browser)["authenticated"] is True
    event = audit_events(app, "auth.signout.saml")[-1]
    assert event["details"] == {"initiated_by": "idp", "sessions_ended": 1}
    # The IdP accepts the answer.
    assert requests.get(answer, timeout=30).status_code == 200
    assert [e for e in idp.events() if e["type"] == "logout_response"]
    # The same LogoutRequest again is refused (replay), with a clear page.
    again = cookieless.get(f"{parts.path}?{parts.query}")
    assert again.status_code == 400 and "already used" in again.text
    assert audit_events(app, "auth.signout.refused")[-1]["details"]["reason"] == "replay"


def test_idp_logout_request_without_session_index_ends_every_session_of_the_subject(
    app, client, idp, make_provider
):
    provider_id = make_provider()
    browsers = [client, app.test_client()]
    for browser in browsers:
        assert sign_in(browser, provider_id).status_code == 303
    url = idp.logout_request_url("alice", None, sp_entity_id=sp_entity_id("AcmeSaml"))
    parts = urlsplit(url)
    assert app.test_client().get(f"{parts.path}?{parts.query}").status_code == 303
    assert all(whoami(browser) == {"authenticated": False} for browser in browsers)


def test_forged_idp_logout_request_ends_nothing(app, client, idp, core, make_provider):
    provider_id = make_provider()
    assert sign_in(client, provider_id).status_code == 303
    # Signed by a key the provider does not trust (the in-process IdP's), same NameID.
    url, _ = core.logout_request_url(
        "alice",
        _sid_of(app, client),
        sp_entity_id=sp_entity_id("AcmeSaml"),
        destination=f"{PUBLIC_URL}/signout-AcmeSaml",
    )
    parts = urlsplit(url)
    response = app.test_client().get(f"{parts.path}?{parts.query}")
    assert response.status_code in (400, 401)
    assert whoami(client)["authenticated"] is True


def _sid_of(app, client) -> str:
    with app.app_context():
        token = client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value
        from app.services.sessions import hash_token

        return db.session.scalar(
            select(Session.idp_sid).where(Session.token_hash == hash_token(token))
        )


# --- certificates, signed requests, metadata, rename ---------------------------------------
def test_certificate_rollover_with_a_metadata_refresh(app, client, idp, make_provider, runner):
    provider_id = make_provider()
    assert sign_in(app.test_client(), provider_id).status_code == 303
    old_cert = idp.certificates[0]
    new_cert = idp.rotate_certificate(keep_old=True)
    # Before the refresh Keyward only trusts the old certificate.
    stale = app.test_client()
    response = sign_in(stale, provider_id)
    assert_refused(app, stale, response, "signature", 401, sessions=1)
    refreshed = runner.invoke(args=["providers", "refresh", str(provider_id), "--json"])
    assert refreshed.exit_code == 0, refreshed.output
    fingerprints = {saml.certificate_facts(pem)[0] for pem in (old_cert, new_cert)}
    with app.app_context():
        shown = providers.serialise(providers.get_provider(provider_id))
    assert {c["fingerprint"] for c in shown["certificates"]} == fingerprints
    assert shown["health"]["cert_expiry"] == min(c["not_after"] for c in shown["certificates"])
    # Signed with the new key while the old certificate is still listed: accepted.
    browser = app.test_client()
    assert sign_in(browser, provider_id).status_code == 303
    assert whoami(browser)["authenticated"] is True
    # The IdP drops the old certificate; the next refresh stops trusting it.
    idp.rotate_certificate(keep_old=False)
    assert runner.invoke(args=["providers", "refresh", str(provider_id)]).exit_code == 0
    with app.app_context():
        assert len(providers.get_provider(provider_id).certificates) == 1
    assert sign_in(app.test_client(), provider_id).status_code == 303
    changed = audit_events(app, "provider.certificates.updated")
    assert changed and changed[-1]["details"]["removed"]


def test_signed_requests_carry_the_sp_certificate_in_the_metadata(app, client, idp, make_provider):
    provider_id = make_provider(saml_sign_requests=True)
    metadata = client.get("/saml/AcmeSaml/metadata")
    root = etree.fromstring(metadata.data)
    descriptor = root.find("md:SPSSODescriptor", NS)
    assert descriptor.get("AuthnRequestsSigned") == "true"
    assert (
        descriptor.find("md:KeyDescriptor/ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS)
        is not None
    )
    location = start(client, provider_id)
    query = query_params(location)
    assert query["SigAlg"] == "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    assert "Signature" in query
    # The IdP verified the signature with the certificate from our metadata.
    assert post_acs(client, at_idp(location)).status_code == 303
    assert [e for e in idp.events() if e["type"] == "authn_request"][-1]["signed"] is True
    # Logout messages are signed too.
    response = AuthActions(client).logout()
    assert "Signature=" in response.headers["Location"]
    with app.app_context():
        row = providers.get_provider(provider_id)
        assert "PRIVATE KEY" not in (row.saml_sp_key_encrypted or "")
        assert "PRIVATE KEY" not in metadata.text


def test_sp_metadata_endpoint(app, client, make_provider, account):
    make_provider(register=False)
    response = client.get("/saml/AcmeSaml/metadata")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/samlmetadata+xml")
    root = etree.fromstring(response.data)
    assert root.get("entityID") == sp_entity_id("AcmeSaml")
    descriptor = root.find("md:SPSSODescriptor", NS)
    acs = descriptor.find("md:AssertionConsumerService", NS)
    assert acs.get("Location") == f"{PUBLIC_URL}/signin-AcmeSaml"
    assert acs.get("Binding") == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
    slo = descriptor.find("md:SingleLogoutService", NS)
    assert slo.get("Location") == f"{PUBLIC_URL}/signout-AcmeSaml"
    assert slo.get("Binding") == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
    formats = [n.text for n in descriptor.findall("md:NameIDFormat", NS)]
    assert formats[0] == "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    assert descriptor.get("WantAssertionsSigned") == "true"
    assert descriptor.find("md:KeyDescriptor", NS) is None  # requests are not signed
    # Case-insensitive like every callback; unknown schemes are 404.
    assert client.get("/saml/acmesaml/metadata").status_code == 200
    assert client.get("/saml/NoSuch/metadata").status_code == 404
    # The Host header changes nothing: the URLs come from PUBLIC_URL.
    forged = client.get("/saml/AcmeSaml/metadata", headers={"Host": "evil.example"})
    assert b"evil.example" not in forged.data


def test_renamed_scheme_keeps_working_through_its_alias(app, client, idp, make_provider):
    provider_id = make_provider("SamlOld")
    with app.app_context():
        provider = providers.get_provider(provider_id)
        fields = ProviderFields(
            protocol="saml",
            display_name="Acme SAML",
            scheme="SamlNew",
            saml_metadata_url=idp.metadata_url,
            jit_provisioning=True,
            trust_email_verified=True,
        )
        providers.update_provider(provider, fields)
        db.session.commit()
    # The IdP still knows only the old entity id and ACS: requests keep naming them.
    form = at_idp(start(client, provider_id))
    assert form.action == f"{PUBLIC_URL}/signin-SamlOld"
    assert post_acs(client, form).status_code == 303
    assert whoami(client)["provider_id"] == str(provider_id)
    old = etree.fromstring(client.get("/saml/SamlOld/metadata").data)
    assert old.get("entityID") == sp_entity_id("SamlOld")
    # Once the IdP has the new metadata and the admin ends the aliases, the new URLs serve.
    idp.add_sp(metadata_xml=client.get("/saml/SamlNew/metadata").text)
    with app.app_context():
        providers.end_scheme_aliases(providers.get_provider(provider_id))
        db.session.commit()
    browser = app.test_client()
    form = at_idp(start(browser, provider_id))
    assert form.action == f"{PUBLIC_URL}/signin-SamlNew"
    assert post_acs(browser, form).status_code == 303
    assert client.get("/saml/SamlOld/metadata").status_code == 404


# --- refusals of crafted answers ---------------------------------------------------------
def crafted(client, core: IdpCore, provider_id, user: str = "alice", **options):
    """An answer to an AuthnRequest this browser really got from Keyward, built (and
    broken by ``options``) by the in-process IdP: (ACS path, form)."""
    asked = core.parse_authn_request(query_params(start(client, provider_id)))
    xml = core.response_xml(
        user,
        sp_entity_id=asked["issuer"],
        acs=asked["acs"],
        in_response_to=asked["id"],
        **options,
    )
    return urlsplit(asked["acs"]).path, {"SAMLResponse": encode(xml), "RelayState": ""}


def test_a_crafted_valid_answer_signs_in(app, client, core, core_provider):
    path, form = crafted(client, core, core_provider)
    assert client.post(path, data=form).status_code == 303
    assert whoami(client)["subject"] == "alice-0001"


NEGATIVES = {
    "unsigned": (lambda: {"sign": "none"}, "unsigned", 401),
    "unknown-key": (lambda: {"key_pair": make_key_pair("attacker")}, "signature", 401),
    "signature-wrapping": (
        lambda: {"after_signing": wrap_with_evil_assertion("bob-0002")},
        "wrapping",
        400,
    ),
    "wrong-audience": (
        lambda: {"before_signing": set_audience(sp_entity_id("Other"))},
        "audience",
        400,
    ),
    "wrong-destination": (
        lambda: {"before_signing": set_destination(f"{PUBLIC_URL}/signin-Other")},
        "destination",
        400,
    ),
    "expired": (
        lambda: {"before_signing": shift_validity(issued=-dt.timedelta(hours=1))},
        "expired",
        400,
    ),
}


@pytest.mark.parametrize("case", list(NEGATIVES))
def test_broken_answers_are_refused_with_no_session(app, client, core, core_provider, case):
    options, reason, status = NEGATIVES[case]
    path, form = crafted(client, core, core_provider, **options())
    response = client.post(path, data=form)
    assert_refused(app, client, response, reason, status)
    assert saml._REFUSALS[reason][1] in html.unescape(response.text)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ExternalLogin)) == 0


def test_replayed_answers_are_refused(app, client, core, core_provider):
    path, form = crafted(client, core, core_provider)
    assert client.post(path, data=form).status_code == 303
    # The same answer again in the same browser: its request is answered already.
    again = app.test_client()
    response = again.post(path, data={**form, "keyward_relay": "1"})
    assert_refused(app, again, response, "in_response_to", 400, sessions=1)
    # An unsolicited answer (where InResponseTo cannot help) is caught by the replay cache.
    with app.app_context():
        provider = providers.get_provider(core_provider)
        provider.saml_allow_idp_initiated = True
        db.session.commit()
    xml = core.response_xml(
        "alice", sp_entity_id=sp_entity_id("CoreSaml"), acs=f"{PUBLIC_URL}{path}"
    )
    unsolicited = {"SAMLResponse": encode(xml), "keyward_relay": "1"}
    first = app.test_client()
    assert first.post(path, data=unsolicited).status_code == 303
    thief = app.test_client()
    assert_refused(app, thief, thief.post(path, data=unsolicited), "replay", 400, sessions=2)


def test_answer_to_another_browsers_request_is_refused(app, client, core, core_provider):
    path, form = crafted(client, core, core_provider)
    other = app.test_client()
    start(other, core_provider)  # the other browser has a request of its own
    response = other.post(path, data={**form, "keyward_relay": "1"})
    assert_refused(app, other, response, "in_response_to", 400)
    # The browser that asked can still use it.
    assert client.post(path, data=form).status_code == 303


def test_comment_inside_name_id_cannot_become_another_user(
    app, client, core, core_provider, make_user, account
):
    # The victim signs in with NameID "admin@x"; the attacker's IdP account is "admin@x.evil"
    # and a comment after "admin@x" must not make Keyward read only the first text node.
    victim = make_user("victim@acme.example", account_id=account.id)
    with app.app_context():
        db.session.add(
            ExternalLogin(user_id=victim.id, provider_id=core_provider, subject="admin@x")
        )
        provider = providers.get_provider(core_provider)
        provider.jit_provisioning = False
        db.session.commit()
    path, form = crafted(
        client, core, core_provider, user="mallory", after_signing=comment_in_name_id(7)
    )
    response = client.post(path, data=form)
    assert_refused(app, client, response, "no_account", 403)
    assert audit_events(app, "auth.signin.refused")[-1]["details"]["subject"] == "admin@x.evil"


def test_get_on_the_acs_is_a_clear_page(client, core_provider):
    response = client.get("/signin-CoreSaml")
    assert response.status_code == 405
    assert "by POST" in response.text


def test_pending_requests_per_browser_are_bounded(app, client, core, core_provider):
    from app.blueprints.auth import saml_flow

    asked = [
        core.parse_authn_request(query_params(start(client, core_provider)))
        for _ in range(saml_flow.MAX_PENDING + 2)
    ]
    with app.app_context():
        token = client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value
        from app.services.sessions import hash_token

        data = db.session.scalar(
            select(Session.data).where(Session.token_hash == hash_token(token))
        )
    kept = asked[-saml_flow.MAX_PENDING :]
    assert sorted(data[saml_flow.REQUESTS_KEY]) == sorted(a["id"] for a in kept)

    def answer(request):
        xml = core.response_xml(
            "alice",
            sp_entity_id=request["issuer"],
            acs=request["acs"],
            in_response_to=request["id"],
        )
        return {"SAMLResponse": encode(xml)}

    # The oldest request was dropped: its answer no longer belongs to this browser.
    response = client.post("/signin-CoreSaml", data=answer(asked[0]))
    assert_refused(app, client, response, "in_response_to", 400)
    assert client.post("/signin-CoreSaml", data=answer(asked[-1])).status_code == 303


def test_provider_without_its_metadata_yet_is_a_clear_503(app, client, idp, account):
    # Saved without fetching the metadata URL (the IdP was not reachable): no IdP settings
    # until a refresh loads them.
    with app.app_context():
        provider = providers.create_provider(
            ProviderFields(
                protocol="saml",
                display_name="Later SAML",
                scheme="LaterSaml",
                saml_metadata_url=idp.metadata_url,
            ),
            account=accounts.get_account(account.id),
            fetch_metadata=False,
        )
        db.session.commit()
        provider_id = provider.id
    response = client.get(f"/sso/{provider_id}")
    assert response.status_code == 503
    assert "not fully configured" in response.text
    assert response.headers["X-Request-ID"] in response.text
    assert audit_events(app, "auth.signin.refused")[-1]["details"]["reason"] == "configuration"
    with app.app_context():
        from app.services import metadata

        assert metadata.refresh_provider_metadata(providers.get_provider(provider_id)).ok
        db.session.commit()
    assert client.get(f"/sso/{provider_id}").status_code == 303
