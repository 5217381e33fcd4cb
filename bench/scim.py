"""SCIM requests per second against gunicorn: an Entra ID-shaped mix from 16 tenants at once.

Usage (from the repository root)::

    .venv/bin/python bench/scim.py [--seconds N] [--warmup S] [--concurrency C] [--workers W]
        [--tenants T] [--users U] [--database-url URL] [--record]

Steps: migrate a fresh database; create T accounts (default 16), each with a SCIM token, U
provisioned users and one group (through the services, in this process); start gunicorn with
W sync workers. Then C client threads (default 8) each pick a random tenant's token and send
Entra ID's provisioning cycle for one user, over and over:

    lookup      GET  /Users?filter=userName eq "..." (Entra looks every user up before writing)
    create      POST /Users (a new user, core + enterprise attributes)
    membership  PATCH /Groups/{id} (Add members [{"value": id}], excludedAttributes=members)
    deactivate  PATCH /Users/{id} (Replace active "False", as Entra sends it)

i.e. 1 lookup, 1 create, 1 membership PATCH and 1 deactivation per cycle (a quarter each).
Requests that end in the last N seconds (after S of warm-up) count; any status other than
the expected one is a failure. Reported: requests/s, p50/p99 latency per kind and overall,
and the server's CPU per request. SCIM_RATE_LIMIT is raised so the limiter never answers 429
(it still counts every request).

--database-url takes ``sqlite:///PATH`` or ``postgresql://HOST:PORT/ANY``; for PostgreSQL the
bench creates and drops its own ``keyward_bench_scim_<pid>`` database on that server.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import signal
import socket
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
BEGIN_MARK = "<!-- scim:begin -->"
END_MARK = "<!-- scim:end -->"
TARGET = 400.0
KINDS = ("lookup", "create", "membership", "deactivate")


# --- database, data and server -----------------------------------------------------------
@contextlib.contextmanager
def bench_database(url: str | None, workdir: Path):
    if not url:
        yield f"sqlite:///{workdir / 'keyward.db'}"
        return
    if url.startswith("sqlite"):
        yield url
        return
    from sqlalchemy import create_engine
    from sqlalchemy import text

    sys.path.insert(0, str(ROOT))
    from config.settings import database_uri

    parts = urllib.parse.urlsplit(url)
    name = f"keyward_bench_scim_{os.getpid()}"
    admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    admin = create_engine(database_uri(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield urllib.parse.urlunsplit(parts._replace(path="/" + name))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def server_environ(database_url: str, port: int) -> dict[str, str]:
    from cryptography.fernet import Fernet

    environ = dict(os.environ)
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environ.update(
        {
            "KEYWARD_ENV": "embedded",
            "DATABASE_URL": database_url,
            "REDIS_URL": "",
            "SECRET_KEY": os.urandom(32).hex(),
            "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "SCIM_RATE_LIMIT": "1000000/second",
            "LOG_LEVEL": "WARNING",
        }
    )
    return environ


@dataclass
class Tenant:
    token: str
    group_id: str
    user_names: list[str]
    user_ids: list[str]


def seed(environ: dict[str, str], tenants: int, users: int) -> list[Tenant]:
    """Migrate, then create the tenants through the services (one process, one commit each)."""
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=ROOT,
        env=environ,
        check=True,
        capture_output=True,
    )
    saved = dict(os.environ)
    os.environ.update(environ)
    try:
        sys.path.insert(0, str(ROOT))
        from app import create_app
        from app.extensions import db
        from app.services import accounts
        from app.services import scim
        from app.services import scim_tokens

        app = create_app()
        made = []
        with app.app_context():
            for n in range(tenants):
                account = accounts.create_account(f"Tenant {n}", f"tenant-{n}")
                row, secret = scim_tokens.create_token(account, "Entra ID")
                db.session.flush()
                caller = scim.Caller(
                    token=scim_tokens.AuthenticatedToken(row.id, account.id, row.name),
                    base_url="http://bench/scim/v2",
                )
                names, ids = [], []
                for u in range(users):
                    name = f"seed{u}@tenant{n}.example"
                    user, _ = scim.create_user(caller, entra_user(name))
                    names.append(name)
                    ids.append(str(user.id))
                group = scim.create_group(caller, {"displayName": f"All of tenant {n}"})
                db.session.commit()
                made.append(Tenant(secret, str(group.id), names, ids))
            db.engine.dispose()
        return made
    finally:
        os.environ.clear()
        os.environ.update(saved)


def entra_user(user_name: str) -> dict:
    return {
        "schemas": [
            "urn:ietf:params:scim:schemas:core:2.0:User",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
        ],
        "externalId": os.urandom(16).hex(),
        "userName": user_name,
        "active": True,
        "displayName": "Bench User",
        "emails": [{"primary": True, "type": "work", "value": user_name}],
        "name": {"formatted": "Bench User", "familyName": "User", "givenName": "Bench"},
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Bench"},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def gunicorn(environ: dict[str, str], port: int, workers: int, log: Path):
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
            command, cwd=ROOT, env=environ, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"gunicorn exited:\n{log.read_text()[-3000:]}")
                try:
                    if request(port, "GET", "/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("gunicorn did not answer /healthz in time")
                time.sleep(0.2)
            yield server
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


def worker_pids(master: int) -> list[int]:
    try:
        return [
            int(pid)
            for task in Path(f"/proc/{master}/task").iterdir()
            for pid in (task / "children").read_text().split()
        ]
    except OSError:
        return []


def cpu_seconds(pids: list[int]) -> float | None:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return total / ticks


# --- client --------------------------------------------------------------------------------
def request(
    port: int, method: str, path: str, *, token: str | None = None, body: dict | None = None
) -> tuple[int, bytes]:
    """One request on its own connection, on a plain socket (a light client: it runs on the
    cores it measures)."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Connection: close",
    ]
    payload = b""
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        payload = json.dumps(body).encode()
        lines.append("Content-Type: application/scim+json")
        lines.append(f"Content-Length: {len(payload)}")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), content


