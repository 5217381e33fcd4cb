"""Bulk deprovisioning jobs in real processes: Celery workers on Redis with TEST_REDIS_URL,
eager tasks (and plain Python processes where a test needs a process to kill) without it.

The same tests run in both passes, never skipped: a 10,000-user job; a worker killed with
SIGKILL mid-job whose job finishes on a second worker with every user processed exactly
once (inside a chunk's transaction, and holding a leased claim); cancel; failed items and
their retry; the task entry points and beat's sweep.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy import update

from app.extensions import db
from app.models import Job
from app.models import JobItem
from app.models import User
from app.models.base import utcnow
from app.services import accounts
from app.services import deprovisioning as dp
from app.tasks import deprovisioning as job_tasks
from tests.jobs_helpers import JobProcess
from tests.jobs_helpers import add_members
from tests.jobs_helpers import item_audit_counts
from tests.jobs_helpers import job_state
from tests.jobs_helpers import wait_for_job
from tests.tasks.conftest import TEST_REDIS_URL

RESULT_TIMEOUT = 60
# Short leases and small, slow chunks: a worker can be killed holding a claim, and the
# second one reclaims it within seconds.
LEASE = "2"
SLOW = {"JOBS_CHUNK_SIZE": "200", "JOBS_CHUNK_DELAY_MS": "250", "JOBS_CLAIM_LEASE_SECONDS": LEASE}
FAST = {"JOBS_CHUNK_SIZE": "200", "JOBS_CHUNK_DELAY_MS": "0", "JOBS_CLAIM_LEASE_SECONDS": LEASE}
LEASED = {"JOBS_LEASED_CLAIMS": "true"}


@pytest.fixture
def job_processes(database_url, tmp_path) -> Iterator:
    """Start JobProcess instances on one fresh queue; all are stopped after the test."""
    queue = f"keyward-test-jobs-{uuid.uuid4().hex[:8]}"
    started: list[JobProcess] = []

    def _make(name: str, env: dict) -> JobProcess:
        process = JobProcess(database_url, tmp_path, name, queue, env)
        started.append(process)
        return process

    _make.queue = queue  # type: ignore[attr-defined]
    yield _make
    for process in started:
        process.stop()


def _create_job(app, account_id: int, filter_text: str) -> uuid.UUID:
    with app.app_context():
        job = dp.create_job(accounts.get_account(account_id), dp.filter_criteria(filter_text))
        db.session.commit()
        return job.id


def _claimed_items(app, job_id: uuid.UUID) -> dict[int, str]:
    with app.app_context():
        rows = db.session.execute(
            select(JobItem.id, JobItem.claimed_by).where(
                JobItem.job_id == job_id, JobItem.state == "claimed"
            )
        ).all()
        return dict(rows)


def _assert_each_user_processed_once(app, job_id: uuid.UUID, user_ids: list[uuid.UUID]) -> None:
    counts = item_audit_counts(app, job_id)
    assert set(counts) == {str(u) for u in user_ids}
    assert set(counts.values()) == {1}, "a user was deprovisioned twice"
    with app.app_context():
        assert not db.session.scalar(
            select(db.func.count()).where(User.id.in_(user_ids), User.active.is_(True))
        )


# --- the tests ---------------------------------------------------------------------------
def test_a_ten_thousand_user_job_completes_with_every_item_recorded(app, make_account):
    account = make_account()
    user_ids = add_members(app, account.id, 10_000, prefix="bulk")
    job_id = _create_job(app, account.id, 'userName sw "bulk-"')

    with app.app_context():
        job_tasks.start(job_id)
    state = wait_for_job(app, job_id, timeout=300)

    assert (state["status"], state["total"], state["done"], state["failed"]) == (
        "succeeded",
        10_000,
        10_000,
        0,
    )
    assert state["items"] == {"done": 10_000}
    with app.app_context():
        unfinished = db.session.scalar(
            select(db.func.count()).where(JobItem.job_id == job_id, JobItem.finished_at.is_(None))
        )
        assert unfinished == 0
        assert db.session.scalar(select(db.func.max(JobItem.attempt))) == 1
    _assert_each_user_processed_once(app, job_id, user_ids)


def _run_job_on(process, jobs_app, job_id: uuid.UUID) -> None:
    """Start the job on this process: a Celery worker and the job's queued runs with Redis,
    else the run itself in a plain Python process."""
    if TEST_REDIS_URL:
        process.start_worker()
        with jobs_app.app_context():
            job_tasks.start(job_id)
    else:
        process.start_runner("run", str(job_id))


def _finish_on(second, jobs_app, app, job_id: uuid.UUID, user_ids: list[uuid.UUID]) -> None:
    """Start the second worker and beat's sweep (as often as beat would run it with this
    short lease) until the stalled job restarts there; the job must then succeed with every
    user processed exactly once."""
    if TEST_REDIS_URL:
        second.start_worker()
        deadline = time.monotonic() + 30
        with jobs_app.app_context():
            while not job_tasks.reclaim_expired():
                assert time.monotonic() < deadline, "the stalled job was never restarted"
                time.sleep(0.2)
    else:
        second.start_runner("sweep")
    state = wait_for_job(app, job_id, timeout=120)
    assert (state["status"], state["done"], state["failed"]) == ("succeeded", 3000, 0)
    assert state["items"] == {"done": 3000}
    _assert_each_user_processed_once(app, job_id, user_ids)


def test_a_worker_killed_mid_chunk_loses_nothing_and_the_job_finishes_exactly_once(
    app, make_app, make_account, job_processes
):
    """The default: each chunk is claimed and processed in one transaction. A worker killed
    while a chunk's transaction is open (on PostgreSQL the chunk delay waits inside it)
    leaves those items queued, with no trace of the attempt; the next worker takes them."""
    account = make_account()
    user_ids = add_members(app, account.id, 3000, prefix="cut")
    jobs_app = make_app(JOBS_QUEUE=job_processes.queue, JOBS_PARALLEL_RUNS="1", **FAST)
    job_id = _create_job(jobs_app, account.id, 'userName sw "cut-"')

    first = job_processes("first", SLOW)
    _run_job_on(first, jobs_app, job_id)
    wait_for_job(app, job_id, timeout=60, until=lambda s: s["done"] >= 600)
    first.kill()
    killed_at = job_state(app, job_id)
    assert killed_at["status"] == "running"
    # Nothing is ever seen claimed: a chunk's claim commits with its results.
    assert set(killed_at["items"]) <= {"queued", "done"}
    assert killed_at["done"] < 3000

    second = job_processes("second", FAST)
    _finish_on(second, jobs_app, app, job_id, user_ids)
    with app.app_context():
        items = list(db.session.scalars(select(JobItem).where(JobItem.job_id == job_id)))
    # The killed chunk's attempt left nothing behind: every item was taken once.
    assert {item.attempt for item in items} == {1}
    by_worker = {item.claimed_by for item in items}
    assert by_worker == {first.worker_name, second.worker_name}
    done_by_first = sum(item.claimed_by == first.worker_name for item in items)
    assert done_by_first == killed_at["done"]


def test_a_worker_killed_holding_a_leased_claim_is_replaced_exactly_once(
    app, make_app, make_account, job_processes
):
    """JOBS_LEASED_CLAIMS: the claim commits first, with a lease; a killed worker's claim is
    taken again once the lease has run out."""
    account = make_account()
    user_ids = add_members(app, account.id, 3000, prefix="kill")
    # The app that sends the job's tasks to this test's queue (the last app made is the
    # Celery default the shared tasks use). One run only: its worker dies with it, and only
    # beat's sweep can bring the job back.
    jobs_app = make_app(JOBS_QUEUE=job_processes.queue, JOBS_PARALLEL_RUNS="1", **FAST)
    job_id = _create_job(jobs_app, account.id, 'userName sw "kill-"')

    first = job_processes("first", {**SLOW, **LEASED})
    _run_job_on(first, jobs_app, job_id)
    wait_for_job(
        app,
        job_id,
        timeout=60,
        until=lambda s: s["done"] >= 600 and s["items"].get("claimed", 0) > 0,
    )
    first.kill()
    # What the dead worker held: claimed, never to be finished by it.
    held = _claimed_items(app, job_id)
    assert held, "the worker was killed between two chunks; nothing was held"
    assert set(held.values()) == {first.worker_name}
    assert job_state(app, job_id)["status"] == "running"

    second = job_processes("second", {**FAST, **LEASED})
    _finish_on(second, jobs_app, app, job_id, user_ids)
    with app.app_context():
        items = {
            item.id: item
            for item in db.session.scalars(select(JobItem).where(JobItem.job_id == job_id))
        }
        # The dead worker's chunk was reclaimed (a second attempt) and done by the other one.
        for item_id in held:
            assert items[item_id].attempt == 2
            assert items[item_id].claimed_by == second.worker_name
        assert {item.claimed_by for item in items.values()} == {
            first.worker_name,
            second.worker_name,
        }
        assert all(item.attempt == 1 for item_id, item in items.items() if item_id not in held)


def test_cancel_stops_a_running_job(app, make_app, make_account, job_processes):
    account = make_account()
    add_members(app, account.id, 3000, prefix="cancel")
    jobs_app = make_app(JOBS_QUEUE=job_processes.queue, **SLOW)
    job_id = _create_job(jobs_app, account.id, 'userName sw "cancel-"')
    worker = job_processes("worker", SLOW)
    _run_job_on(worker, jobs_app, job_id)
    wait_for_job(app, job_id, timeout=60, until=lambda s: s["done"] >= 400)

    with app.app_context():
        cancelled = dp.cancel_job(dp.get_job(job_id))
        db.session.commit()

    # The worker stops: its run returns (the process exits without a broker).
    if not TEST_REDIS_URL:
        assert worker.wait(timeout=30) == 0, worker.log()
    state = wait_for_job(app, job_id, timeout=30, until=lambda s: not s["items"].get("claimed"))
    time.sleep(1.0)  # longer than a chunk's delay: nothing moves any more
    assert job_state(app, job_id) == state
    assert state["status"] == "cancelled"
    assert state["cancelled"] == cancelled > 0
    assert state["done"] + state["cancelled"] == 3000
    assert state["items"] == {"done": state["done"], "cancelled": cancelled}
    assert len(item_audit_counts(app, job_id)) == state["done"]


@pytest.fixture
def failing_users(app) -> Iterator[None]:
    """A trigger that makes the database refuse to update users whose email starts with
    ``fail-``: a real failure inside a chunk's transaction (also in a worker process)."""
    with app.app_context():
        dialect = db.engine.dialect.name
        statements = {
            "postgresql": [
                """CREATE FUNCTION keyward_test_refuse() RETURNS trigger AS $$
                BEGIN
                    IF NEW.email LIKE 'fail-%' THEN
                        RAISE EXCEPTION 'refused by the test trigger';
                    END IF;
                    RETURN NEW;
                END $$ LANGUAGE plpgsql""",
                """CREATE TRIGGER keyward_test_refuse BEFORE UPDATE ON users
                FOR EACH ROW EXECUTE FUNCTION keyward_test_refuse()""",
            ],
            "sqlite": [
                """CREATE TRIGGER keyward_test_refuse BEFORE UPDATE ON users
                WHEN NEW.email LIKE 'fail-%'
                BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"""
            ],
        }[dialect]
        drop = {
            "postgresql": [
                "DROP TRIGGER IF EXISTS keyward_test_refuse ON users",
                "DROP FUNCTION IF EXISTS keyward_test_refuse()",
            ],
            "sqlite": ["DROP TRIGGER IF EXISTS keyward_test_refuse"],
        }[dialect]
        with db.engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))

    def _drop() -> None:
        with app.app_context(), db.engine.begin() as conn:
            for statement in drop:
                conn.execute(text(statement))

    try:
        yield _drop
    finally:
        _drop()


