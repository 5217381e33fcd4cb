"""Keyward application factory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from config import load_config


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Keyward app.

    ``config`` overrides the environment: its string values are read as environment variables
    by the settings classes (so they are parsed and validated like real ones); other values
    are set on ``app.config`` as given (tests use both).
    """
    app = Flask(__name__, instance_relative_config=True)
    overrides = dict(config or {})
    environ = {**os.environ, **{k: v for k, v in overrides.items() if isinstance(v, str)}}
    settings = load_config(environ, Path(app.instance_path))
    app.config.from_object(settings)
    app.config.update({k: v for k, v in overrides.items() if not isinstance(v, str)})

    register_extensions(app)
    sync_builtin_providers(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_security_headers(app)
    register_cli(app)
    return app


def register_extensions(app: Flask) -> None:
    from app.cache import init_cache
    from app.celery import celery_init_app
    from app.extensions import csrf
    from app.extensions import db
    from app.extensions import limiter
    from app.extensions import login_manager
    from app.extensions import migrate
    from app.logging import configure_logging
    from app.request_hooks import register_request_hooks
    from app.session_interface import DatabaseSessionInterface

    configure_logging(app.config["LOG_FORMAT"], app.config["LOG_LEVEL"])
    if app.config["TRUSTED_PROXY_COUNT"]:
        hops = app.config["TRUSTED_PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]

    # First, so that requests refused by CSRF or the rate limiter also get a request id.
    register_request_hooks(app)
    db.init_app(app)
    _configure_sqlite(app)
    migrate.init_app(app, db, directory=str(Path(__file__).parent.parent / "migrations"))
    csrf.init_app(app)
    _use_swept_memory_storage(app)
    limiter.init_app(app)
    app.session_interface = DatabaseSessionInterface()

    login_manager.init_app(app)
    login_manager.session_protection = None  # the server-side session record is the truth
    from app import auth_loader  # noqa: F401  (registers the Flask-Login callbacks)

    celery_init_app(app)
    init_cache(app)


def sync_builtin_providers(app: Flask) -> None:
    """Built-in Google/Microsoft providers come from the environment at start-up (DESIGN).

    Skipped quietly before the first migration (no tables yet); two processes starting at
    once may race on the unique row, and the loser simply finds it created."""
    if not (app.config.get("GOOGLE_CLIENT_ID") or app.config.get("MICROSOFT_CLIENT_ID")):
        return
    from sqlalchemy.exc import SQLAlchemyError

    from app.extensions import db
    from app.services import providers

    with app.app_context():
        try:
            providers.sync_builtin_providers(app.config)
            db.session.commit()
        except SQLAlchemyError as error:
            db.session.rollback()
            app.logger.info("built-in providers not synced yet: %s", type(error).__name__)


def _use_swept_memory_storage(app: Flask) -> None:
    """Without Redis, the limiter keeps its counters in memory: in SweptMemoryStorage, which
    is limits' MemoryStorage minus a thread started per sign-in attempt (app/ratelimit.py)."""
    from app.ratelimit import MEMORY_URI
    from app.ratelimit import SWEPT_MEMORY_URI

    if app.config.get("RATELIMIT_STORAGE_URI") == MEMORY_URI:
        app.config["RATELIMIT_STORAGE_URI"] = SWEPT_MEMORY_URI


def _configure_sqlite(app: Flask) -> None:
    """Foreign keys on, WAL and a busy timeout: several gunicorn workers share the file."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        return
    from sqlalchemy import event

    from app.extensions import db

    with app.app_context():
        engine = db.engine

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - trivial
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL is safe against application crashes and only risks the last
        # transactions on power loss; FULL would fsync at every commit of every request.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def register_blueprints(app: Flask) -> None:
    from app.blueprints.account import bp as account_bp
    from app.blueprints.admin import bp as admin_bp
    from app.blueprints.auth import bp as auth_bp
    from app.blueprints.home import bp as home_bp
    from app.blueprints.ops import bp as ops_bp
    from app.blueprints.providers import bp as providers_bp
    from app.blueprints.scim import bp as scim_bp

    for blueprint in (home_bp, auth_bp, account_bp, admin_bp, providers_bp, ops_bp, scim_bp):
        app.register_blueprint(blueprint)


def register_error_handlers(app: Flask) -> None:
    from app.errors import register

    register(app)


def register_security_headers(app: Flask) -> None:
    from app.security_headers import register

    register(app)


def register_cli(app: Flask) -> None:
    from app.cli import register

    register(app)
