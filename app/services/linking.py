"""The sign-in resolution order (DESIGN "Sign-in rules"): external identity -> Keyward user."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

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
from app.services.errors import ServiceError
from app.services.errors import ValidationError

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
        db.session.scalars(
            select(User)
            .join(Membership, Membership.user_id == User.id)
            .where(User.external_id == external_id, Membership.account_id == provider.account_id)
            .limit(2)
        )
    )
    if len(matches) > 1:
        # Two members share an externalId: picking one could sign someone in as another.
        raise _refusal("external_id_ambiguous")
    return matches[0] if matches else None


def _find_user_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == email))


def _is_member(provider: SsoProvider, user: User) -> bool:
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
        user = users.create_user(email, None, given_name=given_name, family_name=family_name)
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
