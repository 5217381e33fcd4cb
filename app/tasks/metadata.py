"""Provider metadata refresh: beat's sweep of the due providers, and one provider's refresh
under a per-provider lock, so two beats or workers never fetch the same IdP at once."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC
from datetime import datetime

from celery import Task
from celery import shared_task
from flask import current_app

from app.cache import get_cache
from app.extensions import db
from app.services import metadata
from app.tasks.locking import locked_task
from app.tasks.locking import task_lock

log = logging.getLogger(__name__)

# A forced refresh that finds another one running waits this long, then looks again.
LOCKED_RETRY_SECONDS = 2
LOCKED_MAX_RETRIES = 10


def lock_name(provider_id: uuid.UUID | str) -> str:
    """The per-provider lock every refresh takes (workers and `flask providers refresh`)."""
    return f"metadata-refresh:{provider_id}"


def lock_ttl() -> float:
    # Two fetches of at most OUTBOUND_TIMEOUT each, with room to spare: a worker killed
    # mid-refresh blocks the provider no longer than this.
    return 4.0 * float(current_app.config["OUTBOUND_TIMEOUT"]) + 30.0


def _queued_ttl() -> float:
    # A sweep's "already queued" marker, and the queued message's expiry: if no worker took
    # it by then, a later sweep queues the provider again.
    return max(300.0, 5.0 * float(current_app.config["METADATA_REFRESH_BEAT_SECONDS"]))


def _queued_key(provider_id: str) -> str:
    return f"metadata-refresh-queued:{provider_id}"


@shared_task(
    name="metadata.refresh_provider",
    bind=True,
    max_retries=LOCKED_MAX_RETRIES,
    ignore_result=False,
)
def refresh_provider(self: Task, provider_id: str, requested_at: float | None = None) -> str:
    """Refresh one provider's metadata if it still needs it (services.metadata
    ``refresh_if_needed``) and commit; returns its status string, or ``locked``.

    ``requested_at`` (epoch seconds) marks a refresh asked for after a create or edit: if
    another worker holds the provider's lock, it is retried a little later (and then skipped
    if that other refresh started after the request). Without it (the beat sweep), a locked
    provider is simply left to the worker that holds it. Safe to retry: a repeated run finds
    the provider fresh or not due."""
    get_cache().delete(_queued_key(provider_id))
    with task_lock(lock_name(provider_id), lock_ttl()) as acquired:
        if acquired:
            status = metadata.refresh_if_needed(
                uuid.UUID(provider_id),
                requested_at=(
                    datetime.fromtimestamp(requested_at, UTC) if requested_at is not None else None
                ),
            )
            db.session.commit()
            return status
    if requested_at is None or self.request.is_eager or self.request.retries >= self.max_retries:
        return "locked"
    raise self.retry(countdown=LOCKED_RETRY_SECONDS)


@shared_task(name="metadata.refresh_due_providers")
@locked_task(ttl=60)
def refresh_due_providers() -> int:
    """Beat's sweep: queue a refresh of every enabled provider whose refresh is due; returns
    how many were queued. A provider already queued (and not yet taken by a worker) is not
    queued twice. Runs once at a time across every beat and worker (a short Redis lock)."""
    due = metadata.due_provider_ids()
    # End the read before queueing: without Redis the refreshes run eagerly, right here, and
    # write through their own sessions.
    db.session.commit()
    cache = get_cache()
    ttl = _queued_ttl()
    queued = 0
    for provider_id in map(str, due):
        if cache.add(_queued_key(provider_id), 1, ttl):
            refresh_provider.apply_async((provider_id,), expires=ttl)
            queued += 1
    return queued


def enqueue_refresh(*provider_ids: uuid.UUID | str) -> None:
    """Refresh these providers now, after they were created or edited (call it after the
    commit). Queued for the workers with REDIS_URL; without it the refresh runs here, before
    this returns. Never raises: an unreachable IdP or broker is logged, and beat's sweep
    refreshes the provider later anyway."""
    requested_at = time.time()
    for provider_id in provider_ids:
        try:
            refresh_provider.delay(str(provider_id), requested_at=requested_at)
        except Exception:  # the page or command that saved the provider must still succeed
            log.exception("could not refresh the metadata of provider %s", provider_id)
