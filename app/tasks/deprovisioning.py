"""Bulk deprovisioning jobs: run a job chunk by chunk (any number of workers may run one job
at once), and beat's sweep that restarts the jobs whose worker died."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any

from celery import current_task
from celery import shared_task
from flask import current_app
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import SQLAlchemyError

from app.extensions import db
from app.models.base import utcnow
from app.services import deprovisioning
from app.tasks.locking import locked_task

log = logging.getLogger(__name__)

# While other workers hold a job's last items, look again this often (seconds).
WAIT_POLL_SECONDS = 0.5


def _worker_name() -> str:
    request = getattr(current_task, "request", None)
    hostname = getattr(request, "hostname", None) or socket.gethostname()
    return f"{hostname}/{os.getpid()}"


def _settings() -> tuple[int, float, float]:
    config = current_app.config
    return (
        max(1, int(config["JOBS_CHUNK_SIZE"])),
        float(config["JOBS_CLAIM_LEASE_SECONDS"]),
        float(config["JOBS_CHUNK_DELAY_MS"]) / 1000.0,
    )


def _claim_and_process(key: uuid.UUID, worker: str, size: int, delay: float) -> int | None:
    """One chunk claimed and processed in one transaction; the items processed, or None when
    no queued item is left or the chunk failed (the caller then takes the leased path, which
    splits a failing chunk until its failing users fail alone)."""
    # Tests and demos (JOBS_CHUNK_DELAY_MS): on PostgreSQL the chunk waits uncommitted, so a
    # worker can be killed in the middle of one (its items are then still queued for the
    # next worker). SQLite waits after the commit: its one write lock, held through the
    # pause, would shut out every other writer (a cancel among them).
    pause_inside = db.session.get_bind().dialect.name == "postgresql"
    try:
        result = deprovisioning.claim_and_process(key, worker, size=size)
        if result is not None and delay and pause_inside:
            time.sleep(delay)
        db.session.commit()
    except SQLAlchemyError as exc:
        db.session.rollback()
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            raise
        log.warning("job %s: a chunk failed (%s); splitting it", key, _reason(exc))
        return None
    if result is not None and delay and not pause_inside:
        time.sleep(delay)
    return result.processed if result is not None else None


@shared_task(name="jobs.run")
def run(job_id: str) -> dict[str, Any]:
    """Work on a job until nothing is left: claim a chunk and process it in one transaction
    (services.deprovisioning.claim_and_process; with JOBS_LEASED_CLAIMS the claim is committed
    first, with a lease), repeat; then close the job. Returns a summary.

    Several runs of one job (on one or many workers) share the work: each claims different
    items. When only items held by other workers are left, it waits for them, or for their
    lease to expire (their worker died) and claims them. A chunk whose transaction fails is
    split in halves and tried again, down to single items, which are then recorded as
    failed with the database's reason. Safe to retry and to run twice: the item states
    decide what is left."""
    key = uuid.UUID(job_id)
    size, lease, delay = _settings()
    worker = _worker_name()
    if not deprovisioning.mark_running(key):
        db.session.commit()
        return {"job_id": job_id, "chunks": 0, "status": "not runnable"}
    db.session.commit()
    chunks = processed = 0
    leased = current_app.config["JOBS_LEASED_CLAIMS"]
    while True:
        if not leased:
            done = _claim_and_process(key, worker, size, delay)
            if done is not None:
                processed += done
                chunks += 1
                continue
        # Leased claims: the configured way, a failed chunk to split, and claims whose lease
        # expired (a killed worker's, with JOBS_LEASED_CLAIMS).
        claim = deprovisioning.claim_chunk(key, worker, size=size, lease_seconds=lease)
        db.session.commit()
        if claim is None:
            remaining = deprovisioning.finish_if_complete(key, lease_seconds=lease)
            db.session.commit()
            if remaining.finished:
                return {
                    "job_id": job_id,
                    "chunks": chunks,
                    "processed": processed,
                    "status": remaining.status,
                }
            time.sleep(_wait_seconds(remaining))
            continue
        if delay:
            # Tests and demos only (JOBS_CHUNK_DELAY_MS): a claimed chunk waits, so progress
            # can be watched and a worker can be killed holding a claim.
            time.sleep(delay)
        processed += _process(claim, claim.item_ids)
        chunks += 1


def _wait_seconds(remaining: deprovisioning.Remaining) -> float:
    if remaining.next_expiry is None:
        return WAIT_POLL_SECONDS
    until_expiry = (remaining.next_expiry - utcnow()).total_seconds()
    return min(WAIT_POLL_SECONDS, max(0.05, until_expiry))


def _process(claim: deprovisioning.Claim, item_ids: list[int]) -> int:
    """Process ``item_ids`` of the claim in one transaction; on a database error, roll back
    and try each half on its own, so one bad user fails alone. Returns items processed."""
    part = deprovisioning.Claim(claim.job_id, claim.worker, claim.token, item_ids)
    try:
        result = deprovisioning.process_chunk(part)
        db.session.commit()
        return result.processed
    except SQLAlchemyError as exc:
        db.session.rollback()
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            raise  # the database went away: the claim's lease brings the chunk back later
        if len(item_ids) == 1:
            reason = _reason(exc)
            log.warning("job %s: item %s failed: %s", claim.job_id, item_ids[0], reason)
            failed = deprovisioning.fail_items(part, item_ids, reason)
            db.session.commit()
            return failed
    middle = len(item_ids) // 2
    return _process(claim, item_ids[:middle]) + _process(claim, item_ids[middle:])


def _reason(exc: SQLAlchemyError) -> str:
    """The database's own message (first line), without the statement and parameters."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines() or [""]
    return f"{type(original).__name__}: {lines[0]}"[:500]


def start(job_id: uuid.UUID | str) -> None:
    """Queue runs of a committed job: JOBS_PARALLEL_RUNS of them, for as many workers to
    share it. Without Redis the one run happens now, in this process (still chunk by chunk)."""
    celery_app = current_app.extensions["celery"]
    copies = 1 if celery_app.conf.task_always_eager else current_app.config["JOBS_PARALLEL_RUNS"]
    for _ in range(max(1, int(copies))):
        run.delay(str(job_id))


@shared_task(name="jobs.reclaim_expired")
@locked_task(ttl=60)
def reclaim_expired() -> int | None:
    """Beat's sweep: queue a run for every unfinished job that made no progress for a claim
    lease (its worker was killed, or its first message was lost); the run reclaims the dead
    worker's expired claims. Returns how many jobs were queued (None when another sweep holds
    the lock). Safe to retry: a surplus run finds nothing to claim."""
    _size, lease, _delay = _settings()
    job_ids = deprovisioning.stalled_jobs(lease_seconds=lease)
    db.session.commit()
    for job_id in job_ids:
        log.info("job %s made no progress for %.0f s: queued again", job_id, lease)
        run.delay(str(job_id))
    return len(job_ids)
