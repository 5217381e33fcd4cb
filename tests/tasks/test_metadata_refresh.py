"""Provider metadata refresh by the workers: eagerly without Redis, for real with it.

With TEST_REDIS_URL this module starts two `celery worker` processes of its own (and, where a
test needs it, a `celery beat` process with a one-second sweep) on a queue of its own
(METADATA_REFRESH_QUEUE), with OUTBOUND_ALLOW_PRIVATE on so they may reach the identity
providers the tests start on 127.0.0.1. Without Redis the same tests run the same tasks
eagerly in this process, and stand in for beat by calling its sweep themselves.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.beat import Scheduler
from celery.result import EagerResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from app.cache import get_cache
from app.extensions import db
from app.models import ProviderMetadata
from app.models import SsoProvider
from app.services import accounts
from app.services import metadata
from app.services import providers
from app.services.providers import ProviderFields
from app.tasks.locking import task_lock
from app.tasks.maintenance import purge_expired_sessions
from app.tasks.metadata import enqueue_refresh
from app.tasks.metadata import refresh_due_providers
from app.tasks.metadata import refresh_provider
from tests.blueprints.providers.conftest import base
from tests.blueprints.providers.conftest import browser_for
from tests.blueprints.providers.conftest import csrf_post
from tests.blueprints.providers.conftest import form_data
from tests.conftest import base_config
from tests.e2e.oidc_idp import OidcIdp
from tests.helpers import serving
from tests.processes import stop_process
from tests.tasks.conftest import REPO_ROOT
from tests.tasks.conftest import _die_with_parent
from tests.tasks.conftest import _wait_until_ready

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL") or None
QUEUE = f"keyward-metadata-tests-{uuid.uuid4().hex[:8]}"
WAIT = 30.0  # seconds any one condition may take to come true
# Short bounds and backoff so that "due again", "backs off" and "capped" happen in seconds.
SETTINGS = {
    "OUTBOUND_ALLOW_PRIVATE": "true",
    "METADATA_REFRESH_QUEUE": QUEUE,
    "METADATA_REFRESH_MIN_SECONDS": "1",
    "METADATA_REFRESH_MAX_SECONDS": "30",
    "METADATA_REFRESH_DEFAULT_SECONDS": "2",
    "METADATA_REFRESH_BACKOFF_SECONDS": "2",
    "METADATA_REFRESH_BACKOFF_MAX_SECONDS": "8",
}


@pytest.fixture
def config(database_url) -> dict:
    return base_config(database_url, **SETTINGS)


# --- an identity provider whose every answer the test controls ----------------------------
@dataclass
class Issuer:
    """One issuer of the MetadataServer: what it answers, and how often it was asked."""

    status: int = 200
    discovery_headers: dict[str, str] = field(default_factory=dict)
    jwks_headers: dict[str, str] = field(default_factory=dict)
    jwks: dict[str, Any] = field(
        default_factory=lambda: {"keys": [{"kty": "EC", "kid": "k1", "crv": "P-256"}]}
    )
    delay: float = 0.0
    hits: Counter = field(default_factory=Counter)


class MetadataServer(ThreadingHTTPServer):
    """Discovery documents and JWKS at http://127.0.0.1:<port>/<issuer>/..."""

    daemon_threads = False
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.issuers: dict[str, Issuer] = {}
        self.mutex = threading.Lock()

    def add(self, name: str, **settings: Any) -> Issuer:
        self.issuers[name] = Issuer(**settings)
        return self.issuers[name]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _Handler(BaseHTTPRequestHandler):
    server: MetadataServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        name, _, rest = self.path.strip("/").partition("/")
        issuer = self.server.issuers.get(name)
        kind = "discovery" if rest == ".well-known/openid-configuration" else rest
        if issuer is None or kind not in ("discovery", "jwks"):
            return self._answer(404, {"error": "unknown"}, {})
        with self.server.mutex:
            issuer.hits[kind] += 1
        if kind == "discovery":
            time.sleep(issuer.delay)
        if issuer.status != 200:
            return self._answer(issuer.status, {"error": "unavailable"}, {})
        url = self.server.url(name)
        if kind == "discovery":
            document = {
                "issuer": url,
                "authorization_endpoint": f"{url}/authorize",
                "token_endpoint": f"{url}/token",
                "jwks_uri": f"{url}/jwks",
            }
            return self._answer(200, document, issuer.discovery_headers)
        return self._answer(200, issuer.jwks, issuer.jwks_headers)

    def _answer(self, status: int, body: dict, headers: dict[str, str]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def server() -> Iterator[MetadataServer]:
    with serving(MetadataServer()) as server:
        yield server


# --- the worker and beat processes (with Redis) -------------------------------------------
def _process_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "KEYWARD_ENV": "testing",
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL or "",
        "PUBLIC_URL": "http://localhost",
        "PYTHONUNBUFFERED": "1",
        **SETTINGS,
        **extra,
    }


