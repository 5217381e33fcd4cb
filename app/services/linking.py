"""External identity -> Keyward user: the sign-in resolution order, profile link and unlink."""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta
from typing import Any

from sqlalchemy import func
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import ExternalLogin
from app.models import Membership
from app.models import Role
from app.models import SsoProvider
from app.models import User
from app.models.base import utcnow
from app.services import accounts
from app.services import audit
from app.services import authz
from app.services import role_mapping
from app.services import users
from app.services.errors import NotFound
from app.services.errors import ServiceError
from app.services.errors import ValidationError
from app.services.errors import uuid_or_not_found

MAX_SUBJECT_LENGTH = 255  # ExternalLogin.subject
MAX_NAME_LENGTH = 200  # User.given_name / family_name
MAX_EXTERNAL_ID_LENGTH = 255  # User.external_id


@dataclass(frozen=True)
class ExternalIdentity:
    """Who the identity provider says signed in, after the token or assertion was verified.

    ``claims`` is everything the expression may look at: the ID token claims plus userinfo
    and additional claims. Only ``email_verified is True`` counts as verified: the adapter
    converts the IdP's representation (some send the string "true") to a bool.
    """

    subject: str
    email: str | None = None
    email_verified: bool = False
    given_name: str | None = None
    family_name: str | None = None
    name: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    sid: str | None = None


@dataclass
class ResolvedLogin:
    """The outcome of a successful resolution: ``created`` (just-in-time user) and
    ``linked`` (a new ExternalLogin) say what this sign-in wrote."""

    user: User
    created: bool
    linked: bool
    login: ExternalLogin