def test_failed_items_are_recorded_with_their_reason_and_retried(app, make_account, failing_users):
    account = make_account()
    good = add_members(app, account.id, 2500, prefix="fine")
    bad = add_members(app, account.id, 3, prefix="fail")
    job_id = _create_job(app, account.id, 'userName co "-"')

    with app.app_context():
        job_tasks.start(job_id)
    state = wait_for_job(app, job_id, timeout=120)

    # The chunks with a refused user were split until the bad users failed alone.
    assert (state["status"], state["done"], state["failed"]) == ("failed", 2500, 3)
    with app.app_context():
        failed = db.session.scalars(
            select(JobItem).where(JobItem.job_id == job_id, JobItem.state == "failed")
        ).all()
        assert {item.user_id for item in failed} == set(bad)
        assert all("refused by the test trigger" in item.outcome for item in failed)
        assert all(db.session.get(User, user_id).active for user_id in bad)
    _assert_each_user_processed_once(app, job_id, good)

    failing_users()  # the database accepts them again
    with app.app_context():
        assert dp.retry_job(dp.get_job(job_id)) == 3
        db.session.commit()
        job_tasks.start(job_id)
    state = wait_for_job(app, job_id, timeout=120)

    assert (state["status"], state["done"], state["failed"]) == ("succeeded", 2503, 0)
    assert state["items"] == {"done": 2503}
    _assert_each_user_processed_once(app, job_id, good + bad)
    with app.app_context():
        attempts = db.session.scalars(select(JobItem.attempt).where(JobItem.user_id.in_(bad)))
        assert set(attempts) == {2}


