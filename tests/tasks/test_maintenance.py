"""Maintenance tasks through Celery: eagerly without Redis, in a real worker with it.

The same tests run both ways; the worker (tests/tasks/conftest.py) works on the tests'
database, so it sees the rows a test commits and the test sees what it deleted.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC
from datetime import datetime
from datetime import timedelta

from celery.beat import Scheduler
from celery.result import AsyncResult
from celery.result import EagerResult
from flask import Flask
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent
from app.models import Session
from app.services import audit
from app.services import sessions
from app.tasks.maintenance import purge_expired_scheme_aliases
from app.tasks.maintenance import purge_expired_sessions
from app.tasks.maintenance import purge_old_audit_events

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL") or None
MAINTENANCE_TASKS = {
    "maintenance.purge_expired_sessions",
    "maintenance.purge_old_audit_events",
    "maintenance.purge_expired_scheme_aliases",
}
RESULT_TIMEOUT = 30


def _add_session(user_id: uuid.UUID | None, *, last_seen_at: datetime, **times) -> uuid.UUID:
    record = Session(
        token_hash=sessions.hash_token(sessions.new_token()),
        user_id=user_id,
        data={},
        created_at=times.get("created_at", last_seen_at),
        last_seen_at=last_seen_at,
        authenticated_at=times.get("created_at", last_seen_at) if user_id else None,
        revoked_at=times.get("revoked_at"),
        revoked_reason="signed_out" if times.get("revoked_at") else None,
    )
    db.session.add(record)
    db.session.flush()
    return record.id


def _add_expired_and_live_sessions(app: Flask, user_id: uuid.UUID) -> set[uuid.UUID]:
    """Commit two sessions the purge removes and two it keeps; returns the kept ids."""
    now = datetime.now(UTC)
    with app.app_context():
        _add_session(None, last_seen_at=now - timedelta(days=1))
        _add_session(
            user_id,
            last_seen_at=now - timedelta(days=9),
            revoked_at=now - timedelta(days=8),
        )
        kept = {
            _add_session(None, last_seen_at=now - timedelta(minutes=5)),
            _add_session(
                user_id,
                created_at=now - timedelta(hours=1),
                last_seen_at=now - timedelta(minutes=1),
            ),
        }
        db.session.commit()
    return kept


def _session_ids(app: Flask) -> set[uuid.UUID]:
    with app.app_context():
        return set(db.session.scalars(select(Session.id)))


def test_tasks_are_sent_through_the_app_celery(app, celery_app):
    assert purge_expired_sessions.app is celery_app
    assert purge_old_audit_events.app is celery_app
    assert celery_app.conf.task_always_eager is (TEST_REDIS_URL is None)
    assert celery_app.conf.task_serializer == "json"


def test_purge_expired_sessions_task_returns_the_count(app, celery_app, make_user):
    kept = _add_expired_and_live_sessions(app, make_user().id)

    assert purge_expired_sessions.delay().get(timeout=RESULT_TIMEOUT) == 2

    assert _session_ids(app) == kept
    # Safe to retry: a second run finds nothing left to delete.
    assert purge_expired_sessions.delay().get(timeout=RESULT_TIMEOUT) == 0
    assert _session_ids(app) == kept


def test_purge_old_audit_events_task_uses_the_retention_setting(app, celery_app):
    days = app.config["AUDIT_RETENTION_DAYS"]
    now = datetime.now(UTC)
    with app.app_context():
        old = audit.record("test.old", actor_label="tests")
        old.occurred_at = now - timedelta(days=days, hours=1)
        recent = audit.record("test.recent", actor_label="tests")
        recent.occurred_at = now - timedelta(days=days) + timedelta(hours=1)
        db.session.commit()
        recent_id = recent.id

    assert purge_old_audit_events.delay().get(timeout=RESULT_TIMEOUT) == 1

    with app.app_context():
        assert list(db.session.scalars(select(AuditEvent.id))) == [recent_id]


def test_purge_expired_scheme_aliases_frees_the_old_names(app, celery_app, make_account):
    from app.models import ProviderSchemeAlias
    from app.models import SsoProvider

    account = make_account()
    now = datetime.now(UTC)
    with app.app_context():
        provider = SsoProvider(
            account_id=account.id,
            display_name="Acme",
            scheme="AcmeNew",
            scheme_key="acmenew",
            client_id="acme",
            authority="https://idp.example",
        )
        db.session.add(provider)
        db.session.flush()
        for scheme, expires_at in (
            ("Gone", now - timedelta(hours=1)),
            ("Kept", now + timedelta(days=1)),
        ):
            db.session.add(
                ProviderSchemeAlias(
                    provider_id=provider.id,
                    scheme=scheme,
                    scheme_key=scheme.lower(),
                    created_at=now - timedelta(days=30),
                    expires_at=expires_at,
                )
            )
        db.session.commit()

    assert purge_expired_scheme_aliases.delay().get(timeout=RESULT_TIMEOUT) == 1

    with app.app_context():
        assert list(db.session.scalars(select(ProviderSchemeAlias.scheme))) == ["Kept"]
    assert purge_expired_scheme_aliases.delay().get(timeout=RESULT_TIMEOUT) == 0


def test_tasks_run_where_the_configuration_says(app, celery_app, celery_worker, make_user):
    """Without Redis: eagerly, in this process. With Redis: in the worker process.

    One test for both modes (no skip): each of the suite's two passes checks its own mode.
    """
    if TEST_REDIS_URL is None:
        assert celery_worker is None
        assert celery_app.conf.task_always_eager
        result = purge_expired_sessions.delay()
        assert isinstance(result, EagerResult)
        assert result.successful()
        assert result.get() == 0
        return

    name = "maintenance.purge_expired_sessions"
    inspect = celery_app.control.inspect(destination=[celery_worker.hostname], timeout=5)
    stats = (inspect.stats() or {}).get(celery_worker.hostname)
    assert stats is not None, f"the worker does not answer inspect:\n{celery_worker.log()}"
    # The worker is the process the fixture started, not this one.
    assert stats["pid"] == celery_worker.pid != os.getpid()
    assert MAINTENANCE_TASKS <= set(inspect.registered()[celery_worker.hostname])
    runs_before = stats["total"].get(name, 0)
    kept = _add_expired_and_live_sessions(app, make_user().id)

    result = purge_expired_sessions.delay()

    assert not isinstance(result, EagerResult)
    assert result.get(timeout=RESULT_TIMEOUT) == 2
    # Read back from the Redis result backend under a fresh handle.
    stored = AsyncResult(result.id, app=celery_app)
    assert stored.state == "SUCCESS"
    assert stored.result == 2
    assert inspect.stats()[celery_worker.hostname]["total"].get(name, 0) == runs_before + 1
    assert _session_ids(app) == kept


def test_beat_schedules_both_maintenance_tasks(app, celery_app):
    schedule = celery_app.conf.beat_schedule
    assert {entry["task"] for entry in schedule.values()} >= MAINTENANCE_TASKS

    # What the worker and beat do at start-up: import the modules named in `imports`.
    celery_app.loader.import_default_modules()
    for name, entry in schedule.items():
        assert entry["task"] in celery_app.tasks, f"{name}: {entry['task']} is not a task"

    # Beat can turn the configuration into schedule entries (without connecting to a broker).
    scheduler = Scheduler(app=celery_app, lazy=True)
    scheduler.setup_schedule()
    for name, entry in schedule.items():
        interval = scheduler.schedule[name].schedule.run_every
        assert interval == timedelta(seconds=entry["schedule"]) > timedelta(0)