class SignInRefused(ServiceError):
    """A federated sign-in that must not get a session.

    ``reason`` is the machine name for the audit log, ``status`` the HTTP status of the page
    (403 for a policy refusal, 400 for a malformed identity), ``message`` a short sentence
    for the person signing in: no secret and no claim value.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        status: int = 403,
        *,
        detail: str = "",
        user: User | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        # For the audit log only, never the page: a safe detail (why CEL refused) and the
        # existing user the identity pointed at (the target of the refused attempt).
        self.detail = detail
        self.user = user


# Reason -> (status, message). One place, so every refusal of a kind reads the same.
_REFUSALS: dict[str, tuple[int, str]] = {
    "invalid_identity": (400, "The identity provider sent an identity Keyward cannot use."),
    "provider_disabled": (403, "This sign-in method is disabled."),
    "external_id_ambiguous": (
        403,
        "More than one Keyward user matches this sign-in. Ask your administrator to fix the "
        "provisioned users.",
    ),
    "link_conflict": (
        403,
        "Your Keyward user is already linked to a different identity at this provider. "
        "Ask your administrator for help.",
    ),
    "email_taken": (
        403,
        "Another Keyward user already has this email address. Sign in with your usual "
        "method, or ask your administrator for help.",
    ),
    "email_unverified": (
        403,
        "The identity provider has not verified this email address, so Keyward cannot match "
        "it to your user. Sign in with your usual method and link this provider from your "
        "profile.",
    ),
    "no_email": (
        403,
        "The identity provider did not send an email address, which Keyward needs to create "
        "your user. Ask your administrator for help.",
    ),
    "no_account": (
        403,
        "There is no Keyward user for this sign-in. Ask your administrator to invite you.",
    ),
    "user_inactive": (403, "Your Keyward user is deactivated. Ask your administrator."),
    "cel_refused": (403, "Your organisation does not allow you to sign in here."),
    "conflict": (403, "Another sign-in changed your user at the same moment. Please try again."),
}


# Refusals raised after the identity was resolved to its user.
_PROVEN_REASONS = frozenset({"user_inactive", "cel_refused"})


def _refusal(reason: str, *, user: User | None = None, detail: str | None = None) -> SignInRefused:
    status, message = _REFUSALS[reason]
    return SignInRefused(reason, message, status, detail=detail or "", user=user)


@dataclass
class _Plan:
    """What the write phase will do; built by read-only lookups."""

    user: User | None  # None: create one just in time
    login: ExternalLogin | None  # None: create the link
    via: str  # "link", "external_id", "email" or "jit" (audit detail of auth.link.created)
    add_membership: bool = False


def resolve_login(
    provider: SsoProvider, identity: ExternalIdentity, *, meta: audit.RequestMeta
) -> ResolvedLogin:
    """Resolve a verified external identity to an active Keyward user (DESIGN sign-in rules).

    Resolution order, first match wins:

    1. the ExternalLogin for (provider, subject);
    2. for a provider with an account: a SCIM-provisioned member of that account whose
       ``external_id`` equals the claim ``provider.external_id_claim`` (Entra: ``oid``), or
       the subject when none is configured;
    3. the user with the same email, only when the email is verified (``email_verified`` is
       true or the provider has ``trust_email_verified``). A taken but unverified email never
       links and never gets a second user: refused ``email_unverified``;
    4. just-in-time creation when the provider has an account and ``jit_provisioning``: a
       new user (UUID id, no password, email required), a ``default_role`` membership of the
       provider's account, and the link;
    5. otherwise refused ``no_account``.

    Then a deactivated user is refused (``user_inactive``), and the provider's CEL
    expression, if any, is evaluated over ``identity.claims``; anything but true refuses
    (``cel_refused``). Both checks run before anything is written, so a refused sign-in
    changes nothing.

    Membership: a user found in steps 1-3 who is not a member of the provider's account is
    made a ``default_role`` member only when JIT provisioning is on (the IdP is then the
    source of who belongs to the account; the CEL expression or the IdP's assignments are
    how to keep someone out). With JIT off they sign in without a membership: they are a
    Keyward user who linked this IdP. An existing membership's role is never changed.

    Side effects (add + flush; the caller commits): on success the user (JIT), membership,
    link and ``last_used_at``, with the audit events ``user.provisioned`` (JIT),
    ``auth.link.created`` (new link) and ``auth.signin.succeeded``. On refusal exactly one
    ``auth.signin.refused`` event is added and nothing else, so the caller commits to keep it.

    Two first sign-ins of one subject at once: the writes run in a SAVEPOINT; the loser's
    unique-constraint violation rolls back to it and the winner's link is used instead.

    Raises SignInRefused.
    """
    try:
        subject, email = _validate(provider, identity)
        plan = _plan(provider, identity, subject, email)
        _authorise(provider, identity, plan.user)
        result = _write_with_retry(provider, identity, subject, email, plan)
    except SignInRefused as refusal:
        _record_refusal(provider, identity, refusal, meta)
        raise
    _record_success(provider, result, plan.via, meta)
    # Role mapping (the IdP's groups or roles claim) updates an existing membership or the
    # one JIT just made; it never re-adds a member whom SCIM or an admin removed.
    if provider.account_id is not None and _is_member(provider, result.user):
        role_mapping.apply_role_mapping(result.user, provider, identity.claims or {}, meta=meta)
    return result


@dataclass(frozen=True)
class LoginPreview:
    """What a sign-in with this identity would do ("Test sign-in"), computed read-only.

    ``outcome`` is "existing" (signs in as ``user``), "create" (just-in-time user) or
    "refused" (``reason`` and ``message`` say why, as the person would be told). ``allowed``
    and ``cel_reason`` are the CEL verdict (``allowed`` is None without an expression);
    ``role`` is the role in the provider's account after the sign-in (None: no membership
    there, or a built-in provider).
    """

    outcome: str
    via: str | None = None
    user: User | None = None
    reason: str | None = None
    message: str | None = None
    allowed: bool | None = None
    cel_reason: str | None = None
    role: str | None = None


def preview_login(provider: SsoProvider, identity: ExternalIdentity) -> LoginPreview:
    """Run the resolution order and the CEL expression without writing anything (no user,
    membership, link, session or audit event), even for a disabled provider (admins test a
    provider before enabling it). Never raises SignInRefused: a refusal is the outcome."""
    allowed: bool | None = None
    cel_reason: str | None = None
    if not authz.is_blank(provider.authorization_expression):
        verdict = authz.evaluate(provider.authorization_expression, identity.claims or {})
        allowed, cel_reason = verdict.allowed is True, verdict.reason
    try:
        subject, email = _validate_identity(identity)
        plan = _plan(provider, identity, subject, email)
        _authorise(provider, identity, plan.user)
    except SignInRefused as refusal:
        return LoginPreview(
            "refused",
            user=refusal.user,
            reason=refusal.reason,
            message=refusal.message,
            allowed=allowed,
            cel_reason=cel_reason,
        )
    role: str | None = None
    if provider.account_id is not None:
        current = accounts.role_in(plan.user, provider.account_id) if plan.user else None
        if current is None and plan.add_membership:
            current = Role(provider.default_role)
        mapped = role_mapping.mapped_role(provider, identity.claims or {})
        if mapped is not None and (current is not None or plan.add_membership):
            current = mapped
        role = current.value if current is not None else None
    return LoginPreview(
        "create" if plan.user is None else "existing",
        via=plan.via,
        user=plan.user,
        allowed=allowed,
        cel_reason=cel_reason,
        role=role,
    )


# --- read-only phase ----------------------------------------------------------------------
def _validate(provider: SsoProvider, identity: ExternalIdentity) -> tuple[str, str | None]:
    if not provider.enabled:
        raise _refusal("provider_disabled")
    return _validate_identity(identity)


def _validate_identity(identity: ExternalIdentity) -> tuple[str, str | None]:
    subject = identity.subject
    # Subjects are opaque and compared exactly (never stripped or case-folded); NUL and other
    # control characters cannot be stored by PostgreSQL or shown safely in the audit log.
    if (
        not isinstance(subject, str)
        or not subject.strip()
        or len(subject) > MAX_SUBJECT_LENGTH
        or any(unicodedata.category(char) == "Cc" for char in subject)
    ):
        raise _refusal("invalid_identity")
    email: str | None = None
    if isinstance(identity.email, str) and identity.email.strip():
        try:
            email = users.normalise_email(identity.email)
        except ValidationError:
            email = None  # an invalid address is treated as no address
    return subject, email


def _find_login(provider: SsoProvider, subject: str) -> ExternalLogin | None:
    return db.session.scalar(
        select(ExternalLogin).where(
            ExternalLogin.provider_id == provider.id, ExternalLogin.subject == subject
        )
    )


def _find_provider_login_of(provider: SsoProvider, user: User) -> ExternalLogin | None:
    return db.session.scalar(
        select(ExternalLogin).where(
            ExternalLogin.provider_id == provider.id, ExternalLogin.user_id == user.id
        )
    )


def _external_id_value(
    provider: SsoProvider, identity: ExternalIdentity, subject: str
) -> str | None:
    if not provider.external_id_claim:
        return subject
    value = (identity.claims or {}).get(provider.external_id_claim)
    # Only a plain string (Entra's oid is a GUID string); bool is an int, so excluded first.
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    value = str(value)
    if not value or len(value) > MAX_EXTERNAL_ID_LENGTH:
        return None
    return value


def _find_scim_user(provider: SsoProvider, external_id: str) -> User | None:
    matches = list(
        db.session.execute(
            select(User, Membership.active)
            .join(Membership, Membership.user_id == User.id)
            .where(User.external_id == external_id, Membership.account_id == provider.account_id)
            .limit(2)
        )
    )
    if len(matches) > 1:
        # Two members share an externalId: picking one could sign someone in as another.
        raise _refusal("external_id_ambiguous")
    if matches and not matches[0].active:
        # The account's SCIM deactivated this member: the IdP's identity is theirs, and they
        # are told so rather than being matched by email or created again.
        raise _refusal("user_inactive", user=matches[0].User)
    return matches[0].User if matches else None


def _find_user_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == email))


def _is_member(provider: SsoProvider, user: User) -> bool:
    # role_in counts active memberships only: one the account's SCIM deactivated is none.
    return accounts.role_in(user, provider.account_id) is not None


def _plan(
    provider: SsoProvider, identity: ExternalIdentity, subject: str, email: str | None
) -> _Plan:
    """Steps 1-5 of the resolution order, reading only."""
    plan: _Plan | None = None
    # 1. The (provider, subject) link, backed by a unique constraint.
    login = _find_login(provider, subject)
    if login is not None:
        plan = _Plan(user=login.user, login=login, via="link")
    has_account = provider.account_id is not None
    # 2. A SCIM-provisioned member of the provider's account. Built-in providers have no
    # account, hence no SCIM to trust an externalId from.
    if plan is None and has_account:
        external_id = _external_id_value(provider, identity, subject)
        user = _find_scim_user(provider, external_id) if external_id else None
        if user is not None:
            login = _find_provider_login_of(provider, user)
            if login is not None and login.subject != subject:
                # Already linked to another subject here: never re-point a link silently.
                raise _refusal("link_conflict", user=user)
            # (A link with this very subject: a concurrent sign-in made it since step 1.)
            plan = _Plan(user=user, login=login, via="external_id")
    # 3. Same email, only when the IdP vouches for it: an unverified (or mutable, unverified)
    # email would let anyone who can type an address at the IdP take over that user.
    if plan is None and email is not None:
        user = _find_user_by_email(email)
        if user is not None:
            verified = identity.email_verified is True or provider.trust_email_verified
            if not verified:
                # Neither a link nor (JIT) a second user with a taken email.
                raise _refusal("email_unverified", user=user)
            if has_account and not _is_member(provider, user):
                # An account's admin controls its IdP (and its trust_email_verified flag):
                # its assertions may only reach users of that account, or any admin could
                # sign in as anyone by asserting their address. Built-in providers link across.
                raise _refusal("email_taken", user=user)
            login = _find_provider_login_of(provider, user)
            if login is not None and login.subject != subject:
                raise _refusal("email_taken", user=user)
            plan = _Plan(user=user, login=login, via="email")
    # 4. Just-in-time creation, only into the provider's own account.
    if plan is None and has_account and provider.jit_provisioning:
        if email is None:
            raise _refusal("no_email")
        plan = _Plan(user=None, login=None, via="jit", add_membership=True)
    # 5. Nothing matched.
    if plan is None:
        raise _refusal("no_account")
    if plan.user is not None and has_account and provider.jit_provisioning:
        plan.add_membership = not _is_member(provider, plan.user)
    return plan


def _authorise(provider: SsoProvider, identity: ExternalIdentity, user: User | None) -> None:
    """DESIGN sign-in rules 2 and 3, before any write."""
    if user is not None and not user.active:
        raise _refusal("user_inactive", user=user)
    if not authz.is_blank(provider.authorization_expression):
        result = authz.evaluate(provider.authorization_expression, identity.claims or {})
        if result.allowed is not True:
            # authz's reasons never contain claim values; safe for the audit log.
            raise _refusal("cel_refused", user=user, detail=result.reason)


# --- write phase --------------------------------------------------------------------------
def _write_with_retry(
    provider: SsoProvider,
    identity: ExternalIdentity,
    subject: str,
    email: str | None,
    plan: _Plan,
) -> ResolvedLogin:
    """Apply the plan in a SAVEPOINT; on a lost race, use the winner's link once."""
    _open_sqlite_transaction()
    try:
        with db.session.begin_nested():
            return _apply(provider, identity, subject, email, plan)
    except (IntegrityError, ValidationError):
        # Another sign-in of the same subject committed first (unique (provider, subject),
        # the user's email, or (user, provider)); our writes are rolled back to the savepoint.
        pass
    login = _find_login(provider, subject)
    if login is None:
        # Lost a race to something else: the same email under another subject (JIT), or
        # the user linked to another subject here meanwhile.
        raise _refusal("email_taken" if plan.user is None else "conflict")
    user = login.user
    db.session.refresh(user)
    if not user.active:
        raise _refusal("user_inactive", user=user)
    retry = _Plan(user=user, login=login, via="link")
    if provider.account_id is not None and provider.jit_provisioning:
        retry.add_membership = not _is_member(provider, user)
    try:
        with db.session.begin_nested():
            return _apply(provider, identity, subject, email, retry)
    except IntegrityError:
        raise _refusal("conflict") from None


