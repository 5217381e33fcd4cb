"""Bulk deprovisioning: users deprovisioned per second by one Celery worker on PostgreSQL, end
to end, against the same run's naive baseline (one Celery task per user, ORM path).

Usage (from the repository root)::

    .venv/bin/python bench/deprovision.py [--database-url postgresql://HOST:PORT/ANY]
        [--redis-url redis://HOST:PORT/DB] [--users N] [--baseline-users M]
        [--chunk-size C] [--runs R] [--rounds K] [--record]

Steps: create a database of our own on the PostgreSQL server (``keyward_bench_deprov_<pid>``,
dropped at the end) and migrate it (``flask db upgrade``). Seed two accounts; N + M users
managed by the first, each a member of it (one in four also of the second account), with two
live sessions, a login at the first account's SSO provider and a place in one of its groups
(Core INSERTs in this process).

1. **Job**, K times (default 3, each on N fresh users; the median round is the result): start
   one worker as production does (``celery -A celery_worker worker``), with R
   processes (default: one per core, Celery's own default; ``--runs 1`` = a solo pool), on a
   queue of our own. The clock starts, the job is created as the admin page creates it (plan:
   one INSERT ... SELECT of its N items, commit) and queued (``tasks.deprovisioning.start``,
   R runs: JOBS_PARALLEL_RUNS=R); the clock stops when the job row says it has finished.
   users/s = N / that time. The run alone (job started_at -> finished_at) is shown too.
2. **Naive baseline**: the same worker (R processes) with this module's task added
   (``celery -A bench.deprovision:celery_app worker``). The clock starts, one task per user
   is queued (M of them), each loading the user through the ORM and calling
   ``users.deprovision_user`` then committing; the clock stops when all M users are
   deactivated. users/s = M / that time.

Target: >= 10,000 users/s for the job, and >= 20x the naive baseline. Both phases check their
work: every user deactivated, sessions ended, memberships, links and group places removed,
and one audit event per user. Redis: the broker only (default redis://127.0.0.1:6379/14; a
queue name of our own, so other workers on that Redis never take our tasks).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

from celery import shared_task

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN_MARK = "<!-- deprovision:begin -->"
END_MARK = "<!-- deprovision:end -->"
TARGET_RATE = 10_000.0
TARGET_RATIO = 20.0
NAIVE_ACTION = "bench.naive.deprovisioned"


# --- the naive baseline's task (loaded by the baseline worker only) -------------------------
@shared_task(name="bench.deprovision_user")
def deprovision_user_task(user_id: str, account_id: int) -> None:
    """One user, the ORM way: load the user, users.deprovision_user, commit."""
    from app.extensions import db
    from app.services import users

    user = users.get_user(user_id)
    users.deprovision_user(
        user,
        account_id,
        managed=user.managed_by_account_id == account_id,
        reason="bench",
        action=NAIVE_ACTION,
    )
    db.session.commit()


def __getattr__(name: str):
    # `celery -A bench.deprovision:celery_app worker`: the app is built in the worker only,
    # never when the bench itself imports this module.
    if name == "celery_app":
        sys.path.insert(0, str(ROOT))
        from app import create_app

        return create_app().extensions["celery"]
    raise AttributeError(name)


# --- database, data and worker ---------------------------------------------------------------
@contextlib.contextmanager
def bench_database(url: str):
    """Yield the DATABASE_URL of a PostgreSQL database of our own on ``url``'s server."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise SystemExit(f"--database-url must be postgresql://HOST:PORT/ANY, not {url!r}")
    from sqlalchemy import create_engine
    from sqlalchemy import text

    from config.settings import database_uri

    parts = urllib.parse.urlsplit(url)
    name = f"keyward_bench_deprov_{os.getpid()}"
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