def test_the_run_task_loads_the_job_by_id(app, celery_app, make_account):
    account = make_account()
    add_members(app, account.id, 5, prefix="task")
    job_id = _create_job(app, account.id, 'userName sw "task-"')

    result = job_tasks.run.delay(str(job_id)).get(timeout=RESULT_TIMEOUT)

    assert result["status"] == "succeeded"
    assert result["processed"] == 5
    # Safe to run again: a finished job is not runnable.
    again = job_tasks.run.delay(str(job_id)).get(timeout=RESULT_TIMEOUT)
    assert again["status"] == "not runnable"
    missing = job_tasks.run.delay(str(uuid.uuid4())).get(timeout=RESULT_TIMEOUT)
    assert missing["status"] == "not runnable"


def test_beat_sweep_restarts_a_job_whose_worker_died(app, celery_app, make_account):
    account = make_account()
    add_members(app, account.id, 5, prefix="sweep")
    job_id = _create_job(app, account.id, 'userName sw "sweep-"')
    lease = app.config["JOBS_CLAIM_LEASE_SECONDS"]
    with app.app_context():
        # Its worker took a chunk and died long ago (and its message is gone).
        long_ago = utcnow() - timedelta(seconds=3 * lease)
        dp.claim_chunk(job_id, "dead-worker/1", size=2, lease_seconds=lease, now=long_ago)
        db.session.execute(
            update(Job).where(Job.id == job_id).values(status="running", progressed_at=long_ago)
        )
        db.session.commit()

    assert job_tasks.reclaim_expired.delay().get(timeout=RESULT_TIMEOUT) == 1

    state = wait_for_job(app, job_id, timeout=60)
    assert (state["status"], state["done"]) == ("succeeded", 5)
    with app.app_context():
        attempts = sorted(db.session.scalars(select(JobItem.attempt)))
        assert attempts == [1, 1, 1, 2, 2]
    # Nothing left to restart.
    assert job_tasks.reclaim_expired.delay().get(timeout=RESULT_TIMEOUT) == 0


def test_beat_schedules_the_sweep_and_the_maintenance_tasks(app, celery_app):
    tasks = {entry["task"] for entry in celery_app.conf.beat_schedule.values()}

    assert {
        "jobs.reclaim_expired",
        "maintenance.purge_expired_sessions",
        "maintenance.purge_old_audit_events",
    } <= tasks
    celery_app.loader.import_default_modules()
    assert {"jobs.run", "jobs.reclaim_expired"} <= set(celery_app.tasks)
