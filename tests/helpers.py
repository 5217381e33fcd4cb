"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent
from app.models import Session


def session_cookie(client: FlaskClient, app: Flask) -> str | None:
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    return cookie.value if cookie is not None else None


def session_row(app: Flask, token: str) -> Session | None:
    with app.app_context():
        digest = hashlib.sha256(token.encode()).hexdigest()
        row = db.session.scalar(select(Session).where(Session.token_hash == digest))
        if row is not None:
            db.session.expunge(row)
        return row


def set_session_times(app: Flask, token: str, **times: datetime) -> None:
    with app.app_context():
        digest = hashlib.sha256(token.encode()).hexdigest()
        row = db.session.scalar(select(Session).where(Session.token_hash == digest))
        for name, value in times.items():
            setattr(row, name, value)
        db.session.commit()


def audit_actions(app: Flask) -> list[str]:
    """Every audit action recorded so far, oldest first."""
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def audit_events(app: Flask, action: str) -> list[dict]:
    with app.app_context():
        rows = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        )
        return [
            {
                "actor": r.actor_label,
                "target_id": r.target_id,
                "details": r.details,
                "ip": r.ip_address,
                "request_id": r.request_id,
            }
            for r in rows
        ]


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator:
    """Run a test's HTTP server in a thread for the ``with`` block; shut it down after."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
