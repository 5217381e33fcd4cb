"""Periodic housekeeping: expired sessions, old audit events, expired scheme aliases."""

from __future__ import annotations

from celery import shared_task
from flask import current_app

from app.extensions import db
from app.services import audit
from app.services import providers
from app.services import sessions
from app.tasks.locking import locked_task

# Periodic tasks run once at a time across every beat and worker (a second beat, or a run
# still going when the next is due, skips); a killed run holds the lock this long at most.
LOCK_TTL = 10 * 60


@shared_task(name="maintenance.purge_expired_sessions")
@locked_task(ttl=LOCK_TTL)
def purge_expired_sessions() -> int | None:
    """Delete sessions that ended or timed out a while ago; returns how many (None when
    another run holds the lock). Safe to retry."""
    removed = sessions.purge_expired()
    db.session.commit()
    return removed


@shared_task(name="maintenance.purge_old_audit_events")
@locked_task(ttl=LOCK_TTL)
def purge_old_audit_events() -> int | None:
    """Delete audit events older than AUDIT_RETENTION_DAYS; returns how many. Safe to retry."""
    removed = audit.purge_events_older_than(current_app.config["AUDIT_RETENTION_DAYS"])
    db.session.commit()
    return removed


@shared_task(name="maintenance.purge_expired_scheme_aliases")
@locked_task(ttl=LOCK_TTL)
def purge_expired_scheme_aliases() -> int | None:
    """Delete the old callback schemes whose grace period after a rename is over (they no
    longer resolve anyway; this frees the name for another provider). Safe to retry."""
    removed = providers.purge_expired_aliases()
    db.session.commit()
    return removed
