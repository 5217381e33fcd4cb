"""SCIM bearer tokens: issue (shown once), authenticate, list and revoke.

Only the SHA-256 of a token is stored. Every SCIM request reads the token's row, so a
revocation written by any process (admin page, CLI) refuses the very next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

from sqlalchemy import bindparam
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import update

from app.extensions import db
from app.models import Account
from app.models import ScimToken
from app.models import SsoProvider
from app.models import User
from app.models.base import utcnow
from app.services import audit
from app.services.errors import NotFound
from app.services.errors import ValidationError
from app.services.errors import uuid_or_not_found

# Recognisable in logs and secret scanners; 256 random bits follow.
TOKEN_PREFIX = "kwscim_"  # noqa: S105 - a prefix, not a secret
# last_used_at is written at most this often per token: "last used" on the admin page needs
# no better resolution, and a write per SCIM request would cost more than the request.
TOUCH_INTERVAL = timedelta(seconds=60)
MAX_NAME_LENGTH = 100

_tokens = ScimToken.__table__
# Built once: every SCIM request runs it.
_BY_HASH = select(
    _tokens.c.id,
    _tokens.c.account_id,
    _tokens.c.name,
    _tokens.c.token_hash,
    _tokens.c.last_used_at,
).where(_tokens.c.token_hash == bindparam("token_hash"), _tokens.c.revoked_at.is_(None))
_TOUCH = (
    update(_tokens)
    .where(
        _tokens.c.id == bindparam("token_id"),
        or_(_tokens.c.last_used_at.is_(None), _tokens.c.last_used_at < bindparam("stale")),
    )
    .values(last_used_at=bindparam("now"))
)


@dataclass(frozen=True)
class AuthenticatedToken:
    """What a SCIM request knows of its token: who it acts for and as."""

    id: uuid.UUID
    account_id: int
    name: str
    # True when this request moved last_used_at (the caller commits it).
    touched: bool = False

    @property
    def label(self) -> str:
        """The audit trail's actor for everything this token does."""
        return f"SCIM token {self.name}"[:254]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    account: Account,
    name: str,
    *,
    provider_id: uuid.UUID | str | None = None,
    actor: User | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
) -> tuple[ScimToken, str]:
    """Issue a token for ``account``; returns the row and the token itself, which is shown
    once and never stored. ``provider_id`` links an SSO provider of the same account (it then
    cannot be deleted while the token is live). Raises ValidationError."""
    name = (name or "").strip()
    if not name:
        raise ValidationError("Name must not be empty.", "name")
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationError(f"Name must be at most {MAX_NAME_LENGTH} characters.", "name")
    provider = None
    if provider_id not in (None, ""):
        try:
            key = uuid_or_not_found(provider_id, "")
        except NotFound:
            key = None
        provider = db.session.get(SsoProvider, key) if key else None
        # Another account's provider reads exactly like a missing one.
        if provider is None or provider.account_id != account.id:
            raise ValidationError(f"No SSO provider {provider_id} in this account.", "provider")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ScimToken(
        account_id=account.id,
        provider_id=provider.id if provider else None,
        name=name,
        token_hash=hash_token(token),
        created_by_id=actor.id if actor else None,
    )
    db.session.add(row)
    db.session.flush()
    audit.record(
        "scim.token.created",
        actor=actor,
        account_id=account.id,
        target_type="scim_token",
        target_id=row.id,
        details={"name": name, "provider": str(provider.id) if provider else None},
        meta=meta,
    )
    return row, token


def authenticate(
    authorization: str | None, *, now: datetime | None = None
) -> AuthenticatedToken | None:
    """The live token of an ``Authorization: Bearer ...`` header, or None.

    The row is found by the token's SHA-256 (an index look-up on a hash reveals nothing about
    the token), then the hashes are compared in constant time. ``last_used_at`` moves at most
    every TOUCH_INTERVAL, in the caller's transaction (the caller commits)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        return None
    digest = hash_token(token)
    row = db.session.connection().execute(_BY_HASH, {"token_hash": digest}).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    now = now or utcnow()
    touched = False
    if row.last_used_at is None or now - row.last_used_at >= TOUCH_INTERVAL:
        result = db.session.connection().execute(
            _TOUCH, {"token_id": row.id, "stale": now - TOUCH_INTERVAL, "now": now}
        )
        touched = bool(result.rowcount)
    return AuthenticatedToken(id=row.id, account_id=row.account_id, name=row.name, touched=touched)


def list_tokens(account_id: int) -> list[ScimToken]:
    """Every token of the account, live ones first, newest first."""
    return list(
        db.session.scalars(
            select(ScimToken)
            .where(ScimToken.account_id == account_id)
            .order_by(ScimToken.revoked_at.is_not(None), ScimToken.created_at.desc())
        )
    )


def get_token(token_id: uuid.UUID | str, *, account_id: int | None = None) -> ScimToken:
    """A token by id (of ``account_id`` when given: another account's is NotFound)."""
    key = uuid_or_not_found(token_id, f"No SCIM token {token_id}.")
    row = db.session.get(ScimToken, key)
    if row is None or (account_id is not None and row.account_id != account_id):
        raise NotFound(f"No SCIM token {token_id}.")
    return row


def revoke_token(
    token: ScimToken, *, actor: User | None = None, meta: audit.RequestMeta = audit.NO_REQUEST
) -> bool:
    """Revoke the token; its next request is refused on every process. False when it was
    already revoked (nothing changes, nothing is audited)."""
    if token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    audit.record(
        "scim.token.revoked",
        actor=actor,
        account_id=token.account_id,
        target_type="scim_token",
        target_id=token.id,
        details={"name": token.name},
        meta=meta,
    )
    return True


def serialise(token: ScimToken, *, secret: str | None = None) -> dict:
    """The CLI's JSON shape; ``token`` only at creation."""
    data = {
        "id": str(token.id),
        "account_id": token.account_id,
        "name": token.name,
        "provider_id": str(token.provider_id) if token.provider_id else None,
        "created_at": token.created_at.isoformat() if token.created_at else None,
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }
    if secret is not None:
        data["token"] = secret
    return data