@dataclass
class Stats:
    samples: list[tuple[float, str, float]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def cycle(port: int, tenant: Tenant, serial: str, stats: Stats) -> None:
    """Entra's cycle for one new user: look up, create, add to the group, deactivate."""
    user_name = f"u{serial}@bench.example"

    def timed(kind: str, method: str, path: str, expected: int, body=None) -> bytes | None:
        started = time.perf_counter()
        try:
            status, content = request(port, method, path, token=tenant.token, body=body)
        except OSError as exc:
            status, content = type(exc).__name__, b""
        finished = time.perf_counter()
        with stats.lock:
            if status == expected:
                stats.samples.append((finished, kind, finished - started))
            else:
                key = f"{kind} {status}"
                stats.failures[key] = stats.failures.get(key, 0) + 1
        return content if status == expected else None

    query = urllib.parse.quote(f'userName eq "{user_name}"')
    if timed("lookup", "GET", f"/scim/v2/Users?filter={query}", 200) is None:
        return
    created = timed("create", "POST", "/scim/v2/Users", 201, entra_user(user_name))
    if created is None:
        return
    user_id = json.loads(created)["id"]
    patch = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
    timed(
        "membership",
        "PATCH",
        f"/scim/v2/Groups/{tenant.group_id}?excludedAttributes=members",
        200,
        {
            "schemas": [patch],
            "Operations": [{"op": "Add", "path": "members", "value": [{"value": user_id}]}],
        },
    )
    timed(
        "deactivate",
        "PATCH",
        f"/scim/v2/Users/{user_id}",
        200,
        {"schemas": [patch], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]},
    )


def client_loop(port: int, tenants: list[Tenant], stop: threading.Event, stats: Stats, n: int):
    rng = random.Random(n)
    serial = 0
    while not stop.is_set():
        serial += 1
        cycle(port, rng.choice(tenants), f"{n}-{serial}-{os.getpid()}", stats)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(args, database_url: str, workdir: Path) -> dict:
    port = free_port()
    environ = server_environ(database_url, port)
    started = time.perf_counter()
    tenants = seed(environ, args.tenants, args.users)
    print(
        f"seeded {args.tenants} tenants x {args.users} users "
        f"in {time.perf_counter() - started:.1f} s"
    )
    with gunicorn(environ, port, args.workers, workdir / "gunicorn.log") as server:
        pids = worker_pids(server.pid)
        stats = Stats()
        stop = threading.Event()
        threads = [
            threading.Thread(target=client_loop, args=(port, tenants, stop, stats, n), daemon=True)
            for n in range(args.concurrency)
        ]
        for thread in threads:
            thread.start()
        time.sleep(args.warmup)
        window_start = time.perf_counter()
        cpu_start = cpu_seconds(pids)
        client_cpu_start = time.process_time()
        time.sleep(args.seconds)
        window_end = time.perf_counter()
        cpu_end = cpu_seconds(pids)
        client_cpu = time.process_time() - client_cpu_start
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    inside = [s for s in stats.samples if window_start <= s[0] < window_end]
    seconds = window_end - window_start
    result = {
        "database": "PostgreSQL" if database_url.startswith("postgres") else "SQLite",
        "seconds": round(seconds, 1),
        "requests": len(inside),
        "per_second": len(inside) / seconds,
        "p50_ms": 1000 * percentile([s[2] for s in inside], 0.50),
        "p99_ms": 1000 * percentile([s[2] for s in inside], 0.99),
        "kinds": {
            kind: {
                "count": sum(1 for s in inside if s[1] == kind),
                "p50_ms": 1000 * percentile([s[2] for s in inside if s[1] == kind], 0.50),
                "p99_ms": 1000 * percentile([s[2] for s in inside if s[1] == kind], 0.99),
            }
            for kind in KINDS
        },
        "server_cpu_ms": (
            1000 * (cpu_end - cpu_start) / max(len(inside), 1)
            if cpu_start is not None and cpu_end is not None
            else None
        ),
        "client_cpu_ms": 1000 * client_cpu / max(len(inside), 1),
        "failures": stats.failures,
    }
    return result


