"""Housekeeping services: sessions.purge_expired and audit.purge_events_older_than.

Rows are built directly with explicit, timezone-aware UTC timestamps relative to one `now`,
which is passed to the service, and each case sits a minute either side of its boundary.
The timeouts are read from the app's config, so the tests follow the settings.
"""

from __future__ import annotations

import uuid
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent
from app.models import Session
from app.services import audit
from app.services import sessions
from app.services.sessions import RETENTION_AFTER_END

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _timeout(app: Flask, name: str) -> timedelta:
    return timedelta(seconds=app.config[name])


def _add_session(
    *,
    user_id: uuid.UUID | None = None,
    created_at: datetime,
    last_seen_at: datetime | None = None,
    revoked_at: datetime | None = None,
) -> uuid.UUID:
    record = Session(
        token_hash=sessions.hash_token(sessions.new_token()),
        user_id=user_id,
        data={},
        created_at=created_at,
        last_seen_at=last_seen_at or created_at,
        authenticated_at=created_at if user_id is not None else None,
        auth_method="password" if user_id is not None else None,
        revoked_at=revoked_at,
        revoked_reason="signed_out" if revoked_at is not None else None,
    )
    db.session.add(record)
    db.session.flush()
    return record.id


def _session_ids() -> set[uuid.UUID]:
    return set(db.session.scalars(select(Session.id)))


@pytest.fixture
def user_id(make_user) -> uuid.UUID:
    return make_user("purge@example.com").id


def test_purge_deletes_revoked_sessions_after_the_retention_period(app, user_id):
    with app.app_context():
        old = _add_session(
            user_id=user_id,
            created_at=NOW - RETENTION_AFTER_END - timedelta(hours=1),
            last_seen_at=NOW - RETENTION_AFTER_END - 2 * MINUTE,
            revoked_at=NOW - RETENTION_AFTER_END - MINUTE,
        )
        recent = _add_session(
            user_id=user_id,
            created_at=NOW - RETENTION_AFTER_END + MINUTE,
            revoked_at=NOW - RETENTION_AFTER_END + 2 * MINUTE,
        )
        revoked_anonymous = _add_session(
            created_at=NOW - timedelta(minutes=10),
            revoked_at=NOW - RETENTION_AFTER_END - MINUTE,
        )
        db.session.commit()

        assert sessions.purge_expired(now=NOW) == 2
        db.session.commit()

        assert _session_ids() == {recent}
        assert old not in _session_ids() and revoked_anonymous not in _session_ids()


def test_purge_deletes_anonymous_sessions_idle_past_their_timeout(app):
    with app.app_context():
        timeout = _timeout(app, "ANONYMOUS_SESSION_TIMEOUT")
        idle = _add_session(
            created_at=NOW - timeout - timedelta(hours=1), last_seen_at=NOW - timeout - MINUTE
        )
        still_in_use = _add_session(
            created_at=NOW - timeout - timedelta(hours=1), last_seen_at=NOW - timeout + MINUTE
        )
        db.session.commit()

        assert sessions.purge_expired(now=NOW) == 1
        db.session.commit()

        assert _session_ids() == {still_in_use}
        assert idle not in _session_ids()


def test_purge_deletes_signed_in_sessions_idle_past_timeout_plus_retention(app, user_id):
    with app.app_context():
        idle_timeout = _timeout(app, "SESSION_IDLE_TIMEOUT")
        # Started recently enough that the absolute timeout is not what removes them.
        started = NOW - RETENTION_AFTER_END - timedelta(hours=1)
        ended_long_ago = _add_session(
            user_id=user_id,
            created_at=started,
            last_seen_at=NOW - RETENTION_AFTER_END - idle_timeout - MINUTE,
        )
        ended_within_retention = _add_session(
            user_id=user_id,
            created_at=started,
            last_seen_at=NOW - RETENTION_AFTER_END - idle_timeout + MINUTE,
        )
        db.session.commit()

        assert sessions.purge_expired(now=NOW) == 1
        db.session.commit()

        assert _session_ids() == {ended_within_retention}
        assert ended_long_ago not in _session_ids()


