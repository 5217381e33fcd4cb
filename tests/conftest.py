"""Shared fixtures: an app per test on a migrated database, a client, sign-in helpers.

The database is SQLite by default. With TEST_DATABASE_URL (and TEST_REDIS_URL) the same
suite runs on PostgreSQL and Redis; those services must then answer, or the run fails.
Every test starts with empty tables (rows are deleted after each test), so tests can use
several app instances, a gunicorn server and a Celery worker against one database.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis as redis_lib
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade
from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app import create_app
from app.extensions import db
from app.extensions import limiter
from config.settings import database_uri

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL") or None
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL") or None
IN_CI = os.environ.get("CI", "").lower() == "true"

DEFAULT_PASSWORD = "correct horse battery staple"

# One SECRET_KEY and ENCRYPTION_KEYS for the whole run, inherited by the gunicorn and Celery
# processes the tests start: they must accept each other's CSRF tokens and read each other's
# encrypted secrets (the testing settings would otherwise draw new ones in every process).
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(32))
os.environ.setdefault("ENCRYPTION_KEYS", Fernet.generate_key().decode())
CSRF_PATTERN = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def pytest_report_header(config) -> str:
    return (
        f"keyward database: {'PostgreSQL' if TEST_DATABASE_URL else 'SQLite'}; "
        f"redis: {'yes' if TEST_REDIS_URL else 'no (in-process)'}; CI: {IN_CI}"
    )


# --- no network --------------------------------------------------------------------------
# Tests may talk to loopback services only (PostgreSQL, Redis, servers they start).
_real_connect = socket.socket.connect


def _loopback_only_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("127."):
            raise OSError(f"tests may not reach {host}: only loopback is allowed")
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def _block_network() -> Iterator[None]:
    socket.socket.connect = _loopback_only_connect  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]


# --- database ----------------------------------------------------------------------------
def _require_redis() -> None:
    """Fail the whole run (never skip) when TEST_REDIS_URL is set but Redis does not answer."""
    if TEST_REDIS_URL:
        try:
            client = redis_lib.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=3)
            client.ping()
            client.close()
        except Exception as exc:
            pytest.exit(f"TEST_REDIS_URL is set but Redis does not answer: {exc}", 3)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> Iterator[str]:
    """A database built by the Alembic migrations (so the migrations are tested too).

    On PostgreSQL each run gets its own database, created next to TEST_DATABASE_URL's and
    dropped at the end, so two runs on one machine never share tables.
    """
    _require_redis()
    if TEST_DATABASE_URL:
        server = make_url(database_uri(TEST_DATABASE_URL))
        name = f"keyward_test_{os.getpid()}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            admin.dispose()
            pytest.exit(f"TEST_DATABASE_URL is set but PostgreSQL does not answer: {exc}", 3)
        url = server.set(database=name).render_as_string(hide_password=False)
    else:
        admin = None
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'keyward.db'}"
    app = create_app(base_config(url))
    with app.app_context():
        upgrade()
        db.engine.dispose()
    yield url
    if admin is not None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def base_config(database_url: str, **extra: str) -> dict:
    """Settings of a test app (strings are read as environment variables)."""
    config = {
        "KEYWARD_ENV": "testing",
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL or "",
        "PUBLIC_URL": "http://localhost",
    }
    config.update(extra)
    return config


@pytest.fixture
def config(database_url) -> dict:
    """Overridable per test module: return a dict with changes from base_config."""
    return base_config(database_url)


def _empty_tables(app: Flask) -> None:
    with app.app_context():
        with db.engine.begin() as conn:
            for table in reversed(db.metadata.sorted_tables):
                conn.execute(table.delete())
        db.engine.dispose()


@pytest.fixture
def app(config) -> Iterator[Flask]:
    app = create_app(config)
    with app.app_context():
        limiter.reset()  # fresh rate-limit counters (memory or Redis) for every test
    yield app
    _empty_tables(app)


@pytest.fixture
def make_app(config, app) -> Iterator:
    """More app instances on the test database (another web process); closed at the end.

    Depends on ``app`` so that whatever they write is emptied after the test too."""
    made: list[Flask] = []

    def _make(**changes: str) -> Flask:
        app = create_app({**config, **changes})
        made.append(app)
        return app

    yield _make
    for app in made:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def client(app) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


# --- data helpers ------------------------------------------------------------------------
@pytest.fixture
def make_account(app):
    from app.services import accounts

    def _make(name: str = "Acme", slug: str | None = None) -> SimpleNamespace:
        with app.app_context():
            account = accounts.create_account(name, slug)
            db.session.commit()
            return SimpleNamespace(id=account.id, name=account.name, slug=account.slug)

    return _make


@pytest.fixture
def make_user(app):
    from app.models import Role
    from app.services import accounts
    from app.services import users

    def _make(
        email: str = "user@example.com",
        password: str | None = DEFAULT_PASSWORD,
        *,
        account_id: int | None = None,
        role: str = "member",
    ) -> SimpleNamespace:
        with app.app_context():
            user = users.create_user(email, password)
            if account_id is not None:
                accounts.add_member(accounts.get_account(account_id), user, Role(role))
            db.session.commit()
            return SimpleNamespace(id=user.id, email=user.email, password=password)

    return _make


def csrf_token_from(html: str) -> str:
    match = CSRF_PATTERN.search(html)
    assert match, "the page has no CSRF token"
    return match.group(1)


class AuthActions:
    """Sign in and out through the real pages (CSRF on), like a browser."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def token(self, path: str = "/login") -> str:
        response = self.client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        return csrf_token_from(response.text)

    def login(self, email: str, password: str = DEFAULT_PASSWORD, next: str | None = None):
        data = {"email": email, "password": password, "csrf_token": self.token()}
        if next is not None:
            data["next"] = next
        return self.client.post("/login", data=data)

    def logout(self):
        return self.client.post("/logout", data={"csrf_token": self.token("/account")})

    def post(self, path: str, data: dict | None = None, token_from: str = "/account"):
        payload = {"csrf_token": self.token(token_from), **(data or {})}
        return self.client.post(path, data=payload)


@pytest.fixture
def auth(client) -> AuthActions:
    return AuthActions(client)