def render(args, result: dict) -> str:
    lines = [
        f"requests/s                {result['per_second']:.1f} ({result['requests']} in "
        f"{result['seconds']} s; target >= {TARGET:.0f})",
        f"latency p50 / p99         {result['p50_ms']:.1f} / {result['p99_ms']:.1f} ms",
    ]
    for kind, row in result["kinds"].items():
        lines.append(
            f"  {kind:<23} {row['count']:>6} requests, "
            f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms"
        )
    cpu = result["server_cpu_ms"]
    lines.append(
        f"CPU per request           server {cpu:.2f} ms, client {result['client_cpu_ms']:.2f} ms"
        if cpu is not None
        else f"CPU per request           client {result['client_cpu_ms']:.2f} ms"
    )
    lines.append(f"failures                  {result['failures'] or 'none'}")
    return "\n".join(lines)


def header(args, result: dict) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "app", "config"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    code = commit + (" + uncommitted changes in app/ or config/" if dirty else "")
    return (
        f"{now}; nproc {os.cpu_count()}, Python {platform.python_version()}; code {code}; "
        f"{result['database']}; gunicorn sync workers W={args.workers}, client threads "
        f"C={args.concurrency}, {args.tenants} tenants x {args.users} seeded users, "
        f"{args.seconds:.0f} s after {args.warmup:.0f} s warm-up."
    )


def record(args, result: dict) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else ""
    command = "`.venv/bin/python bench/scim.py" + (
        f" --database-url {args.database_url}`" if args.database_url else "`"
    )
    row = (
        f"| {header(args, result).split(';')[0]} | {result['database']} | W={args.workers} "
        f"C={args.concurrency} T={args.tenants} | {result['per_second']:.1f} | "
        f"{result['p50_ms']:.1f} / {result['p99_ms']:.1f} ms | "
        f"{result['server_cpu_ms']:.2f} ms | {sum(result['failures'].values())} |"
    )
    latest = (
        f"### scim ({result['database']}): latest run\n\n"
        f"{header(args, result)} Command: {command}.\n\n"
        f"```\n{render(args, result)}\n```\n"
    )
    if BEGIN_MARK in text and END_MARK in text:
        head, rest = text.split(BEGIN_MARK, 1)
        block, tail = rest.split(END_MARK, 1)
        history = block.split("### scim: history", 1)[1] if "### scim: history" in block else ""
        others = [
            part
            for part in block.split("### scim (")[1:]
            if not part.startswith(f"{result['database']})")
        ]
        kept = "".join("### scim (" + part.split("### scim: history")[0] for part in others)
        history = history.rstrip() + "\n" + row + "\n"
        block = f"\n{latest}\n{kept.strip()}\n\n### scim: history\n{history}"
        text = head + BEGIN_MARK + block.replace("\n\n\n", "\n\n") + END_MARK + tail
    else:
        table = (
            "| date | database | params | requests/s | p50 / p99 | server CPU per request "
            "| failures |\n"
            "|---|---|---|---|---|---|---|\n" + row + "\n"
        )
        text = (
            text.rstrip()
            + "\n\n"
            + BEGIN_MARK
            + f"\n{latest}\n### scim: history\n\n{table}"
            + END_MARK
            + "\n"
        )
    RESULTS.write_text(text)
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--tenants", type=int, default=16)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="keyward-bench-scim-") as tmp:
        workdir = Path(tmp)
        with bench_database(args.database_url, workdir) as url:
            result = run(args, url, workdir)
    print(render(args, result))
    if args.record:
        record(args, result)


if __name__ == "__main__":
    main()