def _open_sqlite_transaction() -> None:
    """Make sure SQLite has a real transaction open before the first SAVEPOINT.

    pysqlite (legacy transaction control) issues BEGIN only before INSERT/UPDATE/DELETE, and
    the lookups before this point only read; a SAVEPOINT outside a transaction then *is* the
    transaction, and releasing it commits, behind the caller's back. BEGIN IMMEDIATE also
    takes the write lock now, so the reads inside the savepoint cannot go stale in WAL mode.
    """
    connection = db.session.connection()
    if connection.dialect.name != "sqlite":
        return
    if not connection.connection.dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _apply(
    provider: SsoProvider,
    identity: ExternalIdentity,
    subject: str,
    email: str | None,
    plan: _Plan,
) -> ResolvedLogin:
    created = False
    user = plan.user
    if user is None:
        given_name, family_name = _names(identity)
        # The id is a fresh UUID: the "UUID username" of DESIGN. No password: this user signs
        # in through the IdP until they set one.
        # JIT creation makes the provider's account the user's manager (DESIGN "Accounts,
        # users and SCIM"): its SCIM may then change and deactivate the user.
        user = users.create_user(
            email,
            None,
            given_name=given_name,
            family_name=family_name,
            managed_by_account_id=provider.account_id,
        )
        created = True
        audit.record(
            "user.provisioned",
            actor=user,
            account_id=provider.account_id,
            target_type="user",
            target_id=user.id,
            details={"provider": str(provider.id), "role": provider.default_role},
        )
    if plan.add_membership:
        account = accounts.get_account(provider.account_id)
        accounts.add_member(account, user, Role(provider.default_role))
    login = plan.login
    linked = login is None
    if login is None:
        # Email as a display hint only; it is never used to sign in.
        login = ExternalLogin(user=user, provider_id=provider.id, subject=subject, email=email)
        db.session.add(login)
    elif login.email is None and email is not None:
        login.email = email
    login.last_used_at = utcnow()
    db.session.flush()
    return ResolvedLogin(user=user, created=created, linked=linked, login=login)


