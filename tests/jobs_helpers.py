"""Helpers of the bulk deprovisioning tests: many members at once (Core inserts), a provider
and a group of an account, a job's audit events per user, waiting for a job to finish, and
the processes that work on jobs (Celery workers with Redis, plain Python runners without)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from celery import Celery
from flask import Flask
from sqlalchemy import insert
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent
from app.models import ExternalLogin
from app.models import Group
from app.models import GroupMember
from app.models import Job
from app.models import JobItem
from app.models import Membership
from app.models import Session
from app.models import SsoProvider
from app.models import User
from app.models.base import utcnow
from app.services import deprovisioning
from tests.processes import stop_process
from tests.tasks.conftest import REPO_ROOT
from tests.tasks.conftest import TEST_REDIS_URL
from tests.tasks.conftest import _die_with_parent
from tests.tasks.conftest import _wait_until_ready


def add_members(
    app: Flask,
    account_id: int,
    count: int,
    *,
    prefix: str = "dep",
    managed: bool = True,
    sessions: int = 1,
    provider_ids: tuple[uuid.UUID, ...] = (),
    group_ids: tuple[uuid.UUID, ...] = (),
    also_member_of: tuple[int, ...] = (),
) -> list[uuid.UUID]:
    """``count`` users ``<prefix>-<n>@example.com``, members of the account (and of
    ``also_member_of``), managed by it or not, each with live sessions, a login at each
    provider and a place in each group; written with a few INSERTs, committed."""
    now = utcnow()
    ids = [uuid.uuid4() for _ in range(count)]
    with app.app_context():
        users, memberships, sessions_, links, members = [], [], [], [], []
        for n, user_id in enumerate(ids):
            email = f"{prefix}-{n}@example.com"
            users.append(
                {
                    "id": user_id,
                    "email": email,
                    "user_name_key": email,
                    "external_id": f"{prefix}-ext-{n}",
                    "active": True,
                    "version": 1,
                    "managed_by_account_id": account_id if managed else None,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            for member_of in (account_id, *also_member_of):
                memberships.append(
                    {
                        "user_id": user_id,
                        "account_id": member_of,
                        "role": "member",
                        "active": True,
                        "created_at": now,
                    }
                )
            for _ in range(sessions):
                sessions_.append(
                    {
                        "id": uuid.uuid4(),
                        "token_hash": uuid.uuid4().hex + uuid.uuid4().hex,
                        "user_id": user_id,
                        "data": {},
                        "created_at": now,
                        "last_seen_at": now,
                        "authenticated_at": now,
                        "auth_method": "password",
                    }
                )
            for provider_id in provider_ids:
                links.append(
                    {
                        "user_id": user_id,
                        "provider_id": provider_id,
                        "subject": f"{prefix}-{n}",
                        "created_at": now,
                    }
                )
            for group_id in group_ids:
                members.append({"group_id": group_id, "user_id": user_id, "created_at": now})
        for model, rows in (
            (User, users),
            (Membership, memberships),
            (Session, sessions_),
            (ExternalLogin, links),
            (GroupMember, members),
        ):
            if rows:
                db.session.execute(insert(model.__table__), rows)
        db.session.commit()
    return ids


def make_provider(app: Flask, account_id: int, scheme: str) -> uuid.UUID:
    with app.app_context():
        provider = SsoProvider(
            account_id=account_id,
            display_name=scheme,
            scheme=scheme,
            scheme_key=scheme.lower(),
            authority="https://idp.example.com",
            client_id="client",
        )
        db.session.add(provider)
        db.session.commit()
        return provider.id


def make_group(app: Flask, account_id: int, name: str) -> uuid.UUID:
    with app.app_context():
        group = Group(account_id=account_id, display_name=name)
        db.session.add(group)
        db.session.commit()
        return group.id


def item_audit_counts(app: Flask, job_id: uuid.UUID | str) -> Counter[str]:
    """``job.item.deprovisioned`` events of the job, counted per user id."""
    with app.app_context():
        rows = db.session.execute(
            select(AuditEvent.target_id, AuditEvent.details).where(
                AuditEvent.action == deprovisioning.ITEM_ACTION
            )
        ).all()
        return Counter(target for target, details in rows if details["job_id"] == str(job_id))


def job_state(app: Flask, job_id: uuid.UUID | str) -> dict[str, Any]:
    """The job's counters and status, and its items counted per state (fresh reads)."""
    with app.app_context():
        job = db.session.get(Job, uuid.UUID(str(job_id)))
        assert job is not None
        states = Counter(
            dict(
                db.session.execute(
                    select(JobItem.state, db.func.count())
                    .where(JobItem.job_id == job.id)
                    .group_by(JobItem.state)
                ).all()
            )
        )
        result = {**deprovisioning.serialise(job), "items": states}
        db.session.rollback()
        return result