def _start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [*_die_with_parent(), sys.executable, "-m", "celery", "-A", "celery_worker", *command],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def metadata_workers(celery_worker, database_url, tmp_path_factory) -> Iterator[list[Path]]:
    """Two worker processes on this module's queue (two, so that concurrent refreshes of one
    provider really run at once); their log files. None without Redis."""
    if not TEST_REDIS_URL:
        yield None
        return
    directory = tmp_path_factory.mktemp("metadata-workers")
    control = Celery("keyward-metadata-tests-control", broker=TEST_REDIS_URL, set_as_current=False)
    started: list[tuple[subprocess.Popen, str, Path]] = []
    try:
        for number in (1, 2):
            hostname = f"keyward-test-metadata-{number}-{uuid.uuid4().hex[:6]}@localhost"
            log_path = directory / f"worker-{number}.log"
            command = [
                "worker",
                "--loglevel=INFO",
                "--pool=solo",
                "--prefetch-multiplier=1",
                f"--queues={QUEUE}",
                f"--hostname={hostname}",
                "--without-mingle",
                "--without-gossip",
            ]
            process = _start(command, _process_env(database_url), log_path)
            started.append((process, hostname, log_path))
        for process, hostname, log_path in started:
            _wait_until_ready(process, control, hostname, log_path)
        yield [log_path for _, _, log_path in started]
    finally:
        for process, _, _ in started:
            stop_process(process, 15)
        control.close()


@pytest.fixture(autouse=True)
def _workers_up(metadata_workers) -> None:
    """Every test here runs with this module's workers when Redis is configured."""


class Beat:
    """Starts a `celery beat` process sweeping every second (with Redis; without, a no-op:
    the tests then call ``tick()``, which runs the sweep here, as beat would have)."""

    def __init__(self, database_url: str, directory: Path) -> None:
        self.database_url = database_url
        self.directory = directory
        self.log_path = directory / "beat.log"
        self.process: subprocess.Popen | None = None

    def __call__(self) -> None:
        if TEST_REDIS_URL and self.process is None:
            command = [
                "beat",
                "--loglevel=INFO",
                f"--schedule={self.directory / 'beat-schedule'}",
                f"--pidfile={self.directory / 'beat.pid'}",
            ]
            env = _process_env(self.database_url, METADATA_REFRESH_BEAT_SECONDS="1")
            self.process = _start(command, env, self.log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, 15)
        self.process = None


@pytest.fixture
def beat(database_url, tmp_path) -> Iterator[Beat]:
    control = Beat(database_url, tmp_path)
    yield control
    control.stop()


def tick() -> None:
    """Without Redis, run beat's sweep here; with Redis the beat process does it."""
    if not TEST_REDIS_URL:
        refresh_due_providers.delay()