def bench_environ(
    database_url: str, redis_url: str, queue: str, chunk_size: int, runs: int = 1
) -> dict:
    from cryptography.fernet import Fernet

    environ = dict(os.environ)
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environ.update(
        {
            "KEYWARD_ENV": "production",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": os.urandom(32).hex(),
            "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "PUBLIC_URL": "http://127.0.0.1:5000",
            "JOBS_QUEUE": queue,
            "JOBS_CHUNK_SIZE": str(chunk_size),
            "JOBS_PARALLEL_RUNS": str(runs),
            "JOBS_CHUNK_DELAY_MS": "0",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return environ


def flask_cli(environ: dict, *args: str) -> None:
    command = [sys.executable, "-m", "flask", "--app", "wsgi", *args]
    result = subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def seed(app, account_id: int, other_id: int, provider_id, group_ids, prefix: str, count: int):
    """``count`` users managed by the account, with memberships, sessions, a login and a
    group place each; returns their ids. Core INSERTs of 5,000 rows at a time."""
    from sqlalchemy import insert

    from app.extensions import db
    from app.models import ExternalLogin
    from app.models import GroupMember
    from app.models import Membership
    from app.models import Session
    from app.models import User
    from app.models.base import utcnow

    now = utcnow()
    ids = [uuid.uuid4() for _ in range(count)]
    batch = 5000
    with app.app_context():
        for start in range(0, count, batch):
            rows: dict = {User: [], Membership: [], Session: [], ExternalLogin: [], GroupMember: []}
            for n in range(start, min(start + batch, count)):
                user_id = ids[n]
                email = f"{prefix}-{n}@bench.example"
                rows[User].append(
                    {
                        "id": user_id,
                        "email": email,
                        "user_name_key": email,
                        "external_id": f"{prefix}-{n}",
                        "active": True,
                        "version": 1,
                        "managed_by_account_id": account_id,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                for member_of in (account_id, other_id) if n % 4 == 0 else (account_id,):
                    rows[Membership].append(
                        {
                            "user_id": user_id,
                            "account_id": member_of,
                            "role": "member",
                            "active": True,
                            "created_at": now,
                        }
                    )
                for _ in range(2):
                    rows[Session].append(
                        {
                            "id": uuid.uuid4(),
                            "token_hash": uuid.uuid4().hex + uuid.uuid4().hex,
                            "user_id": user_id,
                            "data": {},
                            "created_at": now,
                            "last_seen_at": now,
                            "authenticated_at": now,
                            "auth_method": "oidc",
                            "provider_id": provider_id,
                        }
                    )
                rows[ExternalLogin].append(
                    {
                        "user_id": user_id,
                        "provider_id": provider_id,
                        "subject": f"{prefix}-{n}",
                        "created_at": now,
                    }
                )
                rows[GroupMember].append(
                    {
                        "group_id": group_ids[n % len(group_ids)],
                        "user_id": user_id,
                        "created_at": now,
                    }
                )
            for model, values in rows.items():
                db.session.execute(insert(model.__table__), values)
            db.session.commit()
        db.session.execute(db.text("ANALYZE"))
        db.session.commit()
    return ids


def start_worker(
    environ: dict, app_module: str, queue: str, log_path: Path, runs: int = 1
) -> subprocess.Popen:
    """One Celery worker, consuming only our queue; waits for its ping. One process (solo
    pool), or with ``runs`` > 1 a prefork pool of that many processes."""
    from celery import Celery

    hostname = f"keyward-bench-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app_module, "worker",
             "--pool", "solo" if runs == 1 else "prefork", "--concurrency", str(runs),
             "-Q", queue, "--hostname", hostname,
             "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
            cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    control = Celery("keyward-bench-control", broker=environ["REDIS_URL"], set_as_current=False)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"the worker exited:\n{log_path.read_text(errors='replace')}")
            with contextlib.suppress(Exception):
                replies = control.control.ping(destination=[hostname], timeout=1.0) or []
                if any(hostname in reply for reply in replies):
                    return process
            time.sleep(0.2)
    finally:
        control.close()
    stop_worker(process)
    raise SystemExit(f"the worker did not answer:\n{log_path.read_text(errors='replace')}")


def stop_worker(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process and its children (the prefork pool), from Linux /proc;
    None where it cannot be read."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        pids = [pid]
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(child) for child in (task / "children").read_text().split()]
        for one in pids:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return total / ticks


# --- the two phases --------------------------------------------------------------------------
def check_deprovisioned(app, prefix: str, count: int, action: str) -> None:
    """Every ``<prefix>-*`` user deactivated, without sessions, memberships, links or groups,
    and with exactly one ``action`` audit event; raises SystemExit otherwise (a fast wrong
    answer is not a result)."""
    from sqlalchemy import String
    from sqlalchemy import cast
    from sqlalchemy import func
    from sqlalchemy import select

    from app.extensions import db
    from app.models import AuditEvent
    from app.models import ExternalLogin
    from app.models import GroupMember
    from app.models import Membership
    from app.models import Session
    from app.models import User

    users = select(User.id).where(User.email.like(f"{prefix}-%"))

    def rows(model, *where) -> int:
        return db.session.scalar(select(func.count()).select_from(model).where(*where))

    with app.app_context():
        problems = {
            "users": rows(User, User.id.in_(users)) - count,
            "active users": rows(User, User.id.in_(users), User.active.is_(True)),
            "live sessions": rows(
                Session, Session.user_id.in_(users), Session.revoked_at.is_(None)
            ),
            "memberships": rows(Membership, Membership.user_id.in_(users)),
            "links": rows(ExternalLogin, ExternalLogin.user_id.in_(users)),
            "group places": rows(GroupMember, GroupMember.user_id.in_(users)),
        }
        user_texts = select(cast(User.id, String)).where(User.email.like(f"{prefix}-%"))
        per_user = (
            select(AuditEvent.target_id, func.count().label("n"))
            .where(AuditEvent.action == action, AuditEvent.target_id.in_(user_texts))
            .group_by(AuditEvent.target_id)
            .subquery()
        )
        once = db.session.scalar(select(func.count()).where(per_user.c.n == 1))
        problems["users without exactly one audit event"] = count - once
        bad = {name: n for name, n in problems.items() if n}
        if bad:
            raise SystemExit(f"the {action} phase left work undone: {bad}")


def run_job(app, account_id: int, prefix: str, ids: list, worker_pid: int) -> dict:
    from sqlalchemy import select

    from app.extensions import db
    from app.models import Job
    from app.services import accounts
    from app.services import deprovisioning
    from app.tasks import deprovisioning as job_tasks

    criteria = deprovisioning.filter_criteria(f'userName sw "{prefix}-"')
    cpu_before = cpu_seconds(worker_pid)
    started = time.perf_counter()
    with app.app_context():
        job = deprovisioning.create_job(
            accounts.get_account(account_id), criteria, actor_label="bench"
        )
        db.session.commit()
        job_id = job.id
        created = time.perf_counter()
        job_tasks.start(job_id)
        while True:
            status = db.session.scalar(select(Job.status).where(Job.id == job_id))
            db.session.rollback()
            if status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.02)
        finished = time.perf_counter()
        job = db.session.get(Job, job_id)
        run_seconds = (job.finished_at - job.started_at).total_seconds()
        summary = deprovisioning.serialise(job)
    cpu_after = cpu_seconds(worker_pid)
    if summary["status"] != "succeeded" or summary["done"] != len(ids):
        raise SystemExit(f"the job did not deprovision every user: {summary}")
    check_deprovisioned(app, prefix, len(ids), deprovisioning.ITEM_ACTION)
    seconds = finished - started
    return {
        "users": len(ids),
        "seconds": seconds,
        "create_seconds": created - started,
        "run_seconds": run_seconds,
        "per_second": len(ids) / seconds,
        "run_per_second": len(ids) / run_seconds,
        "worker_cpu_ms_per_1000": (
            1e6 * (cpu_after - cpu_before) / len(ids)
            if cpu_before is not None and cpu_after is not None
            else None
        ),
    }


def run_naive(app, account_id: int, ids: list, queue: str, worker_pid: int) -> dict:
    from sqlalchemy import func
    from sqlalchemy import select

    from app.extensions import db
    from app.models import User

    cpu_before = cpu_seconds(worker_pid)
    started = time.perf_counter()
    with app.app_context():
        for user_id in ids:
            deprovision_user_task.apply_async(args=[str(user_id), account_id], queue=queue)
        sent = time.perf_counter()
        while True:
            left = db.session.scalar(
                select(func.count()).where(User.email.like("naive-%"), User.active.is_(True))
            )
            db.session.rollback()
            if not left:
                break
            time.sleep(0.05)
    finished = time.perf_counter()
    cpu_after = cpu_seconds(worker_pid)
    check_deprovisioned(app, "naive", len(ids), NAIVE_ACTION)
    seconds = finished - started
    return {
        "users": len(ids),
        "seconds": seconds,
        "send_seconds": sent - started,
        "per_second": len(ids) / seconds,
        "worker_cpu_ms_per_1000": (
            1e6 * (cpu_after - cpu_before) / len(ids)
            if cpu_before is not None and cpu_after is not None
            else None
        ),
    }


def run(args) -> dict:
    sys.path.insert(0, str(ROOT))
    queue = f"keyward-bench-deprovision-{uuid.uuid4().hex[:8]}"
    with bench_database(args.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        environ = bench_environ(url, args.redis_url, queue, args.chunk_size, args.runs)
        flask_cli(environ, "db", "upgrade")
        # This process plays the web process (creates and queues the job) and the seeder.
        for key in ("KEYWARD_ENV", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ENCRYPTION_KEYS",
                    "PUBLIC_URL", "JOBS_QUEUE", "JOBS_CHUNK_SIZE", "JOBS_PARALLEL_RUNS",
                    "LOG_LEVEL"):  # fmt: skip
            os.environ[key] = environ[key]
        from app import create_app
        from app.extensions import db
        from app.models import Group
        from app.models import SsoProvider
        from app.services import accounts

        app = create_app()
        with app.app_context():
            account = accounts.create_account("Bench Corp")
            other = accounts.create_account("Other Corp")
            provider = SsoProvider(
                account_id=account.id, display_name="Bench IdP", scheme="bench-idp",
                scheme_key="bench-idp", authority="https://idp.bench.example", client_id="bench",
            )  # fmt: skip
            groups = [Group(account_id=account.id, display_name=f"Team {n}") for n in range(10)]
            db.session.add_all([provider, *groups])
            db.session.commit()
            account_id, other_id, provider_id = account.id, other.id, provider.id
            group_ids = [g.id for g in groups]
        seeded = time.perf_counter()
        # A fresh set of users for every round: the same work each time.
        job_ids = {
            f"job{n}": seed(
                app, account_id, other_id, provider_id, group_ids, f"job{n}", args.users
            )
            for n in range(args.rounds)
        }
        naive_ids = seed(
            app, account_id, other_id, provider_id, group_ids, "naive", args.baseline_users
        )
        took = time.perf_counter() - seeded
        print(f"seeded {args.users * args.rounds + args.baseline_users} users in {took:.1f} s")
        log = Path(tmp) / "worker.log"

        worker = start_worker(environ, "celery_worker", queue, log, args.runs)
        try:
            rounds = []
            for prefix, ids in job_ids.items():
                rounds.append(run_job(app, account_id, prefix, ids, worker.pid))
                print(f"job, round {len(rounds)}: {rounds[-1]['per_second']:,.0f} users/s")
        finally:
            stop_worker(worker)
        # The median round (by end-to-end rate): a shared machine's noise hits single rounds.
        job = sorted(rounds, key=lambda r: r["per_second"])[len(rounds) // 2]
        job["rounds"] = [r["per_second"] for r in rounds]
        worker = start_worker(environ, "bench.deprovision:celery_app", queue, log, args.runs)
        try:
            naive = run_naive(app, account_id, naive_ids, queue, worker.pid)
        finally:
            stop_worker(worker)
        with app.app_context():
            db.engine.dispose()
    return {
        "job": job,
        "naive": naive,
        "ratio": job["per_second"] / naive["per_second"],
        "server_version": server_version(args.database_url),
    }


def server_version(url: str) -> str:
    from sqlalchemy import create_engine
    from sqlalchemy import text

    from config.settings import database_uri

    engine = create_engine(database_uri(url))
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar()).split()[0]
    finally:
        engine.dispose()


# --- report ----------------------------------------------------------------------------------
def render(args, result: dict) -> str:
    job, naive = result["job"], result["naive"]

    def cpu(phase: dict) -> str:
        value = phase["worker_cpu_ms_per_1000"]
        return f"{value:.0f} ms" if value is not None else "n/a"

    verdict_rate = "met" if job["per_second"] >= TARGET_RATE else "NOT met"
    verdict_ratio = "met" if result["ratio"] >= TARGET_RATIO else "NOT met"
    return "\n".join(
        [
            f"job, end to end         {job['per_second']:,.0f} users/s ({job['users']:,} users in "
            f"{job['seconds']:.2f} s, median of {len(job['rounds'])} rounds; target >= "
            f"{TARGET_RATE:,.0f}: {verdict_rate})",
            "  rounds                "
            + ", ".join(f"{rate:,.0f}" for rate in job["rounds"])
            + " users/s",
            f"  plan + items          {job['create_seconds']:.2f} s (INSERT ... SELECT, commit)",
            f"  run (worker)          {job['run_seconds']:.2f} s = {job['run_per_second']:,.0f} "
            f"users/s, chunks of {args.chunk_size}",
            f"  worker CPU            {cpu(job)} per 1,000 users",
            f"naive, one task a user  {naive['per_second']:,.0f} users/s ({naive['users']:,} users "
            f"in {naive['seconds']:.2f} s; queued in {naive['send_seconds']:.2f} s)",
            f"  worker CPU            {cpu(naive)} per 1,000 users",
            f"job / naive             {result['ratio']:.1f}x (target >= {TARGET_RATIO:.0f}x: "
            f"{verdict_ratio})",
        ]
    )


def header(args, result: dict) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "app", "config"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    code = commit + (" + uncommitted changes in app/ or config/" if dirty else "")
    return (
        f"{now}; nproc {os.cpu_count()}, load average {load:.1f} at the end, Python "
        f"{platform.python_version()}, PostgreSQL {result['server_version']}; code {code}; "
        f"one worker per phase ({worker_kind(args)}); N={args.users:,} job users, "
        f"M={args.baseline_users:,} baseline users."
    )


def worker_kind(args) -> str:
    if args.runs == 1:
        return "solo pool: one process"
    return f"prefork pool of {args.runs} processes, {args.runs} runs of the job"


def command(args) -> str:
    parts = [".venv/bin/python bench/deprovision.py"]
    defaults = {
        "users": 50_000,
        "baseline_users": 2_000,
        "chunk_size": 2000,
        "runs": os.cpu_count() or 1,
        "rounds": 3,
    }
    for name, default in defaults.items():
        if getattr(args, name) != default:
            parts.append(f"--{name.replace('_', '-')} {getattr(args, name)}")
    parts.append(f"--database-url {args.database_url}")
    return " ".join(parts)


def record(args, result: dict) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else ""
    job, naive = result["job"], result["naive"]
    row = (
        f"| {header(args, result).split(';')[0]} | {job['users']:,} | {args.chunk_size} | "
        f"{args.runs} | {job['per_second']:,.0f} | {job['run_per_second']:,.0f} | "
        f"{naive['per_second']:,.0f} | {result['ratio']:.1f}x | {os.getloadavg()[0]:.1f} |"
    )
    latest = (
        f"### deprovision: latest run\n\n{header(args, result)} Command: `{command(args)}`.\n\n"
        f"```\n{render(args, result)}\n```\n"
    )
    title = "### deprovision: history"
    if BEGIN_MARK in text and END_MARK in text:
        head, rest = text.split(BEGIN_MARK, 1)
        block, tail = rest.split(END_MARK, 1)
        history = block.split(title, 1)[1].strip() if title in block else ""
        history = history + "\n" + row + "\n"
        text = head + BEGIN_MARK + f"\n{latest}\n{title}\n\n{history}" + END_MARK + tail
    else:
        table = (
            "| date | N | chunk | worker processes | job users/s (end to end) | job users/s (run) "
            "| naive users/s | job / naive | load |\n|---|---|---|---|---|---|---|---|---|\n"
            + row
            + "\n"
        )
        text = text.rstrip() + "\n\n" + BEGIN_MARK + f"\n{latest}\n{title}\n\n{table}" + END_MARK
        text += "\n"
    RESULTS.write_text(text)
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://127.0.0.1:5432/postgres")
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL") or "redis://127.0.0.1:6379/14"
    )
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--baseline-users", type=int, default=2_000)
    parser.add_argument("--chunk-size", type=int, default=2000, help="JOBS_CHUNK_SIZE")
    parser.add_argument(
        "--runs",
        type=int,
        default=os.cpu_count() or 1,
        help="processes of the one worker (Celery's default: one per core) and runs per job "
        "(JOBS_PARALLEL_RUNS); 1 = a solo worker",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="job rounds (fresh users each); the median counts"
    )
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    result = run(args)
    print(render(args, result))
    if args.record:
        record(args, result)


if __name__ == "__main__":
    main()