def _names(identity: ExternalIdentity) -> tuple[str | None, str | None]:
    given_name = _clean_name(identity.given_name)
    family_name = _clean_name(identity.family_name)
    if given_name is None and family_name is None:
        # Only a full name: kept whole (splitting names is wrong for many cultures);
        # User.display_name shows it as sent.
        given_name = _clean_name(identity.name)
    return given_name, family_name


def _clean_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    cleaned = "".join(char for char in value if unicodedata.category(char) != "Cc").strip()
    return cleaned[:MAX_NAME_LENGTH] or None


# --- audit --------------------------------------------------------------------------------
def _record_success(
    provider: SsoProvider, result: ResolvedLogin, via: str, meta: audit.RequestMeta
) -> None:
    user = result.user
    if result.linked:
        audit.record(
            "auth.link.created",
            actor=user,
            account_id=provider.account_id,
            target_type="user",
            target_id=user.id,
            details={"provider": str(provider.id), "subject": result.login.subject, "via": via},
            meta=meta,
        )
    audit.record(
        "auth.signin.succeeded",
        actor=user,
        account_id=provider.account_id,
        target_type="user",
        target_id=user.id,
        details={
            "method": provider.protocol,
            "provider": str(provider.id),
            "created": result.created,
            "linked": result.linked,
        },
        meta=meta,
    )


