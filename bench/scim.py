"""SCIM requests per second against gunicorn: an Entra ID-shaped mix from 16 tenants at once.

Usage (from the repository root)::

    .venv/bin/python bench/scim.py [--seconds N] [--warmup S] [--concurrency C] [--workers W]
        [--tenants T] [--users U] [--database-url URL] [--record] [--code DIR]
    .venv/bin/python bench/scim.py --in-process [--cycles N] [--rounds R] [--warmup-cycles W]
        [--profile FILE] [--database-url URL] [--code DIR]

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
the CPU per request of the gunicorn workers, of PostgreSQL's backends (when the server runs
on this machine: it shares the cores) and of the client, and the load average. SCIM_RATE_LIMIT
is raised so the limiter never answers 429 (it still counts every request).

--in-process: the same cycle through the Flask test client in this process, one request at a
time, R windows of N cycles: the server's CPU per request as process time inside the WSGI app
(min and median over the windows, by kind), PostgreSQL's backends' CPU, and the SQL
statements per request. Other load on the machine moves it far less than requests/s; it is
lower than the gunicorn figure, whose workers run with cold caches, sharing two cores with
the client and each other. --profile adds a cProfile'd window. --code DIR runs another
checkout's app (e.g. ``git worktree add ../kw-head HEAD``) for side-by-side comparisons.

--database-url takes ``sqlite:///PATH`` or ``postgresql://HOST:PORT/ANY``; for PostgreSQL the
bench creates and drops its own ``keyward_bench_scim_<pid>`` database on that server.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
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
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

from password_login import bench_database  # noqa: E402
from password_login import cpu_seconds  # noqa: E402
from password_login import embedded_environ  # noqa: E402
from password_login import free_port  # noqa: E402
from password_login import gunicorn  # noqa: E402
from password_login import worker_pids  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN_MARK = "<!-- scim:begin -->"
END_MARK = "<!-- scim:end -->"
TARGET = 400.0
KINDS = ("lookup", "create", "membership", "deactivate")


# --- database, data and server -----------------------------------------------------------
def server_environ(database_url: str, port: int) -> dict[str, str]:
    return embedded_environ(
        database_url, port, SCIM_RATE_LIMIT="1000000/second", LOG_LEVEL="WARNING"
    )


@dataclass
class Tenant:
    token: str
    group_id: str
    user_names: list[str]
    user_ids: list[str]


def seed(
    environ: dict[str, str], tenants: int, users: int, *, root: Path = ROOT, keep_app: bool = False
):
    """Migrate, then create the tenants through the services (one process, one commit each).
    Returns the tenants, or (tenants, app) with ``keep_app`` (the in-process mode's app; the
    environment stays set for it). ``root``: the checkout whose code runs."""
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=root,
        env=environ,
        check=True,
        capture_output=True,
    )
    saved = dict(os.environ)
    os.environ.update(environ)
    if root != ROOT:
        # bench_database may have imported this checkout's config: use the other one's.
        for name in [m for m in sys.modules if m == "config" or m.startswith("config.")]:
            del sys.modules[name]
    try:
        sys.path.insert(0, str(root))
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
        if keep_app:
            saved = None
            return made, app
        return made
    finally:
        if saved is not None:
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


def postgres_backends(database_url: str) -> list[int]:
    """The PostgreSQL client backends connected to the bench's database (the gunicorn
    workers' pooled connections), when the server runs on this machine."""
    if not database_url.startswith("postgres"):
        return []
    from sqlalchemy import create_engine
    from sqlalchemy import text

    from config.settings import database_uri

    engine = create_engine(database_uri(database_url))
    try:
        with engine.connect() as conn:
            return [
                row[0]
                for row in conn.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                    )
                )
            ]
    finally:
        engine.dispose()


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


def cycle_steps(tenant: Tenant, user_name: str):
    """Entra's cycle for one new user: look up, create, add to the group, deactivate. Yields
    (kind, method, path, body, expected status); the caller sends back the answer's body,
    or None to stop (the create's answer carries the id the next steps need)."""
    query = urllib.parse.quote(f'userName eq "{user_name}"')
    if (yield "lookup", "GET", f"/scim/v2/Users?filter={query}", None, 200) is None:
        return
    created = yield "create", "POST", "/scim/v2/Users", entra_user(user_name), 201
    if created is None:
        return
    user_id = json.loads(created)["id"]
    patch = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
    yield (
        "membership",
        "PATCH",
        f"/scim/v2/Groups/{tenant.group_id}?excludedAttributes=members",
        {
            "schemas": [patch],
            "Operations": [{"op": "Add", "path": "members", "value": [{"value": user_id}]}],
        },
        200,
    )
    yield (
        "deactivate",
        "PATCH",
        f"/scim/v2/Users/{user_id}",
        {"schemas": [patch], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]},
        200,
    )