def test_purge_deletes_signed_in_sessions_past_absolute_timeout_plus_retention(app, user_id):
    with app.app_context():
        absolute_timeout = _timeout(app, "SESSION_ABSOLUTE_TIMEOUT")
        # Both were used a minute ago: only their age can end them.
        too_old = _add_session(
            user_id=user_id,
            created_at=NOW - RETENTION_AFTER_END - absolute_timeout - MINUTE,
            last_seen_at=NOW - MINUTE,
        )
        within_retention = _add_session(
            user_id=user_id,
            created_at=NOW - RETENTION_AFTER_END - absolute_timeout + MINUTE,
            last_seen_at=NOW - MINUTE,
        )
        db.session.commit()

        assert sessions.purge_expired(now=NOW) == 1
        db.session.commit()

        assert _session_ids() == {within_retention}
        assert too_old not in _session_ids()


def test_purge_keeps_live_sessions(app, user_id):
    with app.app_context():
        idle_timeout = _timeout(app, "SESSION_IDLE_TIMEOUT")
        absolute_timeout = _timeout(app, "SESSION_ABSOLUTE_TIMEOUT")
        anonymous_timeout = _timeout(app, "ANONYMOUS_SESSION_TIMEOUT")
        live = {
            _add_session(created_at=NOW - anonymous_timeout + MINUTE),
            _add_session(created_at=NOW - timedelta(seconds=5)),
            _add_session(user_id=user_id, created_at=NOW - idle_timeout + MINUTE),
            _add_session(
                user_id=user_id,
                created_at=NOW - absolute_timeout + MINUTE,
                last_seen_at=NOW - MINUTE,
            ),
        }
        db.session.commit()
        for record in db.session.scalars(select(Session)):
            assert sessions.expiry_reason(record, NOW) is None  # they really are live

        assert sessions.purge_expired(now=NOW) == 0
        db.session.commit()

        assert _session_ids() == live


def test_purge_is_safe_to_repeat(app, user_id):
    with app.app_context():
        _add_session(user_id=user_id, created_at=NOW - timedelta(days=30))
        _add_session(created_at=NOW - timedelta(days=1))
        kept = _add_session(user_id=user_id, created_at=NOW - MINUTE)
        db.session.commit()

        assert sessions.purge_expired(now=NOW) == 2
        db.session.commit()
        assert sessions.purge_expired(now=NOW) == 0
        db.session.commit()

        assert _session_ids() == {kept}


def test_purge_defaults_to_the_current_time(app, user_id):
    with app.app_context():
        now = datetime.now(UTC)
        _add_session(created_at=now - timedelta(days=2))
        kept = _add_session(user_id=user_id, created_at=now - MINUTE)
        db.session.commit()

        assert sessions.purge_expired() == 1
        db.session.commit()

        assert _session_ids() == {kept}


def _add_event(action: str, occurred_at: datetime) -> int:
    event = audit.record(action, actor_label="tests", details={"case": action})
    event.occurred_at = occurred_at
    db.session.flush()
    return event.id


def test_purge_events_older_than_keeps_recent_events(app):
    with app.app_context():
        days = app.config["AUDIT_RETENTION_DAYS"]
        cutoff = NOW - timedelta(days=days)
        _add_event("test.too_old", cutoff - MINUTE)
        _add_event("test.much_too_old", cutoff - timedelta(days=400))
        kept = {
            _add_event("test.just_inside", cutoff + MINUTE),
            _add_event("test.recent", NOW - timedelta(hours=1)),
        }
        db.session.commit()

        assert audit.purge_events_older_than(days, now=NOW) == 2
        db.session.commit()

        assert set(db.session.scalars(select(AuditEvent.id))) == kept
        assert audit.purge_events_older_than(days, now=NOW) == 0


def test_purge_events_older_than_honours_the_number_of_days(app):
    with app.app_context():
        ten_days_old = _add_event("test.ten_days", NOW - timedelta(days=10))
        two_days_old = _add_event("test.two_days", NOW - timedelta(days=2))
        db.session.commit()

        assert audit.purge_events_older_than(30, now=NOW) == 0
        assert audit.purge_events_older_than(7, now=NOW) == 1
        db.session.commit()

        remaining = set(db.session.scalars(select(AuditEvent.id)))
        assert ten_days_old not in remaining
        assert two_days_old in remaining