def wait_for_job(
    app: Flask, job_id: uuid.UUID | str, *, timeout: float = 120, until=None
) -> dict[str, Any]:
    """Poll the job until ``until(state)`` holds (default: it has finished); fails with the
    last state seen after ``timeout`` seconds."""
    finished = {"succeeded", "failed", "cancelled"}
    until = until or (lambda state: state["status"] in finished)
    deadline = time.monotonic() + timeout
    while True:
        state = job_state(app, job_id)
        if until(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not get there in {timeout:.0f} s: {state}")
        time.sleep(0.1)


# Without a broker, the "worker" a test kills is a Python process running the task itself.
RUNNER = textwrap.dedent(
    """
    import sys, time
    from app import create_app
    from app.tasks import deprovisioning as tasks

    app = create_app()
    with app.app_context():
        if sys.argv[1] == "run":
            tasks.run(sys.argv[2])
        else:
            # beat's sweep, until it has restarted a stalled job (which runs here, eagerly)
            deadline = time.monotonic() + 60
            while not tasks.reclaim_expired():
                if time.monotonic() > deadline:
                    sys.exit("no stalled job to restart")
                time.sleep(0.2)
    """
)


class JobProcess:
    """A process that works on jobs, started by a test and stopped (or killed) by its pid:
    ``celery worker -Q <queue>`` with Redis, else ``python -c RUNNER ...``."""

    def __init__(self, database_url: str, log_dir: Path, name: str, queue: str, env: dict):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.hostname = f"keyward-test-{name}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        self.environ = {
            **os.environ,
            "KEYWARD_ENV": "testing",
            "DATABASE_URL": database_url,
            "REDIS_URL": TEST_REDIS_URL or "",
            "PUBLIC_URL": "http://localhost",
            "PYTHONUNBUFFERED": "1",
            "JOBS_QUEUE": queue,
            **env,
        }
        self.queue = queue
        self.process: subprocess.Popen | None = None

    def _spawn(self, command: list[str]) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*_die_with_parent(), *command],
                cwd=REPO_ROOT,
                env=self.environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_worker(self) -> JobProcess:
        assert TEST_REDIS_URL
        self._spawn(
            [
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
                "-Q",
                self.queue,
                "--hostname",
                self.hostname,
                "--without-mingle",
                "--without-gossip",
            ]
        )
        control = Celery("keyward-tests-jobs-control", broker=TEST_REDIS_URL, set_as_current=False)
        try:
            _wait_until_ready(self.process, control, self.hostname, self.log_path)
        finally:
            control.close()
        return self

    def start_runner(self, *args: str) -> JobProcess:
        self._spawn([sys.executable, "-c", RUNNER, *args])
        return self

    @property
    def worker_name(self) -> str:
        """What the process writes in JobItem.claimed_by."""
        assert self.process is not None
        host = self.hostname if TEST_REDIS_URL else socket.gethostname()
        return f"{host}/{self.process.pid}"

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as when the OOM killer or a node loss strikes."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        stop_process(self.process, 15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
