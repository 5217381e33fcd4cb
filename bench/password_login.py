"""Password sign-ins per second against gunicorn, against the same run's argon2 hash-only rate.

Usage (from the repository root)::

    .venv/bin/python bench/password_login.py [--seconds N] [--concurrency C] [--workers W]
        [--hash-processes H] [--database-url URL] [--rounds R] [--warmup S] [--record]

Steps: migrate a fresh database and create one user (``flask`` CLI subprocesses) and start
gunicorn with W sync workers (default: one per core). Then, R times (default once): measure
the argon2 hash-only rate with H processes (default: one per core, the most hashes the cores
do) for N seconds, and drive gunicorn with C client threads for S + N seconds, counting the
sign-ins that end in the last N. A last hash-only phase closes the run, so the baseline is
the mean of the phases before and after the sign-in load on the same machine at about the
same time.

The default C = 2 x W is a saturating load, as a server with more users than workers sees:
a sync worker answers one request at a time, and with C = W it sits idle while its client
reads the answer and sends the next request (about 1 ms per sign-in here), time the
hash-only processes never lose. ``--concurrency W`` measures that closed loop instead.

Each sign-in is the full browser flow, with a fresh cookie jar: GET /login (session cookie and
CSRF token), then POST /login, which must answer 303 with a new session cookie. A sign-in
performs exactly one argon2 verify (about one hash), so the hash-only rate is the ceiling:
``ratio = sign-ins/s / mean hash-only/s``, target >= 0.8.

The server runs with the production argon2 parameters (ARGON2_* below); only the login rate
limits are raised so that the limiter does not answer 429. Nothing is written to instance/.

--database-url takes ``sqlite:///PATH`` or ``postgresql://HOST:PORT/ANY``. For PostgreSQL the
named database is never touched: the bench creates its own ``keyward_bench_<pid>`` on that
server (through the ``postgres`` database) and drops it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN_MARK = "<!-- password_login:begin -->"
END_MARK = "<!-- password_login:end -->"

# The production defaults (config/settings.py, OWASP's first recommendation). The server gets
# them explicitly so that ARGON2_* left in the caller's environment cannot change the cost.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_COST = 19 * 1024
ARGON2_PARALLELISM = 1
# Same output and salt sizes as app/services/passwords.py.
ARGON2_HASH_LEN = 32
ARGON2_SALT_LEN = 16

EMAIL = "bench@example.com"
PASSWORD = "Tq7!vR2#pLm9-wide-sail-orbit"
TARGET_RATIO = 0.8
UNLIMITED = "1000000/minute"
CSRF_PATTERN = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
COOKIE_NAME = "keyward_session"


# --- hash-only baseline ------------------------------------------------------------------
def _hash_worker(seconds: float, barrier, results) -> None:
    from argon2 import PasswordHasher
    from argon2 import Type

    hasher = PasswordHasher(
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_COST,
        parallelism=ARGON2_PARALLELISM,
        hash_len=ARGON2_HASH_LEN,
        salt_len=ARGON2_SALT_LEN,
        type=Type.ID,
    )
    hasher.hash(PASSWORD)  # first call allocates; keep it out of the window
    barrier.wait()
    started = time.perf_counter()
    cpu_started = time.process_time()
    count = 0
    while time.perf_counter() - started < seconds:
        hasher.hash(PASSWORD)
        count += 1
    elapsed = time.perf_counter() - started
    results.put((count, elapsed, time.process_time() - cpu_started))


@dataclass
class HashRun:
    per_second: float
    count: int
    cpu_ms_per_hash: float


def hash_only_rate(processes: int, seconds: float) -> HashRun:
    """Hashes per second of ``processes`` processes hashing in parallel for ``seconds``."""
    # Processes, not threads: like gunicorn workers, each one gets its own core.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(target=_hash_worker, args=(seconds, barrier, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    rows = []
    deadline = time.monotonic() + seconds + 120
    while len(rows) < processes:
        try:
            rows.append(results.get(timeout=1))
        except queue.Empty:
            failed = any(worker.exitcode not in (None, 0) for worker in workers)
            if failed or time.monotonic() > deadline:
                for worker in workers:
                    worker.terminate()
                raise SystemExit("a hash-only process failed or hung") from None
    for worker in workers:
        worker.join()
    count = sum(row[0] for row in rows)
    cpu = sum(row[2] for row in rows)
    return HashRun(
        per_second=sum(row[0] / row[1] for row in rows),
        count=count,
        cpu_ms_per_hash=1000 * cpu / max(count, 1),
    )


# --- database and server -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def bench_database(url: str | None, workdir: Path):
    """Yield the DATABASE_URL to use: a fresh SQLite file, or a PostgreSQL database we own."""
    if not url:
        yield f"sqlite:///{workdir / 'keyward.db'}"
        return
    if url.startswith("sqlite"):
        # The run creates its user: an existing file would fail, or skew the run with old rows.
        path = Path(url.removeprefix("sqlite:///"))
        if path.exists() and path.stat().st_size:
            raise SystemExit(f"{path} exists: give the path of a new SQLite file")
        yield url
        return
    if not url.startswith(("postgresql://", "postgres://")):
        raise SystemExit(f"--database-url must be sqlite:/// or postgresql://, not {url!r}")
    from sqlalchemy import create_engine
    from sqlalchemy import text

    sys.path.insert(0, str(ROOT))
    from config.settings import database_uri

    parts = urllib.parse.urlsplit(url)
    name = f"keyward_bench_{os.getpid()}"
    admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    admin = create_engine(database_uri(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    print(f"PostgreSQL: using a database of our own, {name} (dropped at the end)")
    try:
        yield urllib.parse.urlunsplit(parts._replace(path="/" + name))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def embedded_environ(database_url: str, port: int, **settings: str) -> dict[str, str]:
    """The server's environment for every bench (bench/*.py): the embedded default with every
    secret given explicitly (nothing is written to instance/), PUBLIC_URL on ``port``, plus
    the bench's own ``settings``."""
    from cryptography.fernet import Fernet

    environ = dict(os.environ)
    # Never inherit a metrics directory or Redis from the caller: the run must be the same
    # on every machine (in-process limiter and caches, eager tasks, the database's replay
    # cache).
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environ.update(
        {
            "KEYWARD_ENV": "embedded",
            "DATABASE_URL": database_url,
            "REDIS_URL": "",
            "SECRET_KEY": os.urandom(32).hex(),
            "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            **settings,
        }
    )
    return environ