def _record_refusal(
    provider: SsoProvider,
    identity: ExternalIdentity,
    refusal: SignInRefused,
    meta: audit.RequestMeta,
) -> None:
    details: dict[str, Any] = {
        "method": provider.protocol,
        "provider": str(provider.id),
        "reason": refusal.reason,
    }
    # The subject is the one claim value kept (it identifies who tried); a malformed one is
    # attacker-controlled text, so it is left out.
    if refusal.reason != "invalid_identity":
        details["subject"] = identity.subject
    if refusal.detail:
        details["detail"] = refusal.detail
    user = refusal.user
    # The user is the actor only when the identity is proven theirs (their link, SCIM
    # externalId or verified email); for an email match that was refused they are the target
    # of someone else's attempt.
    proven = refusal.reason in _PROVEN_REASONS
    audit.record(
        "auth.signin.refused",
        actor=user if proven else None,
        account_id=provider.account_id,
        target_type="user" if user is not None else None,
        target_id=user.id if user is not None else None,
        details=details,
        meta=meta,
    )


# --- linking and unlinking from the profile -----------------------------------------------
# Linking needs a sign-in (password, or a linked provider) no older than this: whoever finds
# a signed-in browser left open must not be able to attach their own login to that user.
REAUTHENTICATION_WINDOW = timedelta(minutes=10)


class LinkRefused(ServiceError):
    """A link, unlink or re-authentication for linking that must not happen.

    ``reason`` is the machine name for the audit log, ``status`` the HTTP status of the
    page, ``message`` a short sentence for the person: no secret and no claim value.
    """

    def __init__(self, reason: str, message: str, status: int = 403, *, detail: str = ""):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        self.detail = detail  # for the audit log only


_LINK_REFUSALS: dict[str, tuple[int, str]] = {
    "not_available": (404, "This sign-in method is not available to you."),
    "provider_disabled": (403, "This sign-in method is disabled."),
    "user_inactive": (403, "Your Keyward user is deactivated. Ask your administrator."),
    "invalid_identity": (400, "The identity provider sent an identity Keyward cannot use."),
    "cel_refused": (403, "Your organisation does not allow this login to be linked."),
    "identity_taken": (
        409,
        "This login already belongs to another Keyward user, so it was not linked to yours. "
        "Nothing was changed.",
    ),
    "already_linked": (409, "This login is already linked to your user. Nothing was changed."),
    "provider_linked": (
        409,
        "You already have a login with this provider linked. Unlink it first to link "
        "another one. Nothing was changed.",
    ),
    "signed_out": (
        403,
        "You were signed out while linking, so nothing was linked. Sign in and start again "
        "from your profile.",
    ),
    "user_changed": (
        403,
        "This link was started by another Keyward user, so nothing was linked. Start again "
        "from your profile.",
    ),
    "session_changed": (
        403,
        "This link was started in an earlier session, so nothing was linked. Start again "
        "from your profile.",
    ),
    "reauth_mismatch": (
        403,
        "You signed in at the identity provider with a login that is not linked to your "
        "Keyward user. Nothing was linked.",
    ),
    "last_method": (
        409,
        "This login is your only way to sign in. Set a password first, then unlink it.",
    ),
}


def _link_refusal(reason: str, *, detail: str = "") -> LinkRefused:
    status, message = _LINK_REFUSALS[reason]
    return LinkRefused(reason, message, status, detail=detail)


@dataclass(frozen=True)
class LinkedLogin:
    """One row of the profile's "External logins" list.

    ``hint`` is the identity's email at link time, else a shortened subject; ``removable``
    is False for the user's last way to sign in (see unlink)."""

    login: ExternalLogin
    provider: SsoProvider
    account_name: str | None
    hint: str
    removable: bool


def subject_hint(subject: str) -> str:
    """A recognisable but short form of an opaque subject (``abcd…wxyz``)."""
    return subject if len(subject) <= 16 else f"{subject[:6]}…{subject[-4:]}"


