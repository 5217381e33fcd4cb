"""Server-side sessions: create, rotate at sign-in, expire, list and revoke.

The cookie carries a random token; rows store its SHA-256. Every request reads the row, so a
revocation written by any process takes effect on the next request everywhere.

The statements that run on every request (look-up, insert, revoke, save) are built once, at
import, and run on the ORM session's connection: building a statement and its cache key costs
several times more than executing it, and a request that only needs the row's id, user and
payload has no use for an ORM object (``ServerSession.record`` loads one when a view asks).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Collection
from datetime import datetime
from datetime import timedelta
from typing import Any
from typing import NamedTuple

from flask import current_app
from sqlalchemy import bindparam
from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import make_transient_to_detached

from app.extensions import db
from app.models import Session
from app.models import User
from app.models.base import utcnow
from app.services import audit
from app.services.errors import NotFound
from app.services.errors import uuid_or_not_found

# last_seen_at is written at most this often per session: enough for idle timeouts measured
# in minutes, without a database write on every request.
TOUCH_INTERVAL = timedelta(seconds=60)
# Revoked and expired rows are kept this long for the "Your sessions" history and forensics.
RETENTION_AFTER_END = timedelta(days=7)

_sessions = Session.__table__
_users = User.__table__


class LiveSession(NamedTuple):
    """What a request needs of its live session row (see find_live)."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    data: dict[str, Any] | None
    created_at: datetime
    last_seen_at: datetime
    authenticated_at: datetime | None

    @classmethod
    def of(cls, values: dict[str, Any]) -> LiveSession:
        """The snapshot of a row from its column values (what insert_session returns)."""
        return cls(*(values[name] for name in cls._fields))