# --- helpers ---------------------------------------------------------------------------------
def _create_provider(app, account_id: int, authority: str, scheme: str = "Acme", **changes):
    """A provider saved through the service and committed, without any refresh."""
    with app.app_context():
        provider = providers.create_provider(
            ProviderFields(
                display_name=scheme,
                scheme=scheme,
                authority=authority,
                client_id="keyward",
                **changes,
            ),
            account=accounts.get_account(account_id),
        )
        db.session.commit()
        return provider.id


def _record(app, provider_id: uuid.UUID) -> SimpleNamespace | None:
    """The provider's ProviderMetadata as it is in the database now (detached copy)."""
    with app.app_context():
        row = db.session.get(ProviderMetadata, provider_id)
        if row is None:
            return None
        columns = [c.key for c in ProviderMetadata.__table__.columns]
        return SimpleNamespace(**{name: getattr(row, name) for name in columns})


def wait_for(
    app,
    provider_id: uuid.UUID,
    condition: Callable[[SimpleNamespace], bool],
    *,
    each: Callable[[], None] | None = None,
    what: str = "the condition",
    logs: Callable[[], str] | None = None,
) -> SimpleNamespace:
    """Poll the provider's record until ``condition`` holds (``each`` runs between polls)."""
    deadline = time.monotonic() + WAIT
    record = None
    while time.monotonic() < deadline:
        record = _record(app, provider_id)
        if record is not None and condition(record):
            return record
        if each is not None:
            each()
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen within {WAIT:.0f} s; record: {record}\n{(logs or str)()}")


