"""Celery fixtures: a real worker process with TEST_REDIS_URL, eager tasks without it.

Without Redis the settings make every task run eagerly in the test process. With
TEST_REDIS_URL a `celery -A celery_worker worker` process is started once per session on the
same database as the tests, and every test in this directory runs with it. A worker that does
not come up fails the run (with its log); it is never skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery
from flask import Flask

from tests.processes import stop_process

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL") or None  # as in tests/conftest.py
REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_START_TIMEOUT = 30.0
WORKER_STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class CeleryWorker:
    """The worker process the tests started: its node name, pid and log file."""

    hostname: str
    pid: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _die_with_parent() -> list[str]:
    """A prefix that has the worker get SIGTERM if pytest itself is killed (Linux setpriv).

    setpriv execs the command, so the pid we hold is the worker's. Without setpriv a worker
    orphaned by a killed run is caught by _refuse_other_workers on the next run.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (Celery's warm shutdown), then SIGKILL; only ever the process we started."""
    stop_process(process, WORKER_STOP_TIMEOUT)


def _wait_until_ready(
    process: subprocess.Popen, control: Celery, hostname: str, log_path: Path
) -> None:
    """Ping the worker by name until it answers; fail with its log if it never does."""
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"the Celery worker exited with status {process.returncode} before it was "
                f"ready. Its output:\n{log_path.read_text(errors='replace')}",
                pytrace=False,
            )
        try:
            replies = control.control.ping(destination=[hostname], timeout=1.0) or []
        except Exception as exc:  # the broker refusing is reported if it never recovers
            last_error = exc
            time.sleep(0.5)
            continue
        if any(hostname in reply for reply in replies):
            return
    pytest.fail(
        f"the Celery worker {hostname} did not answer a ping within {WORKER_START_TIMEOUT:.0f} s"
        f" (last error: {last_error!r}). Its output:\n{log_path.read_text(errors='replace')}",
        pytrace=False,
    )


def _refuse_other_workers(control: Celery, hostname: str) -> None:
    """Tasks sent by the tests must reach our worker, not one left over on the same broker."""
    replies = control.control.ping(timeout=1.0) or []
    others = sorted(name for reply in replies for name in reply if name != hostname)
    if others:
        pytest.fail(
            f"other Celery workers consume from TEST_REDIS_URL ({', '.join(others)}): tasks sent "
            "by the tests could run there. Stop them (keyward-test-* ones are left over from "
            "an interrupted run), or point TEST_REDIS_URL at another Redis database.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def celery_worker(database_url, tmp_path_factory) -> Iterator[CeleryWorker | None]:
    """A real `celery -A celery_worker worker` process when TEST_REDIS_URL is set, else None.

    It runs from the repository root with KEYWARD_ENV=testing on the tests' database, so it
    sees every row a test commits, and it is stopped by its pid at the end of the session.
    """
    if not TEST_REDIS_URL:
        yield None
        return

    hostname = f"keyward-test-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    env = {
        **os.environ,
        "KEYWARD_ENV": "testing",
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        "PUBLIC_URL": "http://localhost",
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        *_die_with_parent(),
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celery_worker",
        "worker",
        "--loglevel",
        "INFO",
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "--hostname",
        hostname,
        "--without-mingle",
        "--without-gossip",
    ]
    # Output goes to a file, not a pipe: nothing to drain, so the worker can never block on it.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C in the terminal reaches pytest, which then stops it.
            start_new_session=True,
        )
    control = Celery("keyward-tests-control", broker=TEST_REDIS_URL, set_as_current=False)
    try:
        _wait_until_ready(process, control, hostname, log_path)
        _refuse_other_workers(control, hostname)
        yield CeleryWorker(hostname=hostname, pid=process.pid, log_path=log_path)
    finally:
        _stop(process)
        control.close()


@pytest.fixture(autouse=True)
def _worker_for_tasks(celery_worker) -> None:
    """Every test in this directory runs with the worker up when Redis is configured."""


@pytest.fixture
def celery_app(app: Flask) -> Iterator[Celery]:
    """The test app's Celery app (`app.extensions["celery"]`); its connections closed after."""
    celery_app = app.extensions["celery"]
    yield celery_app
    celery_app.close()
