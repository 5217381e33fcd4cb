"""The real app under gunicorn, in a subprocess, for tests that need a server on a socket.

    with LiveServer(database_url) as server:
        ...  # server.url is "http://127.0.0.1:<port>"

The server reads the same database as the test's ``app`` fixture, so rows written through
``make_user`` and friends are seen by it. Its workers inherit the run's SECRET_KEY and
ENCRYPTION_KEYS from the environment (tests/conftest.py sets them once), so a CSRF token
signed by one worker is accepted by the other and secrets stored by the test's app can be
read. Each server counts rate limits under its own Redis key prefix. Pass ``env`` to add or
override variables.
"""

from __future__ import annotations

import http.client
import os
import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.processes import stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN = REPO_ROOT / ".venv" / "bin" / "gunicorn"
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class LiveServerError(RuntimeError):
    """gunicorn did not start (the message carries its output)."""


class LiveServer:
    """Start ``gunicorn wsgi:app`` on 127.0.0.1 and stop exactly that process again.

    ``args`` are extra gunicorn options. The access log and the app's log are kept in a
    temporary file: ``output()`` returns them (the browser tests show them when they fail).
    """

    def __init__(
        self,
        database_url: str,
        *,
        redis_url: str | None = None,
        env: Mapping[str, str] | None = None,
        workers: int = 2,
        args: Sequence[str] = (),
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.database_url = database_url
        self.redis_url = (
            redis_url if redis_url is not None else os.environ.get("TEST_REDIS_URL", "")
        )
        self.extra_env = dict(env or {})
        self.workers = workers
        self.args = list(args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.port = 0
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # --- context manager -------------------------------------------------------------
    def __enter__(self) -> LiveServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- lifecycle --------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "KEYWARD_ENV": "testing",
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url,
                "PUBLIC_URL": self.url,
                # Own rate-limit counters: other test runs may share the Redis database.
                "RATELIMIT_KEY_PREFIX": f"keyward-rl-live-{secrets.token_hex(4)}",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        if self.process is not None:
            raise LiveServerError("this live server is already running")
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        # A file, not a pipe: nobody reads gunicorn's log while it runs, and a full pipe
        # would block the server. Closed (and so deleted) by stop().
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="keyward-gunicorn-", suffix=".log"
        )
        command = [
            str(GUNICORN),
            "--bind",
            f"{HOST}:{self.port}",
            "--workers",
            str(self.workers),
            "--graceful-timeout",
            "5",
            "--access-logfile",
            "-",
            *self.args,
            "wsgi:app",
        ]
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_until_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LiveServerError(
                    f"gunicorn exited with status {self.process.returncode} before "
                    f"/healthz answered:\n{self.output()}"
                )
            status = self._healthz_status()
            if status == 200:
                return
            last_error = f"/healthz answered {status}" if isinstance(status, int) else status
            time.sleep(0.1)
        raise LiveServerError(
            f"gunicorn did not answer GET /healthz with 200 within {self.startup_timeout:.0f} s "
            f"({last_error}):\n{self.output()}"
        )

    def _healthz_status(self) -> int | str:
        # http.client, not urllib: urllib would honour proxy variables from the environment.
        connection = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            return response.status
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()

    def output(self) -> str:
        """What gunicorn (and the app) wrote on stdout and stderr so far."""
        if self._log is None:
            return ""
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM to the gunicorn arbiter we started, SIGKILL if it does not stop in time."""
        process, self.process = self.process, None
        try:
            stop_process(process, self.stop_timeout)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