def _usable(provider: SsoProvider) -> bool:
    # A login at a disabled provider cannot sign anyone in: it does not count as a way in.
    return bool(provider.enabled)


def list_external_logins(user: User) -> list[LinkedLogin]:
    """The user's linked logins with their providers, by provider name (read-only)."""
    rows = list(
        db.session.execute(
            select(ExternalLogin, SsoProvider)
            .join(SsoProvider, SsoProvider.id == ExternalLogin.provider_id)
            .where(ExternalLogin.user_id == user.id)
            .order_by(SsoProvider.display_name, ExternalLogin.id)
        ).tuples()
    )
    usable = sum(1 for _, provider in rows if _usable(provider))
    result = []
    for login, provider in rows:
        others = usable - (1 if _usable(provider) else 0)
        result.append(
            LinkedLogin(
                login=login,
                provider=provider,
                account_name=provider.account.name if provider.account_id is not None else None,
                hint=login.email or subject_hint(login.subject),
                removable=user.has_password or others > 0,
            )
        )
    return result


def _available_query(user: User):
    # The accounts where the membership grants access (the same rule as role_in).
    member_of = [membership.account_id for membership in accounts.memberships_of(user)]
    # Built-in providers (no account) for everyone; an account's only for its members.
    return select(SsoProvider).where(
        or_(SsoProvider.account_id.is_(None), SsoProvider.account_id.in_(member_of))
    )


def linkable_providers(user: User) -> list[SsoProvider]:
    """Providers the user may link and has not linked yet: the enabled built-in ones and the
    enabled providers of the user's accounts (hidden ones too: hiding only takes the button
    off /login), built-ins first, then by name (read-only)."""
    linked = select(ExternalLogin.provider_id).where(ExternalLogin.user_id == user.id)
    query = (
        _available_query(user)
        .where(SsoProvider.enabled.is_(True), SsoProvider.id.not_in(linked))
        .order_by(SsoProvider.account_id.is_not(None), SsoProvider.display_name)
    )
    return list(db.session.scalars(query))


def provider_for_link(user: User, provider_id: uuid.UUID | str) -> SsoProvider:
    """The provider ``provider_id`` if ``user`` may start linking it now (read-only).

    Raises NotFound for an unknown provider and for one the user may not see (another
    account's), so guessing GUIDs tells nothing; LinkRefused when it is disabled, the
    user is deactivated or already has a login with it."""
    key = uuid_or_not_found(provider_id, "No such sign-in method.")
    provider = db.session.scalar(_available_query(user).where(SsoProvider.id == key))
    if provider is None:
        raise NotFound("No such sign-in method.")
    if not user.active:
        raise _link_refusal("user_inactive")
    if not provider.enabled:
        raise _link_refusal("provider_disabled")
    if _find_provider_login_of(provider, user) is not None:
        raise _link_refusal("provider_linked")
    return provider


def _own_logins_query(user: User):
    return (
        select(SsoProvider)
        .join(ExternalLogin, ExternalLogin.provider_id == SsoProvider.id)
        .where(
            ExternalLogin.user_id == user.id,
            SsoProvider.enabled.is_(True),
        )
    )


def reauthentication_providers(user: User) -> list[SsoProvider]:
    """The enabled providers the user has a login with: each can confirm it is them before
    a link (read-only)."""
    return list(db.session.scalars(_own_logins_query(user).order_by(SsoProvider.display_name)))


def provider_for_reauthentication(user: User, provider_id: uuid.UUID | str) -> SsoProvider:
    """One of reauthentication_providers(user), else NotFound (read-only)."""
    key = uuid_or_not_found(provider_id, "No such sign-in method.")
    provider = db.session.scalar(_own_logins_query(user).where(SsoProvider.id == key))
    if provider is None:
        raise NotFound("No such sign-in method.")
    return provider


def needs_reauthentication(
    authenticated_at: datetime | None, *, now: datetime | None = None
) -> bool:
    """True when the session's last sign-in (``Session.authenticated_at``) is missing or
    older than REAUTHENTICATION_WINDOW."""
    if authenticated_at is None:
        return True
    return (now or utcnow()) - authenticated_at > REAUTHENTICATION_WINDOW


def _may_link(user: User, provider: SsoProvider) -> None:
    if not user.active:
        raise _link_refusal("user_inactive")
    if provider.account_id is not None and not _is_member(provider, user):
        raise _link_refusal("not_available")
    if not provider.enabled:
        raise _link_refusal("provider_disabled")


def _check_identity(provider: SsoProvider, identity: ExternalIdentity) -> tuple[str, str | None]:
    """The subject and email, and the provider's CEL verdict: an identity the organisation
    refuses at sign-in cannot be linked either."""
    try:
        subject, email = _validate_identity(identity)
    except SignInRefused:
        raise _link_refusal("invalid_identity") from None
    if not authz.is_blank(provider.authorization_expression):
        verdict = authz.evaluate(provider.authorization_expression, identity.claims or {})
        if verdict.allowed is not True:
            raise _link_refusal("cel_refused", detail=verdict.reason or "")
    return subject, email


