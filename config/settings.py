"""Keyward settings: every value comes from the environment, with a documented default."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet


class ConfigError(RuntimeError):
    """The environment does not describe a runnable Keyward (names what is missing)."""


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from exc


def _bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def database_uri(url: str) -> str:
    """Map a plain ``postgresql://`` or ``sqlite:///`` URL to the driver Keyward ships with."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _instance_secret(instance_path: Path, filename: str, make) -> str:
    """Read a generated secret from ``instance/``, creating it (mode 0600) on first use."""
    path = instance_path / filename
    if path.exists():
        return path.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    value = make()
    # O_EXCL: two processes starting together must not each write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


class BaseConfig:
    """Settings shared by every mode. Attributes in CAPITALS become ``app.config`` keys."""

    KEYWARD_ENV = "base"

    def __init__(self, environ: Mapping[str, str], instance_path: Path) -> None:
        self.environ = environ
        self.instance_path = instance_path

        #: Signs the CSRF tokens. Sessions are server-side, so it never guards session content.
        self.SECRET_KEY = environ.get("SECRET_KEY") or None
        #: Database URL (``postgresql://`` or ``sqlite:///``); overrides the embedded file.
        self.DATABASE_URL = environ.get("DATABASE_URL") or None
        #: Redis URL: Celery broker, rate-limit storage and shared cache. Unset: in-process.
        self.REDIS_URL = environ.get("REDIS_URL") or None
        #: The externally visible base URL; callbacks are built from it, never from Host.
        self.PUBLIC_URL = (environ.get("PUBLIC_URL") or "").rstrip("/") or None
        #: Comma-separated Fernet keys, newest first, for secrets at rest.
        self.ENCRYPTION_KEYS = environ.get("ENCRYPTION_KEYS") or None
        #: ``text`` or ``json``: one log line per event on stderr, with the request id.
        self.LOG_FORMAT = (environ.get("LOG_FORMAT") or "text").lower()
        #: Log level name (``INFO`` by default).
        self.LOG_LEVEL = (environ.get("LOG_LEVEL") or "INFO").upper()

        #: Seconds a session may stay unused before it ends (Keycloak's "SSO Session Idle").
        self.SESSION_IDLE_TIMEOUT = _int(environ, "SESSION_IDLE_TIMEOUT", 30 * 60)
        #: Seconds after sign-in when a session ends however active it is.
        self.SESSION_ABSOLUTE_TIMEOUT = _int(environ, "SESSION_ABSOLUTE_TIMEOUT", 10 * 60 * 60)
        #: Seconds an anonymous session (CSRF token, ``next``) is kept without use.
        self.ANONYMOUS_SESSION_TIMEOUT = _int(environ, "ANONYMOUS_SESSION_TIMEOUT", 60 * 60)
        #: Name of the cookie that carries the random session id.
        self.SESSION_COOKIE_NAME = environ.get("SESSION_COOKIE_NAME") or "keyward_session"
        #: Mark cookies ``Secure``; defaults to on when ``PUBLIC_URL`` is https.
        self.SESSION_COOKIE_SECURE = _bool(
            environ, "SESSION_COOKIE_SECURE", (self.PUBLIC_URL or "").startswith("https://")
        )
        self.SESSION_COOKIE_HTTPONLY = True
        self.SESSION_COOKIE_SAMESITE = "Lax"

        #: Password sign-in attempts allowed per client IP (``limits`` syntax).
        self.LOGIN_RATE_LIMIT = environ.get("LOGIN_RATE_LIMIT") or "10/minute"
        #: Failed password sign-ins allowed per email address, whatever the client IP.
        self.LOGIN_EMAIL_RATE_LIMIT = environ.get("LOGIN_EMAIL_RATE_LIMIT") or "20/hour"
        #: Prefix of rate-limit counters in Redis, so several deployments can share one Redis.
        self.RATELIMIT_KEY_PREFIX = environ.get("RATELIMIT_KEY_PREFIX") or "keyward-rl"
        #: Prefix of Keyward's cache keys in Redis.
        self.CACHE_KEY_PREFIX = environ.get("CACHE_KEY_PREFIX") or "keyward:"
        #: Number of reverse proxies in front of Keyward whose X-Forwarded-* headers are trusted.
        self.TRUSTED_PROXY_COUNT = _int(environ, "TRUSTED_PROXY_COUNT", 0)

        #: Shortest password accepted (NIST SP 800-63B asks for at least 8; we ask for 12).
        self.PASSWORD_MIN_LENGTH = _int(environ, "PASSWORD_MIN_LENGTH", 12)
        #: argon2id cost. Defaults are OWASP's first recommendation: m=19 MiB, t=2, p=1.
        self.ARGON2_MEMORY_COST = _int(environ, "ARGON2_MEMORY_COST", 19 * 1024)
        self.ARGON2_TIME_COST = _int(environ, "ARGON2_TIME_COST", 2)
        self.ARGON2_PARALLELISM = _int(environ, "ARGON2_PARALLELISM", 1)

        #: Fetches of admin-entered URLs (discovery, JWKS, metadata, token endpoints) must be
        #: https to public addresses. ``true`` allows everything; a comma list of ``host:port``
        #: (as written in the URL) allows just those, over http too. Tests and demos use it.
        self.OUTBOUND_ALLOW_PRIVATE = (environ.get("OUTBOUND_ALLOW_PRIVATE") or "").strip()
        #: Extra CA certificates (PEM file) for identity providers behind a private CA.
        self.OUTBOUND_CA_BUNDLE = environ.get("OUTBOUND_CA_BUNDLE") or None
        #: Seconds an outbound fetch may take (connect + read), and the largest body accepted.
        self.OUTBOUND_TIMEOUT = _int(environ, "OUTBOUND_TIMEOUT", 10)
        self.OUTBOUND_MAX_BYTES = _int(environ, "OUTBOUND_MAX_BYTES", 1024 * 1024)
        #: Seconds of clock difference tolerated on exp/iat/nbf of tokens from IdPs.
        self.OIDC_CLOCK_SKEW = _int(environ, "OIDC_CLOCK_SKEW", 120)
        #: Seconds of clock difference tolerated on SAML NotBefore/NotOnOrAfter; unset: the
        #: same as OIDC_CLOCK_SKEW.
        self.SAML_CLOCK_SKEW = _int(environ, "SAML_CLOCK_SKEW", self.OIDC_CLOCK_SKEW)
        #: Built-in providers, shown on /login only when their client id is configured.
        self.GOOGLE_CLIENT_ID = environ.get("GOOGLE_CLIENT_ID") or None
        self.GOOGLE_CLIENT_SECRET = environ.get("GOOGLE_CLIENT_SECRET") or None
        self.MICROSOFT_CLIENT_ID = environ.get("MICROSOFT_CLIENT_ID") or None
        self.MICROSOFT_CLIENT_SECRET = environ.get("MICROSOFT_CLIENT_SECRET") or None
        #: Entra tenant for the built-in Microsoft provider: ``common`` (any tenant and
        #: personal accounts), ``organizations``, or one tenant id.
        self.MICROSOFT_TENANT = environ.get("MICROSOFT_TENANT") or "common"

        #: Days a renamed provider's old callback URLs (/signin-<old scheme>...) keep working,
        #: so the admin has time to update the redirect URIs registered at the IdP.
        self.PROVIDER_SCHEME_ALIAS_DAYS = _int(environ, "PROVIDER_SCHEME_ALIAS_DAYS", 30)

        #: Bounds in seconds of the wait between two refreshes of a provider's metadata
        #: (discovery, JWKS, SAML metadata): the IdP's Cache-Control max-age is honoured
        #: within them.
        self.METADATA_REFRESH_MIN_SECONDS = _int(environ, "METADATA_REFRESH_MIN_SECONDS", 5 * 60)
        self.METADATA_REFRESH_MAX_SECONDS = _int(
            environ, "METADATA_REFRESH_MAX_SECONDS", 24 * 60 * 60
        )
        #: The wait when the IdP sends no max-age (kept within the bounds above).
        self.METADATA_REFRESH_DEFAULT_SECONDS = _int(
            environ, "METADATA_REFRESH_DEFAULT_SECONDS", 60 * 60
        )
        #: After a failed refresh the next one waits this long, doubled for every further
        #: failure in a row, up to the cap; the last good copy is used meanwhile.
        self.METADATA_REFRESH_BACKOFF_SECONDS = _int(
            environ, "METADATA_REFRESH_BACKOFF_SECONDS", 60
        )
        self.METADATA_REFRESH_BACKOFF_MAX_SECONDS = _int(
            environ, "METADATA_REFRESH_BACKOFF_MAX_SECONDS", 60 * 60
        )
        #: Seconds between two beat sweeps that queue the providers whose refresh is due.
        self.METADATA_REFRESH_BEAT_SECONDS = _int(environ, "METADATA_REFRESH_BEAT_SECONDS", 60)
        #: Celery queue of the metadata tasks; the default queue unless set (then run a
        #: worker with ``-Q`` on it, e.g. to keep refreshes apart from bulk jobs).
        self.METADATA_REFRESH_QUEUE = environ.get("METADATA_REFRESH_QUEUE") or "celery"

        #: Bulk deprovisioning jobs: items a worker claims and processes in one transaction
        #: (bench/deprovision.py: 1,000 costs ~10% of the throughput of 2,000 in per-chunk
        #: overhead; larger chunks make the progress bar move in bigger steps).
        self.JOBS_CHUNK_SIZE = _int(environ, "JOBS_CHUNK_SIZE", 2000)
        #: Seconds a worker's claim on a chunk lasts; a killed worker's chunk is claimed
        #: again by another worker after this (keep it well above a chunk's duration).
        self.JOBS_CLAIM_LEASE_SECONDS = _int(environ, "JOBS_CLAIM_LEASE_SECONDS", 120)
        #: Runs queued per job, for that many worker processes to share it (each claims
        #: other chunks; a surplus run finds nothing left and ends). Two: the database does
        #: most of the work, and two connections keep it busy on two cores.
        self.JOBS_PARALLEL_RUNS = _int(environ, "JOBS_PARALLEL_RUNS", 2)
        #: Seconds between two beat sweeps that restart jobs whose worker died.
        self.JOBS_RECLAIM_BEAT_SECONDS = _int(environ, "JOBS_RECLAIM_BEAT_SECONDS", 60)
        #: Most rows of a deprovisioning CSV (emails or externalIds).
        self.JOBS_CSV_MAX_ROWS = _int(environ, "JOBS_CSV_MAX_ROWS", 100_000)
        #: Celery queue of the job tasks; the default queue unless set.
        self.JOBS_QUEUE = environ.get("JOBS_QUEUE") or "celery"
        #: Claim each chunk in a transaction of its own first, with a lease of
        #: JOBS_CLAIM_LEASE_SECONDS, then process it (items show as "claimed" meanwhile). Off:
        #: a chunk is claimed and processed in one transaction, so a killed worker's chunk is
        #: simply still queued (no lease to wait for) and each item is written once.
        self.JOBS_LEASED_CLAIMS = _bool(environ, "JOBS_LEASED_CLAIMS", False)
        #: Tests and demos only: milliseconds a worker waits after claiming each chunk, so a
        #: job's progress can be watched (0 in production).
        self.JOBS_CHUNK_DELAY_MS = _int(environ, "JOBS_CHUNK_DELAY_MS", 0)

        #: Requests one SCIM token may make (``limits`` syntax); more answer 429.
        self.SCIM_RATE_LIMIT = environ.get("SCIM_RATE_LIMIT") or "100/second"
        #: Most resources one SCIM list or search returns (``count`` is capped to it).
        self.SCIM_MAX_RESULTS = _int(environ, "SCIM_MAX_RESULTS", 200)
        #: Most operations in one SCIM Bulk request, and its largest body in bytes.
        self.SCIM_BULK_MAX_OPERATIONS = _int(environ, "SCIM_BULK_MAX_OPERATIONS", 100)
        self.SCIM_BULK_MAX_PAYLOAD = _int(environ, "SCIM_BULK_MAX_PAYLOAD", 1024 * 1024)
        #: Largest body of any other SCIM request, in bytes (a 1,000-member PATCH is ~80 KB).
        self.SCIM_MAX_PAYLOAD = _int(environ, "SCIM_MAX_PAYLOAD", 2 * 1024 * 1024)

        #: Days audit events are kept before the retention task removes them.
        self.AUDIT_RETENTION_DAYS = _int(environ, "AUDIT_RETENTION_DAYS", 365)

    # Derived values: computed after the mode-specific defaults are in place.
    def finalise(self) -> None:
        self.SQLALCHEMY_DATABASE_URI = database_uri(self.DATABASE_URL or "")
        self.SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
        self.SQLALCHEMY_TRACK_MODIFICATIONS = False
        # Flask-WTF: the token lives in the server-side session; tie its lifetime to it.
        self.WTF_CSRF_TIME_LIMIT = None
        self.RATELIMIT_STORAGE_URI = self.REDIS_URL or "memory://"
        # No X-RateLimit-* headers on every sign-in answer: they cost counter reads on each POST
        # and tell a guesser how many tries are left. A 429 still says when to come back
        # (Retry-After, set by app/errors.py).
        self.RATELIMIT_HEADERS_ENABLED = False
        self.RATELIMIT_STRATEGY = "fixed-window"
        # A Redis outage must not lock everyone out of password sign-in; the limiter then
        # falls back to per-process memory and says so in the log.
        self.RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
        self.CELERY = {
            "broker_url": self.REDIS_URL or "memory://",
            "result_backend": self.REDIS_URL or None,
            # Without Redis there is no worker: tasks run in the calling process.
            "task_always_eager": not self.REDIS_URL,
            "task_eager_propagates": True,
            "task_serializer": "json",
            "result_serializer": "json",
            "accept_content": ["json"],
            "task_ignore_result": False,
            "broker_connection_retry_on_startup": True,
            "imports": ("app.tasks.maintenance", "app.tasks.metadata", "app.tasks.deprovisioning"),
            "task_routes": {
                "metadata.*": {"queue": self.METADATA_REFRESH_QUEUE},
                "jobs.*": {"queue": self.JOBS_QUEUE},
            },
            "beat_schedule": {
                "purge-expired-sessions": {
                    "task": "maintenance.purge_expired_sessions",
                    "schedule": 15 * 60.0,
                },
                "purge-old-audit-events": {
                    "task": "maintenance.purge_old_audit_events",
                    "schedule": 24 * 60 * 60.0,
                },
                "purge-expired-scheme-aliases": {
                    "task": "maintenance.purge_expired_scheme_aliases",
                    "schedule": 60 * 60.0,
                },
                # Often, and cheap: it only queues the providers whose refresh is due.
                "refresh-provider-metadata": {
                    "task": "metadata.refresh_due_providers",
                    "schedule": float(self.METADATA_REFRESH_BEAT_SECONDS),
                },
                # Restarts bulk jobs whose worker died (their claims' leases ran out).
                "reclaim-stalled-jobs": {
                    "task": "jobs.reclaim_expired",
                    "schedule": float(self.JOBS_RECLAIM_BEAT_SECONDS),
                },
            },
        }


