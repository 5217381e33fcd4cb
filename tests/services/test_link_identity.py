"""linking.link_identity / unlink and their helpers: who may link what, conflicts, the
last-method guard, the re-authentication window, the flow binding and the audit trail.

As in test_linking.py, each call runs in an app context and is committed the way a view
does (a refusal commits its audit event alone); row counts show that a refusal wrote nothing
else.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import ExternalLogin
from app.models import SsoProvider
from app.models import User
from app.models.base import utcnow
from app.services import audit
from app.services import linking
from app.services import users
from app.services.errors import NotFound
from app.services.linking import ExternalIdentity
from app.services.linking import LinkRefused
from tests.helpers import audit_events

META = audit.RequestMeta(ip_address="203.0.113.7", request_id="req-link")


def make_provider(app, scheme: str, *, account_id: int | None = None, **fields) -> uuid.UUID:
    with app.app_context():
        provider = SsoProvider(
            scheme=scheme,
            scheme_key=scheme.lower(),
            display_name=f"{scheme} IdP",
            client_id="keyward",
            authority="https://idp.example.com",
            account_id=account_id,
            **fields,
        )
        db.session.add(provider)
        db.session.commit()
        return provider.id


def identity(subject: str = "sub-1", *, email: str | None = "me@idp.example", **claims):
    return ExternalIdentity(
        subject=subject,
        email=email,
        claims={"sub": subject, "email": email, **claims},
    )


def link(app, user_id, provider_id, ident: ExternalIdentity | None = None) -> dict:
    """Call link_identity and commit like the callback; returns the new row's columns."""
    with app.app_context():
        user = db.session.get(User, user_id)
        provider = db.session.get(SsoProvider, provider_id)
        try:
            login = linking.link_identity(user, provider, ident or identity(), meta=META)
        except LinkRefused:
            db.session.commit()
            raise
        db.session.commit()
        return {
            "user_id": login.user_id,
            "provider_id": login.provider_id,
            "subject": login.subject,
            "email": login.email,
            "created_at": login.created_at,
            "last_used_at": login.last_used_at,
        }


def refused(app, user_id, provider_id, ident: ExternalIdentity | None = None) -> LinkRefused:
    with pytest.raises(LinkRefused) as caught:
        link(app, user_id, provider_id, ident)
    return caught.value


def add_link(app, user_id, provider_id, subject: str) -> int:
    with app.app_context():
        login = ExternalLogin(user_id=user_id, provider_id=provider_id, subject=subject)
        db.session.add(login)
        db.session.commit()
        return login.id


def login_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(ExternalLogin))


def unlink(app, user_id, login_id):
    with app.app_context():
        user = db.session.get(User, user_id)
        try:
            linking.unlink(user, login_id, meta=META)
        except (LinkRefused, NotFound):
            db.session.rollback()
            raise
        db.session.commit()


@pytest.fixture
def acme(make_account):
    return make_account("Acme")


@pytest.fixture
def alice(make_user, acme):
    return make_user("alice@acme.example", account_id=acme.id)


@pytest.fixture
def bob(make_user, acme):
    return make_user("bob@acme.example", account_id=acme.id)


# --- link_identity ----------------------------------------------------------------------------
def test_link_adds_the_login_and_its_audit_event(app, alice, acme):
    provider_id = make_provider(app, "AcmeSSO", account_id=acme.id)
    row = link(app, alice.id, provider_id)
    assert row["user_id"] == alice.id and row["subject"] == "sub-1"
    assert row["email"] == "me@idp.example"  # the display hint
    assert row["created_at"] is not None and row["last_used_at"] is None
    [event] = audit_events(app, "auth.link.created")
    assert event["actor"] == alice.email and event["target_id"] == str(alice.id)
    assert event["details"] == {"provider": str(provider_id), "subject": "sub-1", "via": "profile"}
    assert event["ip"] == "203.0.113.7" and event["request_id"] == "req-link"


def test_after_linking_resolve_login_finds_the_same_user(app, alice, acme):
    provider_id = make_provider(app, "AcmeSSO", account_id=acme.id, jit_provisioning=True)
    link(app, alice.id, provider_id, identity("sub-1", email="someone.else@idp.example"))
    with app.app_context():
        provider = db.session.get(SsoProvider, provider_id)
        resolved = linking.resolve_login(provider, identity("sub-1"), meta=META)
        assert resolved.user.id == alice.id and not resolved.created and not resolved.linked


def test_builtin_providers_can_be_linked_by_anyone(app, make_user):
    loner = make_user("loner@example.com")
    google = make_provider(app, "google", builtin="google")
    assert link(app, loner.id, google)["user_id"] == loner.id


