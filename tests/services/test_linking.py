"""linking.resolve_login: DESIGN's sign-in resolution order, refusals, CEL, audit and races.

Each test calls the service inside an app context and then commits, as a view does: on
success the sign-in's writes, on refusal the audit event alone. Row counts before and after
show that a refused sign-in changed nothing else.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import ExternalLogin
from app.models import Membership
from app.models import Role
from app.models import SsoProvider
from app.models import User
from app.services import accounts
from app.services import audit
from app.services import linking
from app.services import users
from app.services.linking import ExternalIdentity
from app.services.linking import SignInRefused
from tests.helpers import audit_actions
from tests.helpers import audit_events

META = audit.RequestMeta(ip_address="203.0.113.9", request_id="req-linking")
SUBJECT = "248289761001"


# --- helpers ------------------------------------------------------------------------------
def make_provider(app, *, account_id: int | None, scheme: str = "AcmeSSO", **fields) -> uuid.UUID:
    """An SsoProvider row built directly (the provider service is not under test here)."""
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


def identity(
    subject: str = SUBJECT,
    *,
    email: str | None = None,
    verified: bool = False,
    claims: dict | None = None,
    **names: str,
) -> ExternalIdentity:
    base = {"sub": subject, "iss": "https://idp.example.com"}
    if email is not None:
        base.update(email=email, email_verified=verified)
    return ExternalIdentity(
        subject=subject,
        email=email,
        email_verified=verified,
        given_name=names.get("given_name"),
        family_name=names.get("family_name"),
        name=names.get("name"),
        claims={**base, **(claims or {})},
        sid="sid-1",
    )


def resolve(app, provider_id: uuid.UUID, ident: ExternalIdentity) -> SimpleNamespace:
    """Call the service and commit, like the callback view (refusals commit the audit)."""
    with app.app_context():
        provider = db.session.get(SsoProvider, provider_id)
        try:
            result = linking.resolve_login(provider, ident, meta=META)
        except SignInRefused:
            db.session.commit()
            raise
        db.session.commit()
        return SimpleNamespace(
            user_id=result.user.id,
            created=result.created,
            linked=result.linked,
            login_id=result.login.id,
        )


def refused(app, provider_id: uuid.UUID, ident: ExternalIdentity) -> SignInRefused:
    with pytest.raises(SignInRefused) as caught:
        resolve(app, provider_id, ident)
    return caught.value


def add_link(app, user_id: uuid.UUID, provider_id: uuid.UUID, subject: str = SUBJECT) -> None:
    with app.app_context():
        db.session.add(ExternalLogin(user_id=user_id, provider_id=provider_id, subject=subject))
        db.session.commit()


def set_user(app, user_id: uuid.UUID, **values) -> None:
    with app.app_context():
        user = db.session.get(User, user_id)
        for name, value in values.items():
            setattr(user, name, value)
        db.session.commit()


def counts(app) -> dict[str, int]:
    with app.app_context():
        return {
            model.__tablename__: db.session.scalar(select(func.count()).select_from(model))
            for model in (User, Membership, ExternalLogin)
        }


def links(app) -> list[tuple[uuid.UUID, uuid.UUID, str]]:
    with app.app_context():
        rows = db.session.scalars(select(ExternalLogin).order_by(ExternalLogin.id))
        return [(row.user_id, row.provider_id, row.subject) for row in rows]


def role_of(app, user_id: uuid.UUID, account_id: int) -> str | None:
    with app.app_context():
        return db.session.scalar(
            select(Membership.role).where(
                Membership.user_id == user_id, Membership.account_id == account_id
            )
        )


@pytest.fixture
def account(make_account):
    return make_account("Acme", "acme")


@pytest.fixture
def other_account(make_account):
    return make_account("Globex", "globex")


# --- 1. the (provider, subject) link ------------------------------------------------------
def test_existing_link_signs_in_and_records_use(app, account, make_user):
    user = make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(app, account_id=account.id)
    add_link(app, user.id, provider_id)

    result = resolve(app, provider_id, identity(email="ada@example.com"))

    assert (result.user_id, result.created, result.linked) == (user.id, False, False)
    with app.app_context():
        login = db.session.get(ExternalLogin, result.login_id)
        assert login.last_used_at is not None
        # The hint is filled in when the link had none; it is never used to sign in.
        assert login.email == "ada@example.com"


def test_existing_link_wins_over_a_verified_email_match(app, account, make_user):
    linked_user = make_user("ada@example.com", account_id=account.id)
    email_user = make_user("grace@example.com", account_id=account.id)
    provider_id = make_provider(app, account_id=account.id)
    add_link(app, linked_user.id, provider_id)

    result = resolve(app, provider_id, identity(email="grace@example.com", verified=True))

    assert result.user_id == linked_user.id
    assert links(app) == [(linked_user.id, provider_id, SUBJECT)]
    assert email_user.id not in {row[0] for row in links(app)}


def test_link_of_another_provider_does_not_match(app, account, make_user):
    user = make_user("ada@example.com", account_id=account.id)
    other_provider = make_provider(app, account_id=account.id, scheme="Other")
    provider_id = make_provider(app, account_id=account.id)
    add_link(app, user.id, other_provider)

    assert refused(app, provider_id, identity()).reason == "no_account"


# --- 2. SCIM external_id ------------------------------------------------------------------
def test_scim_user_matched_by_subject_is_linked(app, account, make_user):
    user = make_user("ada@example.com", None, account_id=account.id)
    set_user(app, user.id, external_id=SUBJECT)
    provider_id = make_provider(app, account_id=account.id)

    # No email at all: only the externalId can have matched.
    result = resolve(app, provider_id, identity())

    assert (result.user_id, result.created, result.linked) == (user.id, False, True)
    assert links(app) == [(user.id, provider_id, SUBJECT)]
    [event] = audit_events(app, "auth.link.created")
    assert event["details"] == {
        "provider": str(provider_id),
        "subject": SUBJECT,
        "via": "external_id",
    }


def test_scim_user_matched_by_configured_claim(app, account, make_user):
    oid = "7d3a1b52-7f4f-4c0e-9f3c-0b6f1f0a2c11"
    user = make_user("ada@example.com", None, account_id=account.id)
    set_user(app, user.id, external_id=oid)
    provider_id = make_provider(app, account_id=account.id, external_id_claim="oid")

    result = resolve(app, provider_id, identity("pairwise-sub", claims={"oid": oid}))

    assert (result.user_id, result.linked) == (user.id, True)
    assert links(app) == [(user.id, provider_id, "pairwise-sub")]


def test_configured_claim_replaces_the_subject(app, account, make_user):
    user = make_user("ada@example.com", None, account_id=account.id)
    set_user(app, user.id, external_id=SUBJECT)
    provider_id = make_provider(app, account_id=account.id, external_id_claim="oid")

    # The subject equals the externalId, but the provider says to match on oid (absent).
    assert refused(app, provider_id, identity()).reason == "no_account"


def test_scim_user_outside_the_providers_account_is_not_matched(
    app, account, other_account, make_user
):
    outsider = make_user("ada@example.com", None, account_id=other_account.id)
    set_user(app, outsider.id, external_id=SUBJECT)
    provider_id = make_provider(app, account_id=account.id)
    before = counts(app)

    refusal = refused(app, provider_id, identity())

    assert refusal.reason == "no_account"
    assert counts(app) == before


def test_external_id_is_not_used_by_a_builtin_provider(app, account, make_user):
    user = make_user("ada@example.com", None, account_id=account.id)
    set_user(app, user.id, external_id=SUBJECT)
    provider_id = make_provider(app, account_id=None, scheme="google", builtin="google")

    assert refused(app, provider_id, identity()).reason == "no_account"
    assert links(app) == []


def test_two_members_with_one_external_id_are_refused(app, account, make_user):
    for email in ("ada@example.com", "grace@example.com"):
        user = make_user(email, None, account_id=account.id)
        set_user(app, user.id, external_id=SUBJECT)
    provider_id = make_provider(app, account_id=account.id)

    assert refused(app, provider_id, identity()).reason == "external_id_ambiguous"
    assert links(app) == []


def test_scim_user_linked_to_another_subject_is_refused(app, account, make_user):
    user = make_user("ada@example.com", None, account_id=account.id)
    set_user(app, user.id, external_id=SUBJECT)
    provider_id = make_provider(app, account_id=account.id, external_id_claim="oid")
    add_link(app, user.id, provider_id, subject="older-subject")

    refusal = refused(app, provider_id, identity("newer-subject", claims={"oid": SUBJECT}))

    assert refusal.reason == "link_conflict"
    assert links(app) == [(user.id, provider_id, "older-subject")]


# --- 3. verified email --------------------------------------------------------------------
def test_verified_email_links_the_existing_user(app, account, make_user):
    user = make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(app, account_id=account.id)

    result = resolve(app, provider_id, identity(email="Ada@Example.com", verified=True))

    assert (result.user_id, result.created, result.linked) == (user.id, False, True)
    with app.app_context():
        assert db.session.get(ExternalLogin, result.login_id).email == "ada@example.com"


def test_trusted_provider_links_by_email_without_the_claim(app, account, make_user):
    user = make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(app, account_id=account.id, trust_email_verified=True)

    result = resolve(app, provider_id, identity(email="ada@example.com", verified=False))

    assert (result.user_id, result.linked) == (user.id, True)


@pytest.mark.parametrize("jit", [True, False])
def test_unverified_taken_email_never_links_nor_provisions(app, account, make_user, jit):
    make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(app, account_id=account.id, jit_provisioning=jit)
    before = counts(app)

    refusal = refused(app, provider_id, identity(email="ada@example.com", verified=False))

    assert refusal.reason == "email_unverified"
    assert refusal.status == 403
    assert "link" in refusal.message and "profile" in refusal.message
    assert counts(app) == before


def test_unverified_new_email_is_provisioned_when_jit_is_on(app, account):
    provider_id = make_provider(app, account_id=account.id, jit_provisioning=True)

    result = resolve(app, provider_id, identity(email="new@example.com", verified=False))

    assert (result.created, result.linked) == (True, True)


def test_email_user_linked_to_another_subject_is_refused(app, account, make_user):
    user = make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(app, account_id=account.id)
    add_link(app, user.id, provider_id, subject="older-subject")

    refusal = refused(app, provider_id, identity(email="ada@example.com", verified=True))

    assert refusal.reason == "email_taken"
    assert links(app) == [(user.id, provider_id, "older-subject")]


def test_builtin_provider_links_by_verified_email(app, make_user):
    user = make_user("ada@example.com")
    provider_id = make_provider(app, account_id=None, scheme="google", builtin="google")

    result = resolve(app, provider_id, identity(email="ada@example.com", verified=True))

    assert (result.user_id, result.linked) == (user.id, True)
    assert counts(app)["memberships"] == 0


# --- 4. just-in-time provisioning ---------------------------------------------------------
def test_jit_creates_user_membership_and_link(app, account):
    provider_id = make_provider(
        app, account_id=account.id, jit_provisioning=True, default_role="admin"
    )

    result = resolve(
        app,
        provider_id,
        identity(
            email="New.Person@Example.com",
            verified=True,
            given_name="New",
            family_name="Person",
        ),
    )

    assert (result.created, result.linked) == (True, True)
    with app.app_context():
        user = db.session.get(User, result.user_id)
        assert isinstance(user.id, uuid.UUID)
        assert user.email == "new.person@example.com"
        assert (user.given_name, user.family_name) == ("New", "Person")
        assert user.password_hash is None and user.active
        # The account whose sign-in created the user manages it (its SCIM may change it).
        assert user.managed_by_account_id == account.id
    assert role_of(app, result.user_id, account.id) == "admin"
    assert links(app) == [(result.user_id, provider_id, SUBJECT)]
    [event] = audit_events(app, "user.provisioned")
    assert event["target_id"] == str(result.user_id)
    assert event["details"] == {"provider": str(provider_id), "role": "admin"}


def test_jit_keeps_a_full_name_whole(app, account):
    provider_id = make_provider(app, account_id=account.id, jit_provisioning=True)

    result = resolve(app, provider_id, identity(email="n@example.com", name=" Ada  Lovelace "))

    with app.app_context():
        user = db.session.get(User, result.user_id)
        assert (user.given_name, user.family_name) == ("Ada  Lovelace", None)


def test_jit_off_refuses_no_account(app, account):
    provider_id = make_provider(app, account_id=account.id, jit_provisioning=False)

    refusal = refused(app, provider_id, identity(email="new@example.com", verified=True))

    assert (refusal.reason, refusal.status) == ("no_account", 403)
    assert "invite" in refusal.message
    assert counts(app) == {"users": 0, "memberships": 0, "external_logins": 0}


def test_builtin_provider_never_provisions(app):
    provider_id = make_provider(
        app, account_id=None, scheme="google", builtin="google", jit_provisioning=True
    )

    assert refused(app, provider_id, identity(email="new@example.com", verified=True)).reason == (
        "no_account"
    )
    assert counts(app)["users"] == 0


@pytest.mark.parametrize("email", [None, "not-an-email", "   "])
def test_jit_without_a_usable_email_is_refused(app, account, email):
    provider_id = make_provider(app, account_id=account.id, jit_provisioning=True)

    assert refused(app, provider_id, identity(email=email, verified=True)).reason == "no_email"
    assert counts(app)["users"] == 0


def test_jit_adds_a_non_member_found_by_link_to_the_account(app, account, make_user):
    user = make_user("ada@example.com")
    provider_id = make_provider(
        app, account_id=account.id, jit_provisioning=True, default_role="member"
    )
    add_link(app, user.id, provider_id)

    resolve(app, provider_id, identity())

    assert role_of(app, user.id, account.id) == "member"


def test_jit_never_changes_an_existing_role(app, account, make_user):
    user = make_user("ada@example.com", account_id=account.id, role="owner")
    provider_id = make_provider(
        app, account_id=account.id, jit_provisioning=True, default_role="member"
    )

    resolve(app, provider_id, identity(email="ada@example.com", verified=True))

    assert role_of(app, user.id, account.id) == "owner"


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("trusted", [True, False])
def test_an_account_provider_never_links_a_user_of_another_account_by_email(
    app, account, make_account, make_user, jit, trusted
):
    """Cross-account takeover: an account admin controls its IdP (and trust_email_verified),
    so its "verified" email must not reach a user who is not a member of that account."""
    other = make_account("Globex")
    victim = make_user("owner@globex.example", account_id=other.id, role="owner")
    provider_id = make_provider(
        app, account_id=account.id, jit_provisioning=jit, trust_email_verified=trusted
    )
    before = counts(app)

    refusal = refused(app, provider_id, identity(email="owner@globex.example", verified=True))

    assert refusal.reason == "email_taken"
    assert counts(app) == before
    assert role_of(app, victim.id, account.id) is None


def test_a_builtin_provider_links_any_user_by_verified_email(app, make_user):
    user = make_user("ada@example.com")
    provider_id = make_provider(app, account_id=None, scheme="google", builtin="google")

    result = resolve(app, provider_id, identity(email="ada@example.com", verified=True))

    assert (result.user_id, result.linked) == (user.id, True)


# --- deactivated users, disabled providers, malformed identities --------------------------
def test_inactive_linked_user_is_refused(app, account, make_user):
    user = make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(app, account_id=account.id)
    add_link(app, user.id, provider_id)
    set_user(app, user.id, active=False)

    refusal = refused(app, provider_id, identity())

    assert (refusal.reason, refusal.status) == ("user_inactive", 403)
    [event] = audit_events(app, "auth.signin.refused")
    assert event["actor"] == "ada@example.com"


def test_inactive_user_matched_by_email_is_refused_and_not_linked(app, account, make_user):
    user = make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(app, account_id=account.id, jit_provisioning=True)
    set_user(app, user.id, active=False)
    before = counts(app)

    assert refused(app, provider_id, identity(email="ada@example.com", verified=True)).reason == (
        "user_inactive"
    )
    # Neither the link nor the JIT membership was written.
    assert counts(app) == before


def test_disabled_provider_is_refused(app, account, make_user):
    user = make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(app, account_id=account.id, enabled=False)
    add_link(app, user.id, provider_id)

    assert refused(app, provider_id, identity()).reason == "provider_disabled"


@pytest.mark.parametrize("subject", ["", "   ", "x" * 256, "abc\x00def", "line\nbreak"])
def test_malformed_subject_is_refused_with_400(app, account, subject):
    provider_id = make_provider(app, account_id=account.id, jit_provisioning=True)

    refusal = refused(app, provider_id, identity(subject, email="new@example.com", verified=True))

    assert (refusal.reason, refusal.status) == ("invalid_identity", 400)
    assert counts(app)["users"] == 0
    [event] = audit_events(app, "auth.signin.refused")
    assert "subject" not in event["details"]


def test_longest_subject_is_accepted(app, account):
    provider_id = make_provider(app, account_id=account.id, jit_provisioning=True)

    result = resolve(app, provider_id, identity("x" * 255, email="n@example.com"))

    assert result.linked


# --- CEL authorisation (rule 2) -----------------------------------------------------------
def test_cel_false_refuses_before_any_write(app, account):
    provider_id = make_provider(
        app,
        account_id=account.id,
        jit_provisioning=True,
        authorization_expression='"keyward-users" in groups',
    )

    refusal = refused(
        app,
        provider_id,
        identity(email="new@example.com", verified=True, claims={"groups": ["staff"]}),
    )

    assert (refusal.reason, refusal.status) == ("cel_refused", 403)
    assert counts(app) == {"users": 0, "memberships": 0, "external_logins": 0}
    # The account's creation, then the refusal: nothing else reached the database.
    assert audit_actions(app) == ["account.created", "auth.signin.refused"]
    [event] = audit_events(app, "auth.signin.refused")
    assert event["details"]["detail"] == "returned false"


def test_cel_refuses_an_existing_user_without_touching_the_link(app, account, make_user):
    user = make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(
        app, account_id=account.id, authorization_expression='claims.tid == "contoso"'
    )
    add_link(app, user.id, provider_id)

    refusal = refused(app, provider_id, identity(claims={"tid": "fabrikam"}))

    assert refusal.reason == "cel_refused"
    with app.app_context():
        assert db.session.scalar(select(ExternalLogin.last_used_at)) is None


def test_cel_error_refuses(app, account, make_user):
    make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(
        app, account_id=account.id, authorization_expression='department == "it"'
    )

    refusal = refused(app, provider_id, identity(email="ada@example.com", verified=True))

    assert refusal.reason == "cel_refused"
    assert links(app) == []


def test_cel_true_allows(app, account):
    provider_id = make_provider(
        app,
        account_id=account.id,
        jit_provisioning=True,
        authorization_expression='"keyward-users" in groups && email_verified',
    )

    result = resolve(
        app,
        provider_id,
        identity(email="new@example.com", verified=True, claims={"groups": ["keyward-users"]}),
    )

    assert result.created


# --- audit --------------------------------------------------------------------------------
def test_success_is_audited(app, account):
    provider_id = make_provider(app, account_id=account.id, jit_provisioning=True)

    result = resolve(app, provider_id, identity(email="new@example.com", verified=True))

    assert audit_actions(app) == [
        "account.created",
        "user.created",
        "user.provisioned",
        "membership.created",
        "auth.link.created",
        "auth.signin.succeeded",
    ]
    [event] = audit_events(app, "auth.signin.succeeded")
    assert event["actor"] == "new@example.com"
    assert event["target_id"] == str(result.user_id)
    assert (event["ip"], event["request_id"]) == (META.ip_address, META.request_id)
    assert event["details"] == {
        "method": "oidc",
        "provider": str(provider_id),
        "created": True,
        "linked": True,
    }


def test_refusal_is_audited_without_claim_values(app, account, make_user):
    make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(app, account_id=account.id)

    refused(
        app,
        provider_id,
        identity(email="ada@example.com", claims={"groups": ["secret-group"]}, name="Ada"),
    )

    [event] = audit_events(app, "auth.signin.refused")
    assert event["details"] == {
        "method": "oidc",
        "provider": str(provider_id),
        "reason": "email_unverified",
        "subject": SUBJECT,
    }
    # The matched user is the target, not the actor: someone else may have typed the email.
    assert event["actor"] is None
    assert (event["ip"], event["request_id"]) == (META.ip_address, META.request_id)
    with app.app_context():
        user_id = users.find_by_email("ada@example.com").id
    assert event["target_id"] == str(user_id)


def test_refusal_messages_carry_no_claim_values(app, account):
    provider_id = make_provider(app, account_id=account.id)

    refusal = refused(app, provider_id, identity(email="new@example.com", verified=True))

    assert "new@example.com" not in refusal.message
    assert SUBJECT not in refusal.message


# --- transactions -------------------------------------------------------------------------
def test_the_callers_rollback_undoes_every_write(app, account):
    """Services never commit: not even the SAVEPOINT may commit early (SQLite's pysqlite)."""
    provider_id = make_provider(app, account_id=account.id, jit_provisioning=True)

    with app.app_context():
        provider = db.session.get(SsoProvider, provider_id)
        linking.resolve_login(provider, identity(email="new@example.com"), meta=META)
        db.session.rollback()

    assert counts(app) == {"users": 0, "memberships": 0, "external_logins": 0}
    assert audit_actions(app) == ["account.created"]


def test_concurrent_first_sign_in_reuses_the_winners_link(
    app, make_app, account, make_user, monkeypatch
):
    """Another process links the same subject after our last lookup, before our insert: the
    unique constraint refuses our row, and the winner's link is used instead of a 500."""
    user = make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(app, account_id=account.id)
    other = make_app()
    real_find_login = linking._find_login
    rereads = []

    def provider_login_racing(provider, found_user):
        with other.app_context():
            db.session.add(ExternalLogin(user_id=user.id, provider_id=provider_id, subject=SUBJECT))
            db.session.commit()
        return None

    def find_login_counting(provider, subject):
        rereads.append(subject)
        return real_find_login(provider, subject)

    monkeypatch.setattr(linking, "_find_provider_login_of", provider_login_racing)
    monkeypatch.setattr(linking, "_find_login", find_login_counting)

    result = resolve(app, provider_id, identity(email="ada@example.com", verified=True))

    assert len(rereads) == 2  # the step-1 lookup, then the re-read after the violation
    assert (result.user_id, result.created, result.linked) == (user.id, False, False)
    assert links(app) == [(user.id, provider_id, SUBJECT)]
    assert "auth.link.created" not in audit_actions(app)
    with app.app_context():
        assert db.session.get(ExternalLogin, result.login_id).last_used_at is not None


def test_link_made_since_the_first_lookup_is_used(app, make_app, account, make_user, monkeypatch):
    user = make_user("ada@example.com", account_id=account.id)
    provider_id = make_provider(app, account_id=account.id)
    other = make_app()
    real_find_login = linking._find_login

    def find_login_racing(provider, subject):
        with other.app_context():
            db.session.add(ExternalLogin(user_id=user.id, provider_id=provider_id, subject=subject))
            db.session.commit()
        monkeypatch.setattr(linking, "_find_login", real_find_login)
        return None

    monkeypatch.setattr(linking, "_find_login", find_login_racing)

    result = resolve(app, provider_id, identity(email="ada@example.com", verified=True))

    assert (result.user_id, result.linked) == (user.id, False)
    assert links(app) == [(user.id, provider_id, SUBJECT)]


def test_concurrent_jit_reuses_the_user_the_other_sign_in_created(
    app, make_app, account, monkeypatch
):
    provider_id = make_provider(app, account_id=account.id, jit_provisioning=True)
    other = make_app()

    def find_login_racing(provider, subject):
        # The other process provisions the same person and commits after our lookups.
        with other.app_context():
            winner = users.create_user("new@example.com")
            accounts.add_member(accounts.get_account(account.id), winner, Role.MEMBER)
            db.session.add(ExternalLogin(user=winner, provider_id=provider_id, subject=subject))
            db.session.commit()
        monkeypatch.setattr(linking, "_find_login", real_find_login)
        return None

    real_find_login = linking._find_login
    monkeypatch.setattr(linking, "_find_login", find_login_racing)
    monkeypatch.setattr(linking, "_find_user_by_email", lambda email: None)

    result = resolve(app, provider_id, identity(email="new@example.com"))

    assert (result.created, result.linked) == (False, False)
    assert counts(app) == {"users": 1, "memberships": 1, "external_logins": 1}
    with app.app_context():
        assert db.session.get(User, result.user_id).email == "new@example.com"
    assert "user.provisioned" not in audit_actions(app)


def test_lost_race_for_the_email_under_another_subject_is_refused(
    app, make_app, account, monkeypatch
):
    provider_id = make_provider(app, account_id=account.id, jit_provisioning=True)
    other = make_app()

    def find_user_racing(email):
        # Someone else takes the email (another subject, no link for ours) after our lookup.
        with other.app_context():
            users.create_user(email)
            db.session.commit()
        return None

    monkeypatch.setattr(linking, "_find_user_by_email", find_user_racing)
    before_users = counts(app)["users"]

    refusal = refused(app, provider_id, identity(email="new@example.com"))

    assert refusal.reason == "email_taken"
    assert counts(app) == {"users": before_users + 1, "memberships": 0, "external_logins": 0}
    assert audit_actions(app)[-1] == "auth.signin.refused"
    assert "user.provisioned" not in audit_actions(app)