def run_steps(steps, send) -> None:
    """Drive cycle_steps with ``send(kind, method, path, body, expected)``, which returns the
    answer's body or None."""
    try:
        step = next(steps)
        while True:
            step = steps.send(send(*step))
    except StopIteration:
        pass


def cycle(port: int, tenant: Tenant, serial: str, stats: Stats) -> None:
    """One cycle over HTTP, timed."""

    def timed(kind: str, method: str, path: str, body, expected: int) -> bytes | None:
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

    run_steps(cycle_steps(tenant, f"u{serial}@bench.example"), timed)


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
    root = code_root(args)
    tenants = seed(environ, args.tenants, args.users, root=root)
    print(
        f"seeded {args.tenants} tenants x {args.users} users "
        f"in {time.perf_counter() - started:.1f} s"
    )
    with gunicorn(environ, port, args.workers, workdir / "gunicorn.log", root) as server:
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
        # PostgreSQL shares the cores: its backends' CPU is part of a request's cost.
        backends = postgres_backends(database_url)
        window_start = time.perf_counter()
        cpu_start = cpu_seconds(pids)
        db_cpu_start = cpu_seconds(backends) if backends else None
        client_cpu_start = time.process_time()
        load_start = os.getloadavg()[0]
        time.sleep(args.seconds)
        window_end = time.perf_counter()
        cpu_end = cpu_seconds(pids)
        db_cpu_end = cpu_seconds(backends) if backends else None
        client_cpu = time.process_time() - client_cpu_start
        load_end = os.getloadavg()[0]
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
        "database_cpu_ms": (
            1000 * (db_cpu_end - db_cpu_start) / max(len(inside), 1)
            if db_cpu_start is not None and db_cpu_end is not None
            else None
        ),
        "load": (load_start, load_end),
        "code": str(root) if args.code else None,
        "failures": stats.failures,
    }
    return result


def code_root(args) -> Path:
    """The checkout whose code runs: this one, or --code's (to compare two side by side)."""
    return Path(args.code).resolve() if args.code else ROOT


