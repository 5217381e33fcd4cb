"""Record AuditEvents; the only writer of the audit trail."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from typing import Any
from typing import Protocol

from sqlalchemy import delete
from sqlalchemy import insert
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent
from app.models import User
from app.models.base import utcnow


@dataclass(frozen=True)
class RequestMeta:
    """Where an action came from: filled in by the web layer, empty for CLI and tasks."""

    ip_address: str | None = None
    request_id: str | None = None


NO_REQUEST = RequestMeta()


class Actor(Protocol):
    """Who acted, as insert_now() needs it: a User, or a row with the same two columns."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def email(self) -> str: ...


def _values(
    action: str,
    actor: User | Actor | None,
    actor_label: str | None,
    account_id: int | None,
    target_type: str | None,
    target_id: str | uuid.UUID | int | None,
    details: dict[str, Any] | None,
    meta: RequestMeta,
) -> dict[str, Any]:
    return {
        "action": action,
        "actor_user_id": actor.id if actor is not None else None,
        "actor_label": actor.email if actor is not None else actor_label,
        "account_id": account_id,
        "target_type": target_type,
        "target_id": str(target_id) if target_id is not None else None,
        "ip_address": meta.ip_address,
        "request_id": meta.request_id,
        "details": details or {},
    }


def record(
    action: str,
    *,
    actor: User | None = None,
    actor_label: str | None = None,
    account_id: int | None = None,
    target_type: str | None = None,
    target_id: str | uuid.UUID | int | None = None,
    details: dict[str, Any] | None = None,
    meta: RequestMeta = NO_REQUEST,
) -> AuditEvent:
    """Add one AuditEvent to the session (flushed with the caller's transaction).

    ``details`` must never hold a secret: callers pass identifiers and reasons only.
    """
    event = AuditEvent(
        **_values(action, actor, actor_label, account_id, target_type, target_id, details, meta)
    )
    db.session.add(event)
    return event


# Built once (see insert_now).
TABLE = AuditEvent.__table__
_INSERT = insert(TABLE)


def insert_now(
    action: str,
    *,
    actor: User | Actor | None = None,
    actor_label: str | None = None,
    account_id: int | None = None,
    target_type: str | None = None,
    target_id: str | uuid.UUID | int | None = None,
    details: dict[str, Any] | None = None,
    meta: RequestMeta = NO_REQUEST,
) -> None:
    """record() for hot paths: one INSERT at once, in the caller's transaction, and no ORM
    object (whose unit-of-work flush costs more than the insert). Same rules as record()."""
    values = values_now(
        action,
        actor=actor,
        actor_label=actor_label,
        account_id=account_id,
        target_type=target_type,
        target_id=target_id,
        details=details,
        meta=meta,
    )
    db.session.connection().execute(_INSERT, values)


def values_now(
    action: str,
    *,
    actor: User | Actor | None = None,
    actor_label: str | None = None,
    account_id: int | None = None,
    target_type: str | None = None,
    target_id: str | uuid.UUID | int | None = None,
    details: dict[str, Any] | None = None,
    meta: RequestMeta = NO_REQUEST,
) -> dict[str, Any]:
    """The row insert_now() writes (every column of TABLE but ``id``), for a caller that
    writes it as part of a larger statement. Same rules as record()."""
    values = _values(action, actor, actor_label, account_id, target_type, target_id, details, meta)
    values["occurred_at"] = utcnow()
    return values


def list_events(
    *,
    account_id: int | None = None,
    action_prefix: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = 100,
    offset: int = 0,
) -> list[AuditEvent]:
    """Audit events, newest first, optionally for one account, an action prefix and a time
    range: ``since`` included, ``until`` excluded (aware datetimes)."""
    query = select(AuditEvent).order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())
    if account_id is not None:
        query = query.where(AuditEvent.account_id == account_id)
    if since is not None:
        query = query.where(AuditEvent.occurred_at >= since)
    if until is not None:
        query = query.where(AuditEvent.occurred_at < until)
    if action_prefix:
        # Prefix match on whole dotted segments or a partial one ("auth" and "auth.sign").
        escaped = action_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(AuditEvent.action.like(escaped + "%", escape="\\"))
    if offset:
        query = query.offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list(db.session.scalars(query))


def purge_events_older_than(days: int, *, now: datetime | None = None) -> int:
    """Delete audit events older than ``days``; returns how many were removed."""
    cutoff = (now or utcnow()) - timedelta(days=days)
    result = db.session.execute(delete(AuditEvent).where(AuditEvent.occurred_at < cutoff))
    return result.rowcount or 0


def serialise(event: AuditEvent) -> dict[str, Any]:
    """The JSON shape shared by `flask audit list --json` and the admin page."""
    return {
        "id": event.id,
        "occurred_at": event.occurred_at.isoformat(),
        "action": event.action,
        "actor_user_id": str(event.actor_user_id) if event.actor_user_id else None,
        "actor": event.actor_label,
        "account_id": event.account_id,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "ip_address": event.ip_address,
        "request_id": event.request_id,
        "details": event.details or {},
    }