@pytest.mark.parametrize(
    ("setup", "reason", "status"),
    [
        ("inactive", "user_inactive", 403),
        ("disabled", "provider_disabled", 403),
        ("other_account", "not_available", 404),
    ],
)
def test_who_may_link_what(app, alice, acme, make_account, setup, reason, status):
    fields: dict = {"account_id": acme.id}
    if setup == "disabled":
        fields["enabled"] = False
    elif setup == "other_account":
        fields["account_id"] = make_account("Globex").id
    provider_id = make_provider(app, "Idp", **fields)
    if setup == "inactive":
        with app.app_context():
            users.deactivate_user(db.session.get(User, alice.id))
            db.session.commit()
    refusal = refused(app, alice.id, provider_id)
    assert (refusal.reason, refusal.status) == (reason, status)
    assert login_count(app) == 0
    [event] = audit_events(app, "auth.link.refused")
    assert event["details"]["reason"] == reason and event["target_id"] == str(alice.id)


def test_a_malformed_subject_is_refused_and_left_out_of_the_audit(app, alice, acme):
    provider_id = make_provider(app, "AcmeSSO", account_id=acme.id)
    refusal = refused(app, alice.id, provider_id, identity("bad\x00subject"))
    assert refusal.reason == "invalid_identity" and refusal.status == 400
    [event] = audit_events(app, "auth.link.refused")
    assert "subject" not in event["details"]


def test_the_cel_expression_must_allow_the_identity(app, alice, acme):
    provider_id = make_provider(
        app, "AcmeSSO", account_id=acme.id, authorization_expression='department == "it"'
    )
    assert refused(app, alice.id, provider_id, identity(department="sales")).reason == (
        "cel_refused"
    )
    assert login_count(app) == 0
    assert link(app, alice.id, provider_id, identity(department="it"))["subject"] == "sub-1"


def test_an_identity_linked_to_another_user_is_refused(app, alice, bob, acme):
    provider_id = make_provider(app, "AcmeSSO", account_id=acme.id)
    add_link(app, bob.id, provider_id, "sub-1")
    refusal = refused(app, alice.id, provider_id)
    assert (refusal.reason, refusal.status) == ("identity_taken", 409)
    with app.app_context():
        owner = db.session.scalar(select(ExternalLogin.user_id))
    assert owner == bob.id and login_count(app) == 1


def test_the_same_identity_twice_and_a_second_login_per_provider_are_refused(app, alice, acme):
    provider_id = make_provider(app, "AcmeSSO", account_id=acme.id)
    link(app, alice.id, provider_id)
    assert refused(app, alice.id, provider_id).reason == "already_linked"
    assert refused(app, alice.id, provider_id, identity("sub-2")).reason == "provider_linked"
    assert login_count(app) == 1


def test_an_identity_the_scim_directory_gives_to_another_member_is_refused(app, alice, bob, acme):
    provider_id = make_provider(app, "AcmeSSO", account_id=acme.id, external_id_claim="oid")
    with app.app_context():
        db.session.get(User, bob.id).external_id = "oid-of-bob"
        db.session.get(User, alice.id).external_id = "oid-of-alice"
        db.session.commit()
    refusal = refused(app, alice.id, provider_id, identity("sub-x", oid="oid-of-bob"))
    assert refusal.reason == "identity_taken"
    assert link(app, alice.id, provider_id, identity("sub-a", oid="oid-of-alice"))


def test_a_lost_race_on_the_unique_constraint_is_refused_like_the_sequential_case(
    app, alice, bob, acme, monkeypatch
):
    provider_id = make_provider(app, "AcmeSSO", account_id=acme.id)
    add_link(app, bob.id, provider_id, "sub-1")
    # As if bob's link had been committed between alice's checks and her insert.
    monkeypatch.setattr(linking, "_check_link_conflicts", lambda *args: None)
    assert refused(app, alice.id, provider_id).reason == "identity_taken"
    add_link(app, alice.id, provider_id, "sub-first")
    assert refused(app, alice.id, provider_id, identity("sub-2")).reason == "provider_linked"
    assert login_count(app) == 2


# --- what the page offers ---------------------------------------------------------------------
def test_linkable_providers_and_provider_for_link(app, alice, acme, make_account):
    globex = make_account("Globex")
    google = make_provider(app, "google", builtin="google")
    own = make_provider(app, "AcmeSSO", account_id=acme.id)
    hidden = make_provider(app, "AcmeHidden", account_id=acme.id, visible=False)
    off = make_provider(app, "AcmeOff", account_id=acme.id, enabled=False)
    other = make_provider(app, "GlobexSSO", account_id=globex.id)
    saml = make_provider(app, "AcmeSaml", account_id=acme.id, protocol="saml")
    add_link(app, alice.id, own, "s")
    with app.app_context():
        user = db.session.get(User, alice.id)
        assert [p.id for p in linking.linkable_providers(user)] == [google, hidden, saml]
        assert linking.provider_for_link(user, str(google)).id == google
        assert linking.provider_for_link(user, str(saml)).id == saml
        for guid in (other, uuid.uuid4(), "not-a-guid"):
            with pytest.raises(NotFound):
                linking.provider_for_link(user, str(guid))
        with pytest.raises(LinkRefused, match="disabled"):
            linking.provider_for_link(user, off)
        with pytest.raises(LinkRefused, match="Unlink it first"):
            linking.provider_for_link(user, own)
        [row] = linking.list_external_logins(user)
        assert row.provider.id == own and row.account_name == "Acme" and row.removable