def _certificate(days: int) -> str:
    """A self-signed EC certificate valid for ``days`` more days, as an x5c entry."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def _result(async_result) -> Any:
    return async_result.get(timeout=WAIT)


# --- the tests ---------------------------------------------------------------------------
def test_rotated_keys_are_picked_up_without_a_sign_in(app, celery_app, make_account, beat):
    account = make_account()
    with OidcIdp() as idp:
        provider_id = _create_provider(app, account.id, idp.issuer)
        enqueue_refresh(provider_id)
        first = idp.signing_kid()
        wait_for(app, provider_id, lambda r: r.key_ids == [first], what="the first refresh")

        beat()
        new = idp.rotate_keys()
        record = wait_for(
            app,
            provider_id,
            lambda r: r.key_ids == [new],
            each=tick,
            what="picking up the rotated key",
            logs=beat.log,
        )
        counters = idp.counters()

    assert first != new and record.last_error is None and record.failure_count == 0
    # Nobody signed in: the worker fetched the JWKS on its own.
    assert counters["authorization"] == counters["token"] == 0
    assert counters["jwks"] >= 2
    # Web processes now read the new keys (the worker rewrote the cache and the database).
    with app.app_context():
        keys = metadata.provider_keys(db.session.get(SsoProvider, provider_id))
        assert [key["kid"] for key in keys.jwks["keys"]] == [new]


def test_idp_down_keeps_the_last_good_keys_and_records_the_error(app, celery_app, make_account):
    account = make_account()
    idp = OidcIdp()
    idp.start()
    try:
        provider_id = _create_provider(app, account.id, idp.issuer)
        enqueue_refresh(provider_id)
        kid = idp.signing_kid()
        good = wait_for(app, provider_id, lambda r: r.key_ids == [kid], what="the first refresh")
    finally:
        idp.stop()

    enqueue_refresh(provider_id)
    record = wait_for(app, provider_id, lambda r: r.failure_count == 1, what="the failed refresh")

    assert "could not connect" in record.last_error
    assert record.last_error_at > good.last_success_at
    # Stale-if-error: the last good copy stays, and so does its health.
    assert record.jwks == good.jwks and record.discovery == good.discovery
    assert record.key_ids == [kid] and record.last_success_at == good.last_success_at
    assert record.next_refresh_at == record.last_error_at + timedelta(seconds=2)
    # Sign-ins go on: a web process with an empty cache still gets the kept keys, no fetch.
    with app.app_context():
        provider = db.session.get(SsoProvider, provider_id)
        get_cache().delete(f"provider-metadata:{provider.id}:{provider.version}")
        keys = metadata.provider_keys(provider)
        assert keys.jwks == good.jwks
        assert providers.serialise(provider)["health"]["last_error"] == record.last_error


def test_failed_refreshes_back_off_exponentially_up_to_the_cap(
    app, celery_app, make_account, server
):
    idp = server.add("flaky", status=503)
    provider_id = _create_provider(app, make_account().id, server.url("flaky"))

    waits = []
    for failures in range(1, 6):
        enqueue_refresh(provider_id)
        record = wait_for(app, provider_id, lambda r, n=failures: r.failure_count == n)
        assert record.last_error == "discovery answered HTTP 503"
        waits.append((record.next_refresh_at - record.last_error_at).total_seconds())
    # METADATA_REFRESH_BACKOFF_SECONDS=2, doubled per failure, capped at 8.
    assert waits == [2, 4, 8, 8, 8]
    assert idp.hits["discovery"] == 5 and idp.hits["jwks"] == 0

    # While it backs off, the sweep leaves the provider alone...
    assert _result(refresh_due_providers.delay()) == 0
    # ...and once the wait is over, queues it again.
    idp.status = 200
    time.sleep(max(0.0, (record.next_refresh_at - datetime.now(UTC)).total_seconds()) + 0.1)
    assert _result(refresh_due_providers.delay()) == 1
    record = wait_for(app, provider_id, lambda r: r.failure_count == 0, what="the recovery")
    assert record.last_error is None and record.key_ids == ["k1"]


@pytest.mark.parametrize(
    "discovery_cc,jwks_cc,expected",
    [
        ("max-age=20", "max-age=12", 12),  # the sooner of the two
        ("max-age=3600", "public, max-age=86400", 30),  # capped at the maximum
        ("no-cache", "max-age=20", 1),  # at least the minimum
        (None, None, 2),  # METADATA_REFRESH_DEFAULT_SECONDS
    ],
)
def test_max_age_is_honoured_within_the_configured_bounds(
    app, celery_app, make_account, server, discovery_cc, jwks_cc, expected
):
    server.add(
        "cached",
        discovery_headers={"Cache-Control": discovery_cc} if discovery_cc else {},
        jwks_headers={"Cache-Control": jwks_cc} if jwks_cc else {},
    )
    provider_id = _create_provider(app, make_account().id, server.url("cached"))

    enqueue_refresh(provider_id)
    record = wait_for(app, provider_id, lambda r: r.last_success_at is not None)

    assert record.next_refresh_at - record.fetched_at == timedelta(seconds=expected)
    assert record.expires_at == record.next_refresh_at


def test_concurrent_refreshes_of_one_provider_fetch_once(app, celery_app, make_account, server):
    """Two sweeps queued the same provider and two workers took it at once: one fetches, the
    other finds the provider's lock taken. A forced refresh that meets the lock comes back
    later and finds the provider refreshed since it was asked."""
    idp = server.add("slow", delay=1.5)
    provider_id = str(_create_provider(app, make_account().id, server.url("slow")))

    if TEST_REDIS_URL:
        results = [refresh_provider.delay(provider_id) for _ in range(2)]
        statuses = sorted(_result(result) for result in results)
    else:
        with app.app_context(), ThreadPoolExecutor(2) as pool:
            # apply(), not delay(): an eager delay() flips Celery's process-wide "joining
            # would block" flag and restores it afterwards, which two threads at once can
            # leave set, so every later result.get() in this process would refuse.
            futures = [pool.submit(refresh_provider.apply, (provider_id,)) for _ in range(2)]
            statuses = sorted(future.result().get() for future in futures)

    assert statuses == ["locked", "refreshed"]
    assert idp.hits == {"discovery": 1, "jwks": 1}

    requested_at = time.time()
    if TEST_REDIS_URL:
        results = [refresh_provider.delay(provider_id, requested_at) for _ in range(2)]
        statuses = sorted(_result(result) for result in results)
        assert statuses == ["fresh", "refreshed"]
    else:
        with app.app_context(), ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(refresh_provider.apply, (provider_id, requested_at)) for _ in range(2)
            ]
            statuses = sorted(future.result().get() for future in futures)
        # Eager: no retry in the calling thread; the refresh that ran is the one asked for.
        assert statuses == ["locked", "refreshed"]
    assert idp.hits == {"discovery": 2, "jwks": 2}


def test_created_and_edited_providers_are_refreshed_at_once(
    app, celery_app, runner, server, make_account, make_user
):
    idp = server.add("acme")
    account = make_account()
    admin = make_user("admin@acme.example", account_id=account.id, role="admin")
    browser = browser_for(app, admin)
    new_path = base(account.id) + "/new/oidc"

    response = csrf_post(browser, new_path, form_data(server.url("acme")), token_from=new_path)

    assert response.status_code == 303, response.text
    with app.app_context():
        provider_id = db.session.scalar(select(SsoProvider.id))
    created = wait_for(app, provider_id, lambda r: r.last_success_at is not None)
    assert created.key_ids == ["k1"]

    time.sleep(0.01)  # a later timestamp for the edit's refresh
    edit_path = base(account.id) + f"/{provider_id}/edit"
    data = form_data(server.url("acme"), display_name="Acme (renamed)")
    response = csrf_post(browser, edit_path, data, token_from=edit_path)

    assert response.status_code == 303, response.text
    wait_for(app, provider_id, lambda r: r.last_success_at > created.last_success_at)
    # One refresh after each save (the create form's discovery check fetches no JWKS).
    assert idp.hits["jwks"] == 2

    result = runner.invoke(
        args=[
            "providers",
            "create",
            "--account",
            str(account.id),
            "--display-name",
            "CLI SSO",
            "--scheme",
            "cli-sso",
            "--authority",
            server.url("acme"),
            "--client-id",
            "keyward",
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    cli_id = uuid.UUID(json.loads(result.stdout)["id"])
    assert wait_for(app, cli_id, lambda r: r.last_success_at is not None).key_ids == ["k1"]


def test_beat_queues_the_providers_that_are_due(app, celery_app, make_account, server, beat):
    account = make_account()
    due = server.add("due")
    later = server.add("later")
    off = server.add("off")
    due_id = _create_provider(app, account.id, server.url("due"), scheme="Due")
    later_id = _create_provider(app, account.id, server.url("later"), scheme="Later")
    _create_provider(app, account.id, server.url("off"), scheme="Off", enabled=False)
    with app.app_context():
        # Refreshed a moment ago, good for an hour: not due.
        db.session.add(
            ProviderMetadata(
                provider_id=later_id, next_refresh_at=datetime.now(UTC) + timedelta(hours=1)
            )
        )
        db.session.commit()

    beat()
    record = wait_for(
        app,
        due_id,
        lambda r: r.last_success_at is not None,
        each=tick,
        what="beat refreshing the due provider",
        logs=beat.log,
    )

    assert record.key_ids == ["k1"] and due.hits["jwks"] >= 1
    time.sleep(2.5)  # two more sweeps
    assert later.hits == {} and off.hits == {}
    assert _record(app, later_id).last_success_at is None


def test_beat_sweep_interval_comes_from_the_settings(app, celery_app):
    celery_app.loader.import_default_modules()
    entry = celery_app.conf.beat_schedule["refresh-provider-metadata"]
    assert entry["task"] == "metadata.refresh_due_providers" in celery_app.tasks
    scheduler = Scheduler(app=celery_app, lazy=True)
    scheduler.setup_schedule()
    assert scheduler.schedule["refresh-provider-metadata"].schedule.run_every == timedelta(
        seconds=app.config["METADATA_REFRESH_BEAT_SECONDS"]
    )
    assert celery_app.amqp.router.route({}, "metadata.refresh_provider")["queue"].name == QUEUE


def test_refresh_task_loads_the_provider_by_id(app, celery_app, make_account, server):
    server.add("idp")
    assert _result(refresh_provider.delay(str(uuid.uuid4()))) == "missing"
    provider_id = str(_create_provider(app, make_account().id, server.url("idp")))

    assert _result(refresh_provider.delay(provider_id)) == "refreshed"
    # Safe to retry: the same message again finds nothing to do.
    assert _result(refresh_provider.delay(provider_id)) == "not_due"
    assert _result(refresh_provider.delay(provider_id, time.time() - 60)) == "fresh"


def test_admin_page_shows_the_provider_health(app, celery_app, make_account, make_user, server):
    jwks = {"keys": [{"kty": "EC", "kid": "sig-2026", "crv": "P-256", "x5c": [_certificate(12)]}]}
    idp = server.add("acme", jwks=jwks)
    account = make_account()
    admin = make_user("admin@acme.example", account_id=account.id, role="admin")
    provider_id = _create_provider(app, account.id, server.url("acme"))
    enqueue_refresh(provider_id)
    wait_for(app, provider_id, lambda r: r.cert_expiry is not None)
    idp.status = 500
    enqueue_refresh(provider_id)
    record = wait_for(app, provider_id, lambda r: r.failure_count == 1)

    html = browser_for(app, admin).get(base(account.id)).text

    assert "Keys: sig-2026" in html
    assert f'Signing certificate valid until <time datetime="{record.cert_expiry.isoformat()}' in (
        html
    )
    assert "Expires within 30 days" in html
    assert "Next refresh:" in html and record.next_refresh_at.strftime("%Y-%m-%d %H:%M") in html
    assert "Failed refreshes in a row: 1" in html
    assert "discovery answered HTTP 500" in html
    with app.app_context():
        health = providers.serialise(db.session.get(SsoProvider, provider_id))["health"]
    assert health["key_ids"] == ["sig-2026"]
    assert health["cert_expiry"] == record.cert_expiry.isoformat()


# --- the lock ------------------------------------------------------------------------------
def test_task_lock_is_held_by_one_caller_at_a_time(app):
    name = f"tests:{uuid.uuid4().hex}"
    with app.app_context():
        with task_lock(name, ttl=30) as first, task_lock(name, ttl=30) as second:
            assert first is True and second is False
        with task_lock(name, ttl=30) as again:
            assert again is True
        # A holder that outlived its TTL has lost the lock: another caller takes it, and the
        # late holder's release leaves the new holder's lock in place.
        with ExitStack() as late, ExitStack() as new:
            assert late.enter_context(task_lock(name, ttl=0.2)) is True
            time.sleep(0.3)
            assert new.enter_context(task_lock(name, ttl=30)) is True
            late.close()
            with task_lock(name, ttl=30) as meanwhile:
                assert meanwhile is False


def test_a_periodic_task_skips_while_another_run_holds_its_lock(app, celery_app):
    name = "task:app.tasks.maintenance.purge_expired_sessions"
    with app.app_context(), task_lock(name, ttl=30) as held:
        assert held
        assert purge_expired_sessions.delay().get(timeout=WAIT) is None
    assert purge_expired_sessions.delay().get(timeout=WAIT) == 0


def test_refreshes_run_where_the_configuration_says(app, celery_app, metadata_workers, server):
    """Without Redis: eagerly, here. With Redis: in this module's worker processes."""
    result = refresh_provider.delay(str(uuid.uuid4()))
    assert result.get(timeout=WAIT) == "missing"
    if TEST_REDIS_URL is None:
        assert metadata_workers is None and isinstance(result, EagerResult)
        return
    assert not isinstance(result, EagerResult)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        logs = "".join(path.read_text(errors="replace") for path in metadata_workers)
        if f"[{result.id}] succeeded" in logs:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"no worker of this module ran {result.id}:\n{logs}")