def link_identity(
    user: User, provider: SsoProvider, identity: ExternalIdentity, *, meta: audit.RequestMeta
) -> ExternalLogin:
    """Link a verified external identity to ``user`` (the signed-in user who started the
    link flow): never to a new user, never to another user.

    Refused (LinkRefused) when the user is deactivated; the provider is disabled, SAML, or an
    account's provider and the user is not a member of that account; the identity is
    malformed or the provider's CEL expression does not return true; the identity is
    already linked (to this user or another one), or the provider's account has a
    SCIM-provisioned member other than ``user`` whose ``external_id`` is this identity's (the
    directory says it is someone else); or the user already has a login with this provider
    (one per provider).

    Side effects (add + flush; the caller commits): the ExternalLogin (email kept as a
    display hint, ``last_used_at`` empty until it signs in) and ``auth.link.created``. A
    refusal adds only ``auth.link.refused``, so the caller commits to keep it. A concurrent
    link of the same identity or provider loses on the unique constraints inside a SAVEPOINT
    and is refused like the sequential case.
    """
    subject: str | None = None
    try:
        _may_link(user, provider)
        subject, email = _check_identity(provider, identity)
        _check_link_conflicts(user, provider, identity, subject)
        login = _insert_link(user, provider, subject, email)
    except LinkRefused as refusal:
        record_link_refusal(provider, refusal, user=user, subject=subject, meta=meta)
        raise
    audit.record(
        "auth.link.created",
        actor=user,
        account_id=provider.account_id,
        target_type="user",
        target_id=user.id,
        details={"provider": str(provider.id), "subject": subject, "via": "profile"},
        meta=meta,
    )
    return login


def _check_link_conflicts(
    user: User, provider: SsoProvider, identity: ExternalIdentity, subject: str
) -> None:
    existing = _find_login(provider, subject)
    if existing is not None:
        raise _link_refusal("already_linked" if existing.user_id == user.id else "identity_taken")
    if _find_provider_login_of(provider, user) is not None:
        raise _link_refusal("provider_linked")
    if provider.account_id is not None:
        # Step 2 of resolve_login would give this identity to the SCIM user it names; a link
        # to anyone else would take that user's sign-in away from them.
        external_id = _external_id_value(provider, identity, subject)
        try:
            owner = _find_scim_user(provider, external_id) if external_id else None
        except SignInRefused:
            raise _link_refusal("identity_taken", detail="external_id_ambiguous") from None
        if owner is not None and owner.id != user.id:
            raise _link_refusal("identity_taken", detail="external_id")


def _insert_link(
    user: User, provider: SsoProvider, subject: str, email: str | None
) -> ExternalLogin:
    _open_sqlite_transaction()
    try:
        with db.session.begin_nested():
            login = ExternalLogin(
                user_id=user.id, provider_id=provider.id, subject=subject, email=email
            )
            db.session.add(login)
            db.session.flush()
            return login
    except IntegrityError:
        # Another request linked this identity, or this provider for this user, since the
        # checks: rolled back to the savepoint, refused as if it had come first.
        pass
    existing = _find_login(provider, subject)
    if existing is None:
        raise _link_refusal("provider_linked")
    raise _link_refusal("already_linked" if existing.user_id == user.id else "identity_taken")


def record_link_refusal(
    provider: SsoProvider | None,
    refusal: LinkRefused,
    *,
    user: User | None,
    meta: audit.RequestMeta,
    subject: str | None = None,
    target_user_id: uuid.UUID | str | None = None,
    intent: str | None = None,
) -> None:
    """Add the ``auth.link.refused`` event of a refused link (nothing else is written).

    ``user`` is who was signed in (the actor), ``target_user_id`` the user the flow was
    started for when that differs (a flow that arrived in another session)."""
    details: dict[str, Any] = {"reason": refusal.reason}
    if provider is not None:
        details["provider"] = str(provider.id)
    if subject is not None:
        details["subject"] = subject
    if refusal.detail:
        details["detail"] = refusal.detail[:300]
    if intent is not None:
        details["intent"] = intent
    target = target_user_id if target_user_id is not None else (user.id if user else None)
    audit.record(
        "auth.link.refused",
        actor=user,
        account_id=provider.account_id if provider is not None else None,
        target_type="user" if target is not None else None,
        target_id=target,
        details=details,
        meta=meta,
    )