class EmbeddedConfig(BaseConfig):
    """The newcomer's default: SQLite under ``instance/``, no Redis, generated secrets."""

    KEYWARD_ENV = "embedded"

    def __init__(self, environ: Mapping[str, str], instance_path: Path) -> None:
        super().__init__(environ, instance_path)
        if not self.SECRET_KEY:
            self.SECRET_KEY = _instance_secret(
                instance_path, "secret_key", lambda: secrets.token_urlsafe(48)
            )
        if not self.ENCRYPTION_KEYS:
            self.ENCRYPTION_KEYS = _instance_secret(
                instance_path, "encryption_key", lambda: Fernet.generate_key().decode()
            )
        if not self.DATABASE_URL:
            self.DATABASE_URL = f"sqlite:///{instance_path / 'keyward.db'}"
        if not self.PUBLIC_URL:
            self.PUBLIC_URL = "http://127.0.0.1:5000"
        self.finalise()


class TestingConfig(BaseConfig):
    """The test suite: cheap hashing, throwaway secrets, eager tasks unless Redis is given."""

    KEYWARD_ENV = "testing"

    def __init__(self, environ: Mapping[str, str], instance_path: Path) -> None:
        super().__init__(environ, instance_path)
        self.TESTING = True
        self.SECRET_KEY = self.SECRET_KEY or secrets.token_urlsafe(32)
        self.ENCRYPTION_KEYS = self.ENCRYPTION_KEYS or Fernet.generate_key().decode()
        self.DATABASE_URL = self.DATABASE_URL or "sqlite://"
        self.PUBLIC_URL = self.PUBLIC_URL or "http://localhost"
        # Flask-Security's FastHash idea: a valid argon2id hash at the smallest cost, so the
        # real code path runs without making the suite slow.
        self.ARGON2_MEMORY_COST = _int(environ, "ARGON2_MEMORY_COST", 64)
        self.ARGON2_TIME_COST = _int(environ, "ARGON2_TIME_COST", 1)
        self.finalise()


class ProductionConfig(BaseConfig):
    """Several web processes and workers on PostgreSQL and Redis; refuses to guess secrets."""

    KEYWARD_ENV = "production"
    REQUIRED = ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ENCRYPTION_KEYS")

    def __init__(self, environ: Mapping[str, str], instance_path: Path) -> None:
        super().__init__(environ, instance_path)
        missing = [name for name in self.REQUIRED if not getattr(self, name)]
        if missing:
            raise ConfigError("production needs these environment variables: " + ", ".join(missing))
        self.finalise()


CONFIG_CLASSES = {
    "embedded": EmbeddedConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}