def test_needs_reauthentication_after_ten_minutes():
    now = utcnow()
    assert linking.needs_reauthentication(None, now=now)
    assert not linking.needs_reauthentication(now - timedelta(minutes=9, seconds=59), now=now)
    assert not linking.needs_reauthentication(now - timedelta(minutes=10), now=now)
    assert linking.needs_reauthentication(now - timedelta(minutes=10, seconds=1), now=now)


# --- the flow binding ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("who", "session", "reason"),
    [
        (None, None, "signed_out"),
        ("bob", "started", "user_changed"),
        ("alice", "another", "session_changed"),
    ],
)
def test_a_flow_is_bound_to_its_user_and_session(app, alice, bob, acme, who, session, reason):
    provider_id = make_provider(app, "AcmeSSO", account_id=acme.id)
    started_in = str(uuid.uuid4())
    sessions = {"started": started_in, "another": str(uuid.uuid4()), None: None}
    people = {"alice": alice.id, "bob": bob.id}
    with app.app_context():
        user = db.session.get(User, people[who]) if who else None
        with pytest.raises(LinkRefused) as caught:
            linking.check_flow_binding(
                db.session.get(SsoProvider, provider_id),
                started_by=str(alice.id),
                started_in=started_in,
                user=user,
                session_id=sessions[session],
                intent="link",
                meta=META,
            )
        db.session.commit()
    assert caught.value.reason == reason
    [event] = audit_events(app, "auth.link.refused")
    assert event["target_id"] == str(alice.id)
    assert event["details"] == {"reason": reason, "provider": str(provider_id), "intent": "link"}
    with app.app_context():
        linking.check_flow_binding(
            db.session.get(SsoProvider, provider_id),
            started_by=str(alice.id),
            started_in=started_in,
            user=db.session.get(User, alice.id),
            session_id=started_in,
            intent="link",
            meta=META,
        )


def test_reauthentication_accepts_only_the_users_own_login(app, alice, bob, acme):
    provider_id = make_provider(app, "AcmeSSO", account_id=acme.id)
    add_link(app, alice.id, provider_id, "alice-sub")
    add_link(app, bob.id, provider_id, "bob-sub")
    with app.app_context():
        user = db.session.get(User, alice.id)
        provider = db.session.get(SsoProvider, provider_id)
        for subject in ("bob-sub", "nobody"):
            with pytest.raises(LinkRefused, match="not linked to your"):
                linking.confirm_reauthentication(user, provider, identity(subject), meta=META)
        login = linking.confirm_reauthentication(user, provider, identity("alice-sub"), meta=META)
        assert login.last_used_at is not None
        db.session.commit()
    succeeded = audit_events(app, "auth.signin.succeeded")[-1]["details"]
    assert succeeded["reauthentication"] is True
    assert [e["details"]["reason"] for e in audit_events(app, "auth.signin.refused")] == [
        "reauth_mismatch",
        "reauth_mismatch",
    ]


# --- unlink -----------------------------------------------------------------------------------
def test_unlink_removes_the_login_and_audits_it(app, alice, acme):
    provider_id = make_provider(app, "AcmeSSO", account_id=acme.id)
    login_id = add_link(app, alice.id, provider_id, "sub-9")
    unlink(app, alice.id, login_id)
    assert login_count(app) == 0
    [event] = audit_events(app, "auth.link.removed")
    assert event["actor"] == alice.email
    assert event["details"] == {"provider": str(provider_id), "subject": "sub-9"}


def test_unlink_of_someone_elses_or_an_unknown_login_is_not_found(app, alice, bob, acme):
    provider_id = make_provider(app, "AcmeSSO", account_id=acme.id)
    login_id = add_link(app, bob.id, provider_id, "bob-sub")
    for key in (login_id, 424242, "nope"):
        with pytest.raises(NotFound):
            unlink(app, alice.id, key)
    assert login_count(app) == 1


def test_the_last_way_in_is_kept(app, make_user, acme):
    carol = make_user("carol@acme.example", None, account_id=acme.id)
    google = make_provider(app, "google", builtin="google")
    acme_sso = make_provider(app, "AcmeSSO", account_id=acme.id)
    off = make_provider(app, "AcmeOff", account_id=acme.id, enabled=False)
    google_login = add_link(app, carol.id, google, "g")
    off_login = add_link(app, carol.id, off, "o")
    # The only other login is at a disabled provider: no way in either.
    with pytest.raises(LinkRefused) as caught:
        unlink(app, carol.id, google_login)
    assert caught.value.reason == "last_method" and "Set a password first" in str(caught.value)
    # A login at a disabled provider can go while an enabled one stays.
    unlink(app, carol.id, off_login)
    acme_login = add_link(app, carol.id, acme_sso, "a")
    unlink(app, carol.id, google_login)
    with pytest.raises(LinkRefused):
        unlink(app, carol.id, acme_login)
    # With a password, the last login can go.
    with app.app_context():
        user = db.session.get(User, carol.id)
        users.change_password(user, None, "tulip orbit lantern 73", keep_session_id=None, meta=META)
        db.session.commit()
    unlink(app, carol.id, acme_login)
    assert login_count(app) == 0