# One row: the live session and whether its user is active (the columns of LiveSession first).
_FIND_LIVE = (
    select(
        _sessions.c.id,
        _sessions.c.user_id,
        _sessions.c.data,
        _sessions.c.created_at,
        _sessions.c.last_seen_at,
        _sessions.c.authenticated_at,
        _users.c.active,
    )
    .select_from(_sessions.outerjoin(_users, _sessions.c.user_id == _users.c.id))
    .where(_sessions.c.token_hash == bindparam("token_hash"), _sessions.c.revoked_at.is_(None))
)
_INSERT = insert(_sessions)
_REVOKE = (
    update(_sessions)
    .where(_sessions.c.id == bindparam("session_id"), _sessions.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now"), revoked_reason=bindparam("reason"))
)
_SAVE_DATA = (
    update(_sessions)
    .where(_sessions.c.id == bindparam("session_id"))
    .values(data=bindparam("new_data"))
)
_SAVE_DATA_AND_TOUCH = (
    update(_sessions)
    .where(_sessions.c.id == bindparam("session_id"))
    .values(data=bindparam("new_data"), last_seen_at=bindparam("now"))
)
_TOUCH = (
    update(_sessions)
    .where(_sessions.c.id == bindparam("session_id"))
    .values(last_seen_at=bindparam("now"))
)


def _execute(statement, parameters: dict[str, Any]):
    """Run a prebuilt statement in the ORM session's transaction."""
    return db.session.connection().execute(statement, parameters)


def new_token() -> str:
    """A 256-bit random session token (what the cookie carries)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _seconds(name: str) -> timedelta:
    return timedelta(seconds=current_app.config[name])


def expiry_reason(record: Session | LiveSession, now: datetime) -> str | None:
    """Why the session has timed out ("idle_timeout", "absolute_timeout"), or None."""
    if record.user_id is None:
        if now - record.last_seen_at > _seconds("ANONYMOUS_SESSION_TIMEOUT"):
            return "idle_timeout"
        return None
    if now - record.last_seen_at > _seconds("SESSION_IDLE_TIMEOUT"):
        return "idle_timeout"
    started = record.authenticated_at or record.created_at
    if now - started > _seconds("SESSION_ABSOLUTE_TIMEOUT"):
        return "absolute_timeout"
    return None


def find_live(token: str, *, now: datetime | None = None) -> LiveSession | None:
    """The live session for a cookie token, or None.

    A session found expired, or whose user is deactivated, is revoked on the spot (in the
    caller's transaction).
    """
    if not token or len(token) > 128:
        return None
    now = now or utcnow()
    row = _execute(_FIND_LIVE, {"token_hash": hash_token(token)}).first()
    if row is None:
        return None
    live = LiveSession(*row[:6])
    reason = expiry_reason(live, now)
    if reason is None and live.user_id is not None and not row[6]:
        reason = "user_inactive"
    if reason is not None:
        revoke_id(live.id, reason, now=now)
        return None
    return live


def insert_session(
    *,
    data: dict[str, Any],
    user_id: uuid.UUID | None = None,
    auth_method: str | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    provider_id: uuid.UUID | None = None,
    idp_sid: str | None = None,
    idp_subject: str | None = None,
    id_token_encrypted: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Insert a new session row (one statement, no ORM object); returns its column values
    and the token for the cookie."""
    now = utcnow()
    token = new_token()
    values = {
        "id": uuid.uuid4(),
        "token_hash": hash_token(token),
        "user_id": user_id,
        "data": dict(data),
        "created_at": now,
        "last_seen_at": now,
        "authenticated_at": now if user_id is not None else None,
        "auth_method": auth_method,
        "provider_id": provider_id,
        "idp_sid": idp_sid,
        "idp_subject": idp_subject,
        "id_token_encrypted": id_token_encrypted,
        "ip_address": ip_address,
        "user_agent": (user_agent or "")[:512] or None,
        "revoked_at": None,
        "revoked_reason": None,
    }
    _execute(_INSERT, values)
    return values, token


def attach(values: dict[str, Any]) -> Session:
    """The ORM object of a row insert_session has just written, without reading it back."""
    record = Session(**values)
    make_transient_to_detached(record)
    db.session.add(record)
    return record


def rotate(
    previous: Session | uuid.UUID | None,
    user_id: uuid.UUID,
    *,
    auth_method: str,
    data: dict[str, Any],
    ip_address: str | None,
    user_agent: str | None,
    provider_id: uuid.UUID | None = None,
    idp_sid: str | None = None,
    idp_subject: str | None = None,
    id_token_encrypted: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Bind a sign-in to a brand-new session id (session fixation defence): the previous row
    (anonymous or another user's; the object or its id) is revoked, never reused, and its
    payload is carried over by the caller as ``data``. Returns the new row's column values
    and the token for the cookie."""
    if isinstance(previous, Session):
        revoke(previous, "rotated")
    elif previous is not None:
        revoke_id(previous, "rotated")
    return insert_session(
        data=data,
        user_id=user_id,
        auth_method=auth_method,
        ip_address=ip_address,
        user_agent=user_agent,
        provider_id=provider_id,
        idp_sid=idp_sid,
        idp_subject=idp_subject,
        id_token_encrypted=id_token_encrypted,
    )


def save_changes(
    session_id: uuid.UUID,
    *,
    data: dict[str, Any] | None,
    last_seen: datetime | None,
    now: datetime | None = None,
) -> bool:
    """Write a changed payload and/or move last_seen_at forward (at most every
    TOUCH_INTERVAL) in one UPDATE by id; True when something was written."""
    now = now or utcnow()
    touch = last_seen is None or now - last_seen >= TOUCH_INTERVAL
    if data is not None:
        statement = _SAVE_DATA_AND_TOUCH if touch else _SAVE_DATA
        _execute(statement, {"session_id": session_id, "new_data": data, "now": now})
        return True
    if touch:
        _execute(_TOUCH, {"session_id": session_id, "now": now})
        return True
    return False


def revoke(record: Session, reason: str) -> None:
    if record.revoked_at is None:
        record.revoked_at = utcnow()
        record.revoked_reason = reason


def revoke_id(session_id: uuid.UUID, reason: str, *, now: datetime | None = None) -> bool:
    """Revoke a live session by id in one UPDATE (no ORM object); True when it was live."""
    result = _execute(_REVOKE, {"session_id": session_id, "now": now or utcnow(), "reason": reason})
    return bool(result.rowcount)


def revoke_user_sessions(user: User, *, reason: str, keep: uuid.UUID | None = None) -> int:
    """End every live session of ``user`` except ``keep``, in one UPDATE; returns the count."""
    query = (
        update(Session)
        .where(Session.user_id == user.id, Session.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    if keep is not None:
        query = query.where(Session.id != keep)
    return db.session.execute(query).rowcount or 0


def revoke_idp_sessions(
    provider_id: uuid.UUID, *, sid: str | None = None, subject: str | None = None, reason: str
) -> int:
    """End the live sessions an IdP signs out (front- or back-channel logout): those of the
    provider with that IdP ``sid``, or, without a sid, all of that subject's. One UPDATE, so
    it takes effect on every web process at their next request."""
    if sid is None and subject is None:
        return 0
    query = (
        update(Session)
        .where(Session.provider_id == provider_id, Session.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    if sid is not None:
        query = query.where(Session.idp_sid == sid)
        if subject is not None:
            query = query.where(Session.idp_subject == subject)
    else:
        query = query.where(Session.idp_subject == subject)
    return db.session.execute(query).rowcount or 0


def revoke_subject_sessions(
    provider_id: uuid.UUID, *, subject: str, sids: Collection[str] = (), reason: str
) -> int:
    """End the live sessions of one IdP subject at one provider (SAML single logout, core
    3.7.3.2: a LogoutRequest names the NameID and, optionally, the SessionIndex values to
    end): all of the subject's sessions there, or only those whose IdP sid is one of
    ``sids`` when any are given. One UPDATE, effective on every web process at their next
    request; returns how many ended."""
    if not subject:
        return 0
    query = (
        update(Session)
        .where(
            Session.provider_id == provider_id,
            Session.idp_subject == subject,
            Session.revoked_at.is_(None),
        )
        .values(revoked_at=utcnow(), revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    if sids:
        query = query.where(Session.idp_sid.in_(list(sids)))
    return db.session.execute(query).rowcount or 0


def list_live_sessions(user: User, *, now: datetime | None = None) -> list[Session]:
    """The user's sessions that are neither revoked nor timed out, most recent first."""
    now = now or utcnow()
    rows = db.session.scalars(
        select(Session)
        .where(Session.user_id == user.id, Session.revoked_at.is_(None))
        .order_by(Session.last_seen_at.desc())
    )
    return [row for row in rows if expiry_reason(row, now) is None]


def end_session(
    user: User,
    session_id: uuid.UUID | str,
    *,
    meta: audit.RequestMeta,
    reason: str = "ended_by_user",
) -> Session:
    """End one of the user's own sessions. Another user's id is NotFound (never revealed)."""
    key = uuid_or_not_found(session_id, "No such session.")
    record = db.session.scalar(select(Session).where(Session.id == key, Session.user_id == user.id))
    if record is None:
        raise NotFound("No such session.")
    revoke(record, reason)
    audit.record(
        "session.revoked",
        actor=user,
        target_type="session",
        target_id=record.id,
        details={"reason": reason},
        meta=meta,
    )
    return record


def end_other_sessions(user: User, current: Session, *, meta: audit.RequestMeta) -> int:
    """End every session of the user except the current one; returns the count."""
    ended = revoke_user_sessions(user, reason="ended_by_user", keep=current.id)
    audit.record(
        "session.revoked",
        actor=user,
        target_type="user",
        target_id=user.id,
        details={"reason": "ended_by_user", "scope": "others", "count": ended},
        meta=meta,
    )
    return ended


def purge_expired(*, now: datetime | None = None) -> int:
    """Delete sessions that ended (or idled out) over RETENTION_AFTER_END ago; returns count."""
    now = now or utcnow()
    ended_before = now - RETENTION_AFTER_END
    anonymous_idle = now - _seconds("ANONYMOUS_SESSION_TIMEOUT")
    user_idle = now - _seconds("SESSION_IDLE_TIMEOUT") - RETENTION_AFTER_END
    user_absolute = now - _seconds("SESSION_ABSOLUTE_TIMEOUT") - RETENTION_AFTER_END
    result = db.session.execute(
        delete(Session).where(
            or_(
                Session.revoked_at < ended_before,
                (Session.user_id.is_(None)) & (Session.last_seen_at < anonymous_idle),
                (Session.user_id.is_not(None)) & (Session.last_seen_at < user_idle),
                # The same start as expiry_reason(): authentication time, else creation.
                (Session.user_id.is_not(None))
                & (func.coalesce(Session.authenticated_at, Session.created_at) < user_absolute),
            )
        )
    )
    return result.rowcount or 0