def check_flow_binding(
    provider: SsoProvider,
    *,
    started_by: str | None,
    started_in: str | None,
    user: User | None,
    session_id: uuid.UUID | str | None,
    intent: str,
    meta: audit.RequestMeta,
) -> None:
    """A link (or re-authentication) flow's callback must arrive in the very session, and
    for the very user, that started it: ``started_by``/``started_in`` are the user and
    session record ids stored in the flow, ``user``/``session_id`` the current ones.

    Raises LinkRefused (``signed_out``, ``user_changed``, ``session_changed``) after adding
    ``auth.link.refused``; writes nothing when the binding holds."""
    if user is None or session_id is None:
        reason = "signed_out"
    elif started_by is None or str(user.id) != started_by:
        reason = "user_changed"
    elif started_in is None or str(session_id) != started_in:
        # Signed out and in again (or the session was rotated) since the flow started.
        reason = "session_changed"
    else:
        return
    refusal = _link_refusal(reason)
    record_link_refusal(
        provider, refusal, user=user, meta=meta, target_user_id=started_by, intent=intent
    )
    raise refusal


def confirm_reauthentication(
    user: User, provider: SsoProvider, identity: ExternalIdentity, *, meta: audit.RequestMeta
) -> ExternalLogin:
    """Re-authentication before a link through one of the user's own linked providers: the
    verified identity must be the user's existing login at ``provider``, the user active, the
    provider enabled and its CEL expression true.

    Side effects (add + flush; the caller commits and starts a new session): the login's
    ``last_used_at`` and ``auth.signin.succeeded`` (``reauthentication``: true). Raises
    LinkRefused after adding ``auth.signin.refused`` (the caller commits to keep it)."""
    subject: str | None = None
    try:
        if not user.active:
            raise _link_refusal("user_inactive")
        if not provider.enabled:
            raise _link_refusal("provider_disabled")
        subject, _ = _check_identity(provider, identity)
        login = _find_login(provider, subject)
        if login is None or login.user_id != user.id:
            raise _link_refusal("reauth_mismatch")
    except LinkRefused as refusal:
        details: dict[str, Any] = {
            "method": provider.protocol,
            "provider": str(provider.id),
            "reason": refusal.reason,
            "reauthentication": True,
        }
        if subject is not None:
            details["subject"] = subject
        audit.record(
            "auth.signin.refused",
            actor=user,
            account_id=provider.account_id,
            target_type="user",
            target_id=user.id,
            details=details,
            meta=meta,
        )
        raise
    login.last_used_at = utcnow()
    audit.record(
        "auth.signin.succeeded",
        actor=user,
        account_id=provider.account_id,
        target_type="user",
        target_id=user.id,
        details={
            "method": provider.protocol,
            "provider": str(provider.id),
            "created": False,
            "linked": False,
            "reauthentication": True,
        },
        meta=meta,
    )
    db.session.flush()
    return login


def unlink(user: User, login_id: int | str, *, meta: audit.RequestMeta) -> ExternalLogin:
    """Remove one of the user's own linked logins.

    Refused (LinkRefused ``last_method``) when it would leave the user no way to sign in: no
    password and no other login at an enabled provider. Another user's login, or an unknown
    id, is NotFound (never revealed). Sessions are left alone, including one signed in
    through this login.

    Side effects (delete + flush; the caller commits): the ExternalLogin and
    ``auth.link.removed`` (provider and subject). Two unlinks at once are serialised on the
    user's row, so together they cannot remove the last way in either.
    """
    try:
        key = int(login_id)
    except (TypeError, ValueError):
        raise NotFound("No such login.") from None
    # Serialise with other unlinks (and password changes) of this user before counting.
    _open_sqlite_transaction()
    db.session.execute(select(User.id).where(User.id == user.id).with_for_update())
    login = db.session.scalar(
        select(ExternalLogin).where(ExternalLogin.id == key, ExternalLogin.user_id == user.id)
    )
    if login is None:
        raise NotFound("No such login.")
    db.session.refresh(user, ["password_hash"])
    if not user.has_password and not _other_ways_in(user, login):
        raise _link_refusal("last_method")
    provider = login.provider
    details = {"provider": str(provider.id), "subject": login.subject}
    db.session.delete(login)
    db.session.flush()
    audit.record(
        "auth.link.removed",
        actor=user,
        account_id=provider.account_id,
        target_type="user",
        target_id=user.id,
        details=details,
        meta=meta,
    )
    return login


def _other_ways_in(user: User, login: ExternalLogin) -> bool:
    others = db.session.scalar(
        select(func.count())
        .select_from(ExternalLogin)
        .join(SsoProvider, SsoProvider.id == ExternalLogin.provider_id)
        .where(
            ExternalLogin.user_id == user.id,
            ExternalLogin.id != login.id,
            SsoProvider.enabled.is_(True),
        )
    )
    return bool(others)
