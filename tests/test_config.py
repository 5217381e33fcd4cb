"""Settings: production refuses to start without its secrets; embedded makes its own."""

from __future__ import annotations

import stat

import pytest
from cryptography.fernet import Fernet

from config import ConfigError
from config import load_config
from config.settings import database_uri

PRODUCTION_ENV = {
    "KEYWARD_ENV": "production",
    "SECRET_KEY": "s" * 40,
    "DATABASE_URL": "postgresql://db.internal/keyward",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
}


@pytest.mark.parametrize("missing", ["SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ENCRYPTION_KEYS"])
def test_production_refuses_to_start_naming_what_is_missing(tmp_path, missing):
    environ = {k: v for k, v in PRODUCTION_ENV.items() if k != missing}
    with pytest.raises(ConfigError) as error:
        load_config(environ, tmp_path)
    assert missing in str(error.value)
    assert not (tmp_path / "secret_key").exists()


def test_production_names_every_missing_variable_at_once(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config({"KEYWARD_ENV": "production"}, tmp_path)
    assert str(error.value).endswith("SECRET_KEY, DATABASE_URL, REDIS_URL, ENCRYPTION_KEYS")


def test_production_with_everything_set_uses_postgresql_and_redis(tmp_path):
    settings = load_config(PRODUCTION_ENV, tmp_path)
    assert settings.SQLALCHEMY_DATABASE_URI == "postgresql+psycopg://db.internal/keyward"
    assert settings.RATELIMIT_STORAGE_URI == "redis://cache.internal:6379/0"
    assert settings.CELERY["task_always_eager"] is False
    assert settings.CELERY["broker_url"] == "redis://cache.internal:6379/0"


def test_embedded_default_generates_secrets_once_under_instance(tmp_path):
    first = load_config({}, tmp_path)
    assert first.KEYWARD_ENV == "embedded"
    assert first.SQLALCHEMY_DATABASE_URI == f"sqlite:///{tmp_path / 'keyward.db'}"
    assert first.CELERY["task_always_eager"] is True
    assert first.RATELIMIT_STORAGE_URI == "memory://"
    Fernet(first.ENCRYPTION_KEYS.encode())  # a usable key
    for name in ("secret_key", "encryption_key"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600
    again = load_config({}, tmp_path)
    assert (again.SECRET_KEY, again.ENCRYPTION_KEYS) == (first.SECRET_KEY, first.ENCRYPTION_KEYS)


def test_embedded_respects_database_url_and_redis_url(tmp_path):
    settings = load_config(
        {"DATABASE_URL": "postgresql://127.0.0.1/x", "REDIS_URL": "redis://127.0.0.1:6379/3"},
        tmp_path,
    )
    assert settings.SQLALCHEMY_DATABASE_URI == "postgresql+psycopg://127.0.0.1/x"
    assert settings.CELERY["task_always_eager"] is False


def test_unknown_mode_and_bad_numbers_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="KEYWARD_ENV must be one of"):
        load_config({"KEYWARD_ENV": "staging"}, tmp_path)
    with pytest.raises(ConfigError, match="SESSION_IDLE_TIMEOUT must be a whole number"):
        load_config({"SESSION_IDLE_TIMEOUT": "ten minutes"}, tmp_path)


def test_database_uri_picks_the_driver():
    assert database_uri("postgresql://h/db") == "postgresql+psycopg://h/db"
    assert database_uri("postgres://h/db") == "postgresql+psycopg://h/db"
    assert database_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_tasks_run_eagerly_without_redis(make_app):
    app = make_app(REDIS_URL="")
    assert app.extensions["celery"].conf.task_always_eager is True
