"""Readiness checks of the services Keyward depends on."""

from __future__ import annotations

import logging

import redis
from sqlalchemy import text

from app.extensions import db

log = logging.getLogger(__name__)


def check_dependencies(redis_url: str | None) -> dict[str, dict]:
    """{"database": {"ok": bool}, "redis": {...}} — Redis only when configured.

    Failures are logged with their cause; the answer names only the failing part, so the
    endpoint leaks no connection string or password.
    """
    checks: dict[str, dict] = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:  # any driver error means "not ready"
        log.warning("readiness: database check failed: %s", type(exc).__name__)
        db.session.rollback()
        checks["database"] = {"ok": False}
    if redis_url:
        try:
            client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
            try:
                client.ping()
            finally:
                client.close()
            checks["redis"] = {"ok": True}
        except Exception as exc:
            log.warning("readiness: redis check failed: %s", type(exc).__name__)
            checks["redis"] = {"ok": False}
    return checks