# --- in-process: the same mix through the Flask test client ------------------------------------
def in_process(args, database_url: str) -> None:
    """The cycle through the Flask test client in this process, one request at a time: the
    server's CPU per request as process time inside the WSGI app (the test client's own work
    left out), which other load on the machine disturbs far less than requests/s. With
    --code, the app is imported from another checkout (to compare code side by side)."""
    import cProfile
    import pstats
    import statistics

    root = code_root(args)
    environ = server_environ(database_url, 5000)
    tenants, app = seed(environ, args.tenants, args.users, root=root, keep_app=True)
    from sqlalchemy import event

    from app.extensions import db

    current = {"kind": ""}
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    statements: dict[str, int] = dict.fromkeys(KINDS, 0)
    inner = app.wsgi_app

    def timed_app(environ, start_response):
        started = time.process_time()
        body = list(inner(environ, start_response))
        times[current["kind"]].append(time.process_time() - started)
        return body

    def count(*_args) -> None:
        statements[current["kind"]] += 1

    app.wsgi_app = timed_app
    client = app.test_client()
    rng = random.Random(1)
    serial = 0

    def send(kind, method, path, body, expected):
        current["kind"] = kind
        response = client.open(
            path,
            method=method,
            headers={"Authorization": f"Bearer {tenant.token}"},
            data=json.dumps(body) if body is not None else None,
            content_type="application/scim+json" if body is not None else None,
        )
        if response.status_code != expected:
            raise SystemExit(f"{kind}: {response.status_code} {response.get_data(as_text=True)}")
        return response.get_data()

    def cycles(n: int) -> None:
        nonlocal serial, tenant
        for _ in range(n):
            serial += 1
            tenant = rng.choice(tenants)
            run_steps(cycle_steps(tenant, f"u{serial}-{os.getpid()}@bench.example"), send)

    tenant = tenants[0]
    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    cycles(max(args.warmup_cycles, 1))
    event.remove(engine, "before_cursor_execute", count)
    per_kind_statements = {k: statements[k] / max(len(times[k]), 1) for k in KINDS}
    backends = postgres_backends(environ["DATABASE_URL"])
    windows = []
    for window in range(args.rounds + (1 if args.profile else 0)):
        profiler = None
        if args.profile and window == args.rounds:
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
        for kind in KINDS:
            times[kind].clear()
        db_start = cpu_seconds(backends) if backends else None
        cycles(args.cycles)
        db_end = cpu_seconds(backends) if backends else None
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
            continue
        total = sum(sum(v) for v in times.values())
        requests = sum(len(v) for v in times.values())
        windows.append(
            {
                "server_ms": 1000 * total / requests,
                "kinds": {k: 1000 * sum(v) / len(v) for k, v in times.items()},
                "database_ms": (
                    1000 * (db_end - db_start) / requests if db_start is not None else None
                ),
            }
        )
    with app.app_context():
        db.engine.dispose()
    best = min(windows, key=lambda w: w["server_ms"])
    print(
        f"in-process, code {root}, {'PostgreSQL' if backends else 'SQLite'}: "
        f"{args.rounds} windows of {args.cycles} cycles ({4 * args.cycles} requests) after "
        f"{args.warmup_cycles} warm-up cycles"
    )
    print(
        "server CPU per request    min {:.3f} ms, median {:.3f} ms".format(
            best["server_ms"], statistics.median(w["server_ms"] for w in windows)
        )
    )
    print(
        "  by kind (min window)    "
        + ", ".join(f"{k} {v:.2f}" for k, v in best["kinds"].items())
        + " ms"
    )
    if backends:
        values = [w["database_ms"] for w in windows]
        print(
            f"PostgreSQL CPU per request min {min(values):.3f} ms, median "
            f"{statistics.median(values):.3f} ms (its backends, same windows)"
        )
    print(
        "SQL statements per request "
        + ", ".join(f"{k} {v:.1f}" for k, v in per_kind_statements.items())
    )
    if args.profile:
        stats = pstats.Stats(args.profile)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(30)


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
    parts = []
    if cpu is not None:
        parts.append(f"server {cpu:.2f} ms")
    if result.get("database_cpu_ms") is not None:
        parts.append(f"PostgreSQL {result['database_cpu_ms']:.2f} ms")
    parts.append(f"client {result['client_cpu_ms']:.2f} ms")
    lines.append("CPU per request           " + ", ".join(parts))
    if result.get("load"):
        lines.append(
            "load average (1 min)      {:.2f} at the window's start, {:.2f} at its end".format(
                *result["load"]
            )
        )
    lines.append(f"failures                  {result['failures'] or 'none'}")
    if result.get("code"):
        lines.append(f"code                      {result['code']}")
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
    cpu = f"{result['server_cpu_ms']:.2f} ms"
    if result.get("database_cpu_ms") is not None:
        cpu += f" + PostgreSQL {result['database_cpu_ms']:.2f} ms"
    load = "; load {:.1f}→{:.1f}".format(*result["load"]) if result.get("load") else ""
    row = (
        f"| {header(args, result).split(';')[0]} | {result['database']} | W={args.workers} "
        f"C={args.concurrency} T={args.tenants}{load} | {result['per_second']:.1f} | "
        f"{result['p50_ms']:.1f} / {result['p99_ms']:.1f} ms | "
        f"{cpu} | {sum(result['failures'].values())} |"
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
    in_process_options = parser.add_argument_group(
        "in-process mode (no gunicorn, no client threads; see in_process())"
    )
    in_process_options.add_argument("--in-process", action="store_true")
    in_process_options.add_argument("--cycles", type=int, default=150, help="cycles per window")
    in_process_options.add_argument("--rounds", type=int, default=6, help="measured windows")
    in_process_options.add_argument("--warmup-cycles", type=int, default=50)
    in_process_options.add_argument("--profile", help="cProfile one more window to this file")
    parser.add_argument(
        "--code", help="run the app from this checkout instead (e.g. a worktree of HEAD)"
    )
    args = parser.parse_args()
    if args.record and (args.in_process or args.code):
        parser.error("--record records the gunicorn bench of this checkout only")
    with tempfile.TemporaryDirectory(prefix="keyward-bench-scim-") as tmp:
        workdir = Path(tmp)
        with bench_database(args.database_url, workdir) as url:
            if args.in_process:
                in_process(args, url)
                return
            result = run(args, url, workdir)
    print(render(args, result))
    if args.record:
        record(args, result)


if __name__ == "__main__":
    main()