def server_environ(database_url: str, port: int) -> dict[str, str]:
    return embedded_environ(
        database_url,
        port,
        ARGON2_TIME_COST=str(ARGON2_TIME_COST),
        ARGON2_MEMORY_COST=str(ARGON2_MEMORY_COST),
        ARGON2_PARALLELISM=str(ARGON2_PARALLELISM),
        LOGIN_RATE_LIMIT=UNLIMITED,
        LOGIN_EMAIL_RATE_LIMIT=UNLIMITED,
    )


def flask_cli(environ: dict[str, str], *args: str) -> None:
    command = [sys.executable, "-m", "flask", "--app", "wsgi", *args]
    result = subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def flask_json(environ: dict[str, str], *args: str) -> dict:
    """Run one ``flask`` CLI command with --json and return what it printed."""
    command = [sys.executable, "-m", "flask", "--app", "wsgi", *args, "--json"]
    result = subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"flask {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"flask {' '.join(args)} printed no JSON:\n{result.stdout}") from None


def wait_until_healthy(port: int, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited with {server.returncode} before /healthz answered")
        try:
            status, _, _ = request(port, "GET", "/healthz")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("gunicorn did not answer /healthz in time")


def worker_pids(master: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{master}/task").iterdir()
        return [
            int(pid)
            for task in tasks
            for pid in (task / "children").read_text().split()
            if pid.isdigit()
        ]
    except OSError:
        return []


def cpu_seconds(pids: list[int]) -> float | None:
    """utime + stime of these processes (Linux /proc), or None where it cannot be read."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return total / ticks


# --- client ------------------------------------------------------------------------------
def request(
    port: int, method: str, path: str, *, cookie: str | None = None, body: str | None = None
) -> tuple[int, dict[str, str], str]:
    """One request on its own connection (gunicorn's sync workers close after each answer).

    A minimal HTTP/1.1 client on a plain socket: the load generator runs on the cores it
    measures, and http.client (email.parser for the headers) with http.cookies cost about
    twice its CPU. The answer is read to the end of the connection; a body whose length
    differs from Content-Length, or a chunked one, is an error.
    """
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "User-Agent: keyward-bench/1",
        "Connection: close",
    ]
    payload = b""
    if cookie:
        lines.append(f"Cookie: {COOKIE_NAME}={cookie}")
    if body is not None:
        payload = body.encode()
        lines.append("Content-Type: application/x-www-form-urlencoded")
        lines.append(f"Content-Length: {len(payload)}")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    cookies: dict[str, str] = {}
    length = None
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "set-cookie":
            key, _, cookie_value = value.strip().split(";", 1)[0].partition("=")
            cookies[key] = cookie_value
        elif name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            raise OSError(f"unexpected Transfer-Encoding: {value.strip()}")
    if length is not None and length != len(content):
        raise OSError(f"body of {len(content)} bytes, Content-Length {length}")
    return status, cookies, content.decode("utf-8", "replace")


@dataclass
class Sample:
    finished: float
    get_seconds: float
    post_seconds: float


@dataclass
class ClientStats:
    samples: list[Sample] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, reason: str) -> None:
        with self.lock:
            self.failures[reason] = self.failures.get(reason, 0) + 1


def sign_in_once(port: int) -> tuple[float, float] | str:
    """One browser-like sign-in with a fresh cookie jar; (GET s, POST s) or why it failed."""
    started = time.perf_counter()
    status, cookies, page = request(port, "GET", "/login")
    if status != 200:
        return f"GET /login {status}"
    match = CSRF_PATTERN.search(page)
    session = cookies.get(COOKIE_NAME)
    if not match or not session:
        return "GET /login: no CSRF token or session cookie"
    body = urllib.parse.urlencode(
        {"email": EMAIL, "password": PASSWORD, "csrf_token": match.group(1), "next": ""}
    )
    posted = time.perf_counter()
    status, cookies, _ = request(port, "POST", "/login", cookie=session, body=body)
    done = time.perf_counter()
    if status != 303:
        return f"POST /login {status}"
    if not cookies.get(COOKIE_NAME) or cookies[COOKIE_NAME] == session:
        return "POST /login: session id not rotated"
    return posted - started, done - posted


def client_loop(port: int, stop: threading.Event, stats: ClientStats) -> None:
    while not stop.is_set():
        try:
            outcome = sign_in_once(port)
        except OSError as exc:
            stats.fail(f"{type(exc).__name__}")
            continue
        if isinstance(outcome, str):
            stats.fail(outcome)
            continue
        with stats.lock:
            stats.samples.append(Sample(time.perf_counter(), *outcome))


@dataclass
class ServerRun:
    per_second: float
    seconds: float
    count: int
    failures: dict[str, int]
    get_ms: float
    post_ms: float
    flow_p50_ms: float
    flow_p95_ms: float
    server_cpu_ms: float | None
    client_cpu_ms: float


@dataclass
class Segment:
    samples: list[Sample]
    failures: dict[str, int]
    seconds: float
    server_cpu: float | None
    client_cpu: float


def run_clients(
    port: int, concurrency: int, seconds: float, lead_in: float, pids: list[int]
) -> Segment:
    """C client threads signing in; sign-ins that end inside the window count.

    The window opens ``lead_in`` seconds after the clients start and closes while they are
    still busy, so the work in flight at either edge cancels out.
    """
    stats = ClientStats()
    stop = threading.Event()
    threads = [
        threading.Thread(target=client_loop, args=(port, stop, stats), daemon=True)
        for _ in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    time.sleep(lead_in)
    window_start = time.perf_counter()
    server_cpu_start = cpu_seconds(pids)
    client_cpu_start = time.process_time()
    time.sleep(seconds)
    window_end = time.perf_counter()
    server_cpu_end = cpu_seconds(pids)
    client_cpu = time.process_time() - client_cpu_start
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    server_cpu = None
    if server_cpu_start is not None and server_cpu_end is not None:
        server_cpu = server_cpu_end - server_cpu_start
    return Segment(
        samples=[s for s in stats.samples if window_start <= s.finished < window_end],
        failures=stats.failures,
        seconds=window_end - window_start,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
    )


def combine(segments: list[Segment]) -> ServerRun:
    samples = [sample for segment in segments for sample in segment.samples]
    count = len(samples)
    failures: dict[str, int] = {}
    for segment in segments:
        for reason, n in segment.failures.items():
            failures[reason] = failures.get(reason, 0) + n
    flows = sorted(1000 * (s.get_seconds + s.post_seconds) for s in samples) or [0.0]
    cpu = [segment.server_cpu for segment in segments]
    server_cpu = None
    if count and None not in cpu:
        server_cpu = 1000 * sum(cpu) / count
    return ServerRun(
        per_second=count / sum(segment.seconds for segment in segments),
        seconds=sum(segment.seconds for segment in segments),
        count=count,
        failures=failures,
        get_ms=1000 * statistics.fmean(s.get_seconds for s in samples) if samples else 0.0,
        post_ms=1000 * statistics.fmean(s.post_seconds for s in samples) if samples else 0.0,
        flow_p50_ms=flows[len(flows) // 2],
        flow_p95_ms=flows[min(len(flows) - 1, int(len(flows) * 0.95))],
        server_cpu_ms=server_cpu,
        client_cpu_ms=1000 * sum(segment.client_cpu for segment in segments) / max(count, 1),
    )


@contextlib.contextmanager
def gunicorn(environ: dict[str, str], port: int, workers: int, log: Path, root: Path = ROOT):
    """gunicorn with W sync workers running ``root``'s code (another checkout, for an A/B),
    once /healthz answers; stopped at the end."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "wsgi:app",
    ]
    with log.open("w") as log_file:
        server = subprocess.Popen(
            command, cwd=root, env=environ, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            wait_until_healthy(port, server)
            yield server
        except BaseException:
            print(f"--- gunicorn log ({log}) ---\n{log.read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


# --- report ------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summary(args, hashes: list[HashRun], run: ServerRun, database: str) -> dict:
    baseline = statistics.fmean(h.per_second for h in hashes)
    ratio = run.per_second / baseline if baseline else 0.0
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "database": database,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "hash_processes": args.hash_processes,
        "hashes": hashes,
        "baseline": baseline,
        "run": run,
        "ratio": ratio,
        "passed": ratio >= TARGET_RATIO,
    }


def render_table(result: dict) -> str:
    run: ServerRun = result["run"]
    hashes: list[HashRun] = result["hashes"]
    hash_cpu = statistics.fmean(h.cpu_ms_per_hash for h in hashes)
    cpu = f"{run.server_cpu_ms:.1f}" if run.server_cpu_ms else "n/a"
    worker_ms = 1000 * result["workers"] * run.seconds / max(run.count, 1)
    rows = [
        ("argon2 hash-only phases", " / ".join(f"{h.per_second:.1f}" for h in hashes) + " /s"),
        ("argon2 hash-only mean", f"{result['baseline']:.1f} hashes/s"),
        (
            "password sign-ins",
            f"{run.per_second:.1f} sign-ins/s ({run.count} in {run.seconds:.0f} s)",
        ),
        ("ratio (target >= 0.8)", f"{result['ratio']:.3f} {_verdict(result)}"),
        ("mean GET /login", f"{run.get_ms:.1f} ms"),
        ("mean POST /login", f"{run.post_ms:.1f} ms"),
        ("GET+POST p50 / p95", f"{run.flow_p50_ms:.1f} / {run.flow_p95_ms:.1f} ms"),
        ("worker wall time per sign-in", f"{worker_ms:.1f} ms (W x window / sign-ins)"),
        ("worker CPU per sign-in", f"{cpu} ms"),
        ("argon2 CPU per hash", f"{hash_cpu:.1f} ms (hash-only phases)"),
        ("CPU ratio", f"{cpu_ratio(result)} (argon2 CPU per hash / worker CPU per sign-in)"),
        ("client CPU per sign-in", f"{run.client_cpu_ms:.1f} ms"),
        ("failures", ", ".join(f"{k}: {v}" for k, v in run.failures.items()) or "none"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def cpu_ratio(result: dict) -> str:
    """The ratio if workers never waited: argon2's share of the CPU a sign-in costs."""
    run: ServerRun = result["run"]
    if not run.server_cpu_ms:
        return "n/a"
    hash_cpu = statistics.fmean(h.cpu_ms_per_hash for h in result["hashes"])
    return f"{hash_cpu / run.server_cpu_ms:.3f}"


def _verdict(result: dict) -> str:
    return "PASS" if result["passed"] else "FAIL"


def record(result: dict) -> None:
    """Replace the latest-run block in RESULTS.md and append a row to its history table."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    history: list[str] = []
    if BEGIN_MARK in text and END_MARK in text:
        head, rest = text.split(BEGIN_MARK, 1)
        block, tail = rest.split(END_MARK, 1)
        history = [line for line in block.splitlines() if re.match(r"^\| \d{4}-", line)]
    else:
        head, tail = (text.rstrip() + "\n\n" if text else ""), "\n"
    run: ServerRun = result["run"]
    params = (
        f"W={result['workers']} C={result['concurrency']} H={result['hash_processes']} "
        f"N={result['seconds']:g}s"
    )
    if result["rounds"] > 1:
        params += f" R={result['rounds']}"
    phases = " / ".join(f"{h.per_second:.1f}" for h in result["hashes"])
    history.append(
        f"| {result['date']} | {result['nproc']} | {params} | {result['database']} | {phases} | "
        f"{run.per_second:.1f} | {result['ratio']:.3f} | {cpu_ratio(result)} | "
        f"{_verdict(result)} |"
    )
    block = "\n".join(
        [
            BEGIN_MARK,
            "### password_login: latest run",
            "",
            f"{result['date']}; nproc {result['nproc']} ({result['cpu']}), "
            f"Python {result['python']}; {result['database']}; gunicorn sync workers "
            f"W={result['workers']}, client threads C={result['concurrency']}, hash-only "
            f"processes H={result['hash_processes']}, "
            f"{result['rounds']} x {result['seconds']:g} s window; argon2id t={ARGON2_TIME_COST} "
            f"m={ARGON2_MEMORY_COST} KiB p={ARGON2_PARALLELISM}.",
            "",
            "```",
            render_table(result),
            "```",
            "",
            "### password_login: history",
            "",
            "| date | nproc | params | database | hash-only/s per phase | sign-ins/s | ratio | "
            "CPU ratio | vs 0.8 |",
            "|---|---|---|---|---|---|---|---|---|",
            *history,
            END_MARK,
        ]
    )
    RESULTS.write_text(head + block + tail)
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


# --- main --------------------------------------------------------------------------------
def main() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="measured window (20)")
    parser.add_argument(
        "--warmup", type=float, default=3, help="unmeasured seconds before each window (3)"
    )
    parser.add_argument(
        "--workers", type=int, default=cores, help=f"gunicorn sync workers ({cores}, the cores)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="client threads (2 x W: a worker never waits for its next request)",
    )
    parser.add_argument(
        "--hash-processes",
        type=int,
        default=cores,
        help=f"processes of the hash-only phases ({cores}, one per core: the most the cores do)",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="sqlite:///NEW-FILE or postgresql://HOST:PORT/ANY (temporary SQLite)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate hash-only and sign-in phases R times, then hash-only once more (1)",
    )
    parser.add_argument("--record", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    args.concurrency = args.concurrency or 2 * args.workers

    with tempfile.TemporaryDirectory(prefix="keyward-bench-") as tmp:
        workdir = Path(tmp)
        with bench_database(args.database_url, workdir) as database_url:
            kind = "PostgreSQL" if database_url.startswith("postgres") else "SQLite"
            port = free_port()
            environ = server_environ(database_url, port)
            print(f"preparing the {kind} database and user", flush=True)
            flask_cli(environ, "db", "upgrade")
            flask_cli(environ, "users", "create", "--email", EMAIL, "--password", PASSWORD)

            log = workdir / "gunicorn.log"
            with gunicorn(environ, port, args.workers, log) as server:
                pids = worker_pids(server.pid)
                hashes: list[HashRun] = []
                segments: list[Segment] = []
                # gunicorn idles (no CPU) while the hash-only phases run.
                for round_ in range(1, args.rounds + 1):
                    step = f"[{round_}/{args.rounds}]"
                    print(f"{step} argon2 hash-only, {args.hash_processes} processes", flush=True)
                    hashes.append(hash_only_rate(args.hash_processes, args.seconds))
                    print(
                        f"{step} sign-ins: gunicorn W={args.workers}, C={args.concurrency} "
                        f"clients, {args.warmup:g} s warm-up",
                        flush=True,
                    )
                    segments.append(
                        run_clients(port, args.concurrency, args.seconds, args.warmup, pids)
                    )
                print("argon2 hash-only again", flush=True)
                hashes.append(hash_only_rate(args.hash_processes, args.seconds))
            run = combine(segments)

    result = summary(args, hashes, run, kind)
    print()
    print(render_table(result))
    if args.record:
        record(result)
    return 0 if run.count and not run.failures else 1


if __name__ == "__main__":
    sys.exit(main())
