"""Users: create, authenticate, change password, deactivate.

The only code that deactivates (deprovisions) a user, so every path ends sessions the same way.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from email_validator import EmailNotValidError
from email_validator import validate_email
from sqlalchemy import select

from app.extensions import db
from app.models import User
from app.models.base import utcnow
from app.services import audit
from app.services import passwords
from app.services import sessions
from app.services.errors import NotFound
from app.services.errors import ValidationError


def normalise_email(raw: str) -> str:
    """Validate syntax and return the address in its one stored form (lower-cased).

    Lower-casing the local part is a deliberate choice: almost no mail system treats it as
    case-sensitive, and one person must not get two users by typing their address twice.
    """
    raw = (raw or "").strip()
    if not raw:
        raise ValidationError("Email must not be empty.", "email")
    try:
        info = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationError(f"Email is not valid: {exc}", "email") from None
    return info.normalized.lower()


def find_by_email(email: str) -> User | None:
    try:
        normalised = normalise_email(email)
    except ValidationError:
        return None
    return db.session.scalar(select(User).where(User.email == normalised))


def get_user(user_id: uuid.UUID | str) -> User:
    try:
        key = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
    except ValueError:
        raise NotFound(f"No user with id {user_id}.") from None
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
) -> User:
    """Create a local user. Raises ValidationError for a bad or taken email or a weak password."""
    normalised = normalise_email(email)
    if db.session.scalar(select(User.id).where(User.email == normalised)) is not None:
        raise ValidationError(f"A user with email {normalised} already exists.", "email")
    user = User(email=normalised, given_name=given_name, family_name=family_name)
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


@dataclass
class PasswordCheck:
    user: User | None
    refusal: SignInRefusal | None

    @property
    def ok(self) -> bool:
        return self.refusal is None


def check_password_sign_in(email: str, password: str, *, meta: audit.RequestMeta) -> PasswordCheck:
    """Check an email + password pair and audit the outcome (creates no session).

    Every refusal costs one argon2 hash, whatever its reason, so timing tells nothing.
    """
    user = find_by_email(email)
    if user is None:
        passwords.verify_password(None, password)
        result = PasswordCheck(None, SignInRefusal.UNKNOWN_EMAIL)
    elif not passwords.verify_password(user.password_hash, password):
        reason = (
            SignInRefusal.NO_PASSWORD if user.password_hash is None else SignInRefusal.BAD_PASSWORD
        )
        result = PasswordCheck(user, reason)
    elif not user.active:
        result = PasswordCheck(user, SignInRefusal.INACTIVE)
    else:
        if passwords.needs_rehash(user.password_hash):
            # Upgrade old hashes to today's argon2 parameters while we hold the password.
            user.password_hash = passwords.hash_password(password)
        result = PasswordCheck(user, None)
    if result.ok:
        audit.record(
            "auth.signin.succeeded",
            actor=user,
            target_type="user",
            target_id=user.id,
            details={"method": "password"},
            meta=meta,
        )
    else:
        audit.record(
            "auth.signin.refused",
            actor=result.user,
            actor_label=None if result.user else _label(email),
            target_type="user" if result.user else None,
            target_id=result.user.id if result.user else None,
            details={"method": "password", "reason": result.refusal.value},
            meta=meta,
        )
    return result


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


def deactivate_user(
    user: User,
    *,
    actor: User | None = None,
    reason: str = "deactivated",
    meta: audit.RequestMeta = audit.NO_REQUEST,
) -> int:
    """Deactivate the user and end every session at once; returns sessions ended."""
    user.active = False
    ended = sessions.revoke_user_sessions(user, reason=reason)
    audit.record(
        "user.deactivated",
        actor=actor,
        target_type="user",
        target_id=user.id,
        details={"sessions_ended": ended, "reason": reason},
        meta=meta,
    )
    return ended


def reactivate_user(
    user: User, *, actor: User | None = None, meta: audit.RequestMeta = audit.NO_REQUEST
) -> None:
    user.active = True
    audit.record("user.reactivated", actor=actor, target_type="user", target_id=user.id, meta=meta)


def serialise(user: User) -> dict:
    return {"id": str(user.id), "email": user.email, "active": user.active}
