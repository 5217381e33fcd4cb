"""Users: create, authenticate, change password, deactivate.

The only code that deactivates (deprovisions) a user, so every path ends sessions the same way.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from typing import NamedTuple
from typing import Protocol

from email_validator import EmailNotValidError
from email_validator import validate_email
from sqlalchemy import bindparam
from sqlalchemy import delete
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import update

from app.extensions import db
from app.models import Session
from app.models import User
from app.models.base import utcnow
from app.services import audit
from app.services import passwords
from app.services import sessions
from app.services.errors import NotFound
from app.services.errors import ValidationError
from app.services.errors import uuid_or_not_found


def normalise_email(raw: str) -> str:
    """Validate syntax and return the address in its one stored form (lower-cased).

    Lower-casing the local part is a deliberate choice: almost no mail system treats it as
    case-sensitive, and one person must not get two users by typing their address twice.
    """
    raw = (raw or "").strip()
    if not raw:
        raise ValidationError("Email must not be empty.", "email")
    return _normalised(raw)


@lru_cache(maxsize=1024)
def _normalised(raw: str) -> str:
    # Pure (no DNS: check_deliverability=False), and about 40 µs: SCIM normalises the same
    # addresses in consecutive requests (create, then update or deactivate). Errors are not
    # cached (lru_cache keeps return values only).
    try:
        info = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationError(f"Email is not valid: {exc}", "email") from None
    return info.normalized.lower()


# Built once: every password sign-in runs it (building a statement costs more than running it).
_BY_EMAIL = select(User).where(User.email == bindparam("email"))


def find_by_email(email: str) -> User | None:
    try:
        normalised = normalise_email(email)
    except ValidationError:
        return None
    return db.session.scalars(_BY_EMAIL, {"email": normalised}).first()


def get_user(user_id: uuid.UUID | str) -> User:
    key = uuid_or_not_found(user_id, f"No user with id {user_id}.")
    user = db.session.get(User, key)
    if user is None:
        raise NotFound(f"No user with id {user_id}.")
    return user


def create_user(
    email: str,
    password: str | None = None,
    *,
    given_name: str | None = None,
    family_name: str | None = None,
    actor: User | None = None,
    managed_by_account_id: int | None = None,
) -> User:
    """Create a local user. Raises ValidationError for a bad or taken email or a weak password.

    ``managed_by_account_id``: the account whose just-in-time sign-in creates the user, which
    then manages it (DESIGN "Accounts, users and SCIM")."""
    normalised = normalise_email(email)
    # The email, or the userName of a SCIM-provisioned user spelt like this email.
    taken = select(User.id).where(or_(User.email == normalised, User.user_name_key == normalised))
    if db.session.scalar(taken.limit(1)) is not None:
        raise ValidationError(f"A user with email {normalised} already exists.", "email")
    user = User(
        email=normalised,
        given_name=given_name,
        family_name=family_name,
        # A user created here has their email as SCIM userName (DESIGN); the key keeps
        # userNames unique across Keyward, whichever way the user was created.
        user_name_key=normalised,
        managed_by_account_id=managed_by_account_id,
    )
    if password is not None:
        passwords.check_password_strength(password, email=normalised)
        user.password_hash = passwords.hash_password(password)
        user.password_changed_at = utcnow()
    db.session.add(user)
    db.session.flush()
    audit.record(
        "user.created",
        actor=actor,
        target_type="user",
        target_id=user.id,
        details={"email": normalised},
    )
    return user


class SignInRefusal(enum.StrEnum):
    """Why a password sign-in was refused (audited; the page shows one generic message)."""

    UNKNOWN_EMAIL = "unknown_email"
    NO_PASSWORD = "no_password"  # noqa: S105 - a reason code, not a password
    BAD_PASSWORD = "bad_password"  # noqa: S105 - a reason code, not a password
    INACTIVE = "inactive"


class Credentials(NamedTuple):
    """What a password sign-in reads of a user (one row, no ORM object)."""

    id: uuid.UUID
    email: str
    password_hash: str | None
    active: bool


_users = User.__table__
# Built once: every password sign-in runs them (building a statement costs more than running it).
_CREDENTIALS_BY_EMAIL = select(
    _users.c.id, _users.c.email, _users.c.password_hash, _users.c.active
).where(_users.c.email == bindparam("email"))
_SET_PASSWORD_HASH = (
    update(_users)
    .where(_users.c.id == bindparam("user_id"))
    .values(password_hash=bindparam("new_hash"), updated_at=bindparam("now"))
)


@dataclass
class PasswordCheck:
    """The outcome of check_password_sign_in. ``user`` is the ORM object, loaded when asked
    for (the sign-in itself needs only ``user_id``)."""

    user_id: uuid.UUID | None
    refusal: SignInRefusal | None

    @property
    def ok(self) -> bool:
        return self.refusal is None

    @property
    def user(self) -> User | None:
        return db.session.get(User, self.user_id) if self.user_id is not None else None


def check_password_sign_in(email: str, password: str, *, meta: audit.RequestMeta) -> PasswordCheck:
    """Check an email + password pair and audit the outcome (creates no session).

    Every refusal costs one argon2 hash, whatever its reason, so timing tells nothing.
    """
    found = _credentials(email)
    if found is None:
        passwords.verify_password(None, password)
        refusal = SignInRefusal.UNKNOWN_EMAIL
    elif not passwords.verify_password(found.password_hash, password):
        no_password = found.password_hash is None
        refusal = SignInRefusal.NO_PASSWORD if no_password else SignInRefusal.BAD_PASSWORD
    elif not found.active:
        refusal = SignInRefusal.INACTIVE
    else:
        refusal = None
        if passwords.needs_rehash(found.password_hash):
            # Upgrade old hashes to today's argon2 parameters while we hold the password.
            db.session.connection().execute(
                _SET_PASSWORD_HASH,
                {
                    "user_id": found.id,
                    "new_hash": passwords.hash_password(password),
                    "now": utcnow(),
                },
            )
    # Every sign-in attempt writes one of these rows: the ORM-free insert (see insert_now).
    if refusal is None:
        audit.insert_now(
            "auth.signin.succeeded",
            actor=found,
            target_type="user",
            target_id=found.id,
            details={"method": "password"},
            meta=meta,
        )
    else:
        audit.insert_now(
            "auth.signin.refused",
            actor=found,
            actor_label=None if found else _label(email),
            target_type="user" if found else None,
            target_id=found.id if found else None,
            details={"method": "password", "reason": refusal.value},
            meta=meta,
        )
    return PasswordCheck(found.id if found else None, refusal)


def _credentials(email: str) -> Credentials | None:
    """The sign-in columns of the user with this email (normalised like find_by_email)."""
    try:
        normalised = normalise_email(email)
    except ValidationError:
        return None
    row = db.session.connection().execute(_CREDENTIALS_BY_EMAIL, {"email": normalised}).first()
    return Credentials(*row) if row is not None else None


def _label(email: str) -> str:
    # An unknown address is kept for the trail, but bounded: it is attacker-controlled text.
    return (email or "").strip()[:254]


def change_password(
    user: User,
    current_password: str | None,
    new_password: str,
    *,
    keep_session_id: uuid.UUID | None,
    meta: audit.RequestMeta,
) -> int:
    """Set a new password after checking the current one (required when one exists).

    Ends every other session of the user (a changed password must lock out whoever knew the
    old one); returns how many were ended. Raises ValidationError.
    """
    if user.password_hash is not None and not passwords.verify_password(
        user.password_hash, current_password or ""
    ):
        raise ValidationError("Current password is not correct.", "current_password")
    passwords.check_password_strength(new_password, email=user.email)
    if user.password_hash is not None and passwords.verify_password(
        user.password_hash, new_password
    ):
        raise ValidationError("New password must differ from the current one.", "new_password")
    user.password_hash = passwords.hash_password(new_password)
    user.password_changed_at = utcnow()
    ended = sessions.revoke_user_sessions(user, reason="password_changed", keep=keep_session_id)
    audit.record(
        "account.password.changed",
        actor=user,
        target_type="user",
        target_id=user.id,
        details={"sessions_ended": ended},
        meta=meta,
    )
    return ended


class UserRecord(Protocol):
    """A user that is not an ORM object: services.scim's rows (UserRow). What these functions
    write besides the user's own columns runs at once (Core statements, audit.insert_now),
    not through the unit of work."""

    id: uuid.UUID
    active: bool
    version: int

    def flush(self, *, end_sessions: dict[str, Any] | None = None) -> int:
        """Write the pending changes. With ``end_sessions`` (the parameters of
        REVOKE_SESSIONS), then run that statement too (in the same round trip where the
        database allows) and return its row count."""
        ...


_sessions = Session.__table__
# Built once: SCIM deactivations come in bulk. The same UPDATE as
# sessions.revoke_user_sessions (without ``keep``); parameters b_user_id, now, reason.
REVOKE_SESSIONS = (
    update(_sessions)
    .where(_sessions.c.user_id == bindparam("b_user_id"), _sessions.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now"), revoked_reason=bindparam("reason"))
)


def _end_sessions(user: User | UserRecord, reason: str) -> int:
    if isinstance(user, User):
        # Autoflushes the user's pending changes first.
        return sessions.revoke_user_sessions(user, reason=reason)
    # As the ORM's autoflush would: the row's changes first, then the sessions.
    return user.flush(end_sessions={"b_user_id": user.id, "now": utcnow(), "reason": reason})


def _audit(user: User | UserRecord, action: str, **fields) -> None:
    if isinstance(user, User):
        audit.record(action, **fields)
    else:
        audit.insert_now(action, **fields)


def deactivate_user(
    user: User | UserRecord,
    *,
    actor: User | None = None,
    reason: str = "deactivated",
    meta: audit.RequestMeta = audit.NO_REQUEST,
    action: str = "user.deactivated",
    actor_label: str | None = None,
    account_id: int | None = None,
    details: dict | None = None,
) -> int:
    """Deactivate the user and end every session at once; returns sessions ended.

    Records one audit event, ``action`` (SCIM passes ``scim.user.deactivated`` with the token
    as ``actor_label``), carrying ``details`` plus the sessions ended and the reason.
    ``user``: a User, or a UserRecord (SCIM's rows, written at once)."""
    user.active = False
    user.version = (user.version or 1) + 1
    ended = _end_sessions(user, reason)
    _audit(
        user,
        action,
        actor=actor,
        actor_label=actor_label,
        account_id=account_id,
        target_type="user",
        target_id=user.id,
        details={**(details or {}), "sessions_ended": ended, "reason": reason},
        meta=meta,
    )
    return ended


def reactivate_user(
    user: User | UserRecord,
    *,
    actor: User | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
    action: str = "user.reactivated",
    actor_label: str | None = None,
    account_id: int | None = None,
    details: dict | None = None,
) -> None:
    """Allow a deactivated user to sign in again (one audit event, ``action``). ``user``: a
    User, or a UserRecord (SCIM's rows, written at once)."""
    user.active = True
    user.version = (user.version or 1) + 1
    if not isinstance(user, User):
        user.flush()
    _audit(
        user,
        action,
        actor=actor,
        actor_label=actor_label,
        account_id=account_id,
        target_type="user",
        target_id=user.id,
        details=details,
        meta=meta,
    )


@dataclass
class Deprovisioned:
    """What deprovision_user removed (the audit event's details)."""

    sessions_ended: int
    memberships_removed: int
    links_removed: int
    group_memberships_removed: int


def deprovision_user(
    user: User,
    account_id: int,
    *,
    managed: bool,
    reason: str = "deprovisioned",
    meta: audit.RequestMeta = audit.NO_REQUEST,
    action: str = "user.deprovisioned",
    actor: User | None = None,
    actor_label: str | None = None,
    details: dict | None = None,
) -> Deprovisioned:
    """Take the user out of ``account_id`` for good (SCIM DELETE, bulk jobs).

    ``managed`` (the account manages the user, DESIGN "Accounts, users and SCIM"): the user
    is deactivated, every session ends at once, and every membership, group membership and
    external login is removed. Otherwise only what the account controls goes: its membership,
    its group memberships and the links to its own providers; the user and their sessions
    elsewhere are untouched. The user row stays (the audit trail refers to it), and so does
    every audit event. One audit event, ``action``. Set-based deletes, no ORM cascade."""
    from app.models import ExternalLogin
    from app.models import Group
    from app.models import GroupMember
    from app.models import Membership
    from app.models import SsoProvider

    ended = 0
    if managed:
        user.active = False
        ended = sessions.revoke_user_sessions(user, reason=reason)
        memberships = delete(Membership).where(Membership.user_id == user.id)
        links = delete(ExternalLogin).where(ExternalLogin.user_id == user.id)
        groups = delete(GroupMember).where(GroupMember.user_id == user.id)
    else:
        memberships = delete(Membership).where(
            Membership.user_id == user.id, Membership.account_id == account_id
        )
        account_providers = select(SsoProvider.id).where(SsoProvider.account_id == account_id)
        links = delete(ExternalLogin).where(
            ExternalLogin.user_id == user.id, ExternalLogin.provider_id.in_(account_providers)
        )
        account_groups = select(Group.id).where(Group.account_id == account_id)
        groups = delete(GroupMember).where(
            GroupMember.user_id == user.id, GroupMember.group_id.in_(account_groups)
        )
    options = {"synchronize_session": False}
    outcome = Deprovisioned(
        sessions_ended=ended,
        group_memberships_removed=db.session.execute(groups, execution_options=options).rowcount
        or 0,
        links_removed=db.session.execute(links, execution_options=options).rowcount or 0,
        memberships_removed=db.session.execute(memberships, execution_options=options).rowcount
        or 0,
    )
    # The loaded collection would otherwise still list the deleted rows.
    db.session.expire(user, ["memberships"])
    user.version = (user.version or 1) + 1
    audit.record(
        action,
        actor=actor,
        actor_label=actor_label,
        account_id=account_id,
        target_type="user",
        target_id=user.id,
        details={
            **(details or {}),
            "reason": reason,
            "managed": managed,
            "sessions_ended": outcome.sessions_ended,
            "memberships_removed": outcome.memberships_removed,
            "links_removed": outcome.links_removed,
            "group_memberships_removed": outcome.group_memberships_removed,
        },
        meta=meta,
    )
    return outcome


def serialise(user: User) -> dict:
    return {"id": str(user.id), "email": user.email, "active": user.active}
