"""`flask db upgrade` on a migrated database, and the migrations match the models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from app.extensions import db

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def current_revision(app) -> str | None:
    with app.app_context(), db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def test_database_is_at_the_single_head(app):
    script = ScriptDirectory(str(MIGRATIONS))

    assert len(script.get_heads()) == 1
    assert current_revision(app) == head_revision()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_upgrade_again_is_a_no_op(runner, app, make_account):
    account = make_account("Acme", "acme")
    # Alembic reports each migration it runs on this logger (env.py's fileConfig resets the
    # root and "alembic" loggers, but leaves this child's handlers alone).
    migration_log = logging.getLogger("alembic.runtime.migration")
    records = _Records()
    migration_log.addHandler(records)
    try:
        result = runner.invoke(args=["db", "upgrade"])
    finally:
        migration_log.removeHandler(records)

    assert result.exit_code == 0, result.output
    assert any(m.startswith("Will assume") for m in records.messages), records.messages
    assert not any("Running upgrade" in m for m in records.messages), records.messages
    assert current_revision(app) == head_revision()
    listed = json.loads(runner.invoke(args=["accounts", "list", "--json"]).stdout)
    assert listed == [{"id": account.id, "name": "Acme", "slug": "acme"}]


def test_models_and_migrations_agree(app):
    migrate = app.extensions["migrate"]
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": migrate.configure_args.get("compare_type", True),
                "compare_server_default": True,
            },
        )
        differences = compare_metadata(context, db.metadata)

    assert differences == []


def test_every_model_table_exists(app):
    with app.app_context():
        tables = set(inspect(db.engine).get_table_names())

    assert set(db.metadata.tables) <= tables
    assert "alembic_version" in tables
