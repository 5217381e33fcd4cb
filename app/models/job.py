"""Job (a bulk deprovisioning run of one account) and JobItem (one user in it, with its outcome)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlalchemy import BigInteger
from sqlalchemy import ForeignKey
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import UniqueConstraint
from sqlalchemy import Uuid
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from app.models.base import Base
from app.models.base import UTCDateTime
from app.models.base import utcnow


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    # Finished, but some items failed (they can be retried).
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class ItemState(enum.StrEnum):
    QUEUED = "queued"
    # Taken by a worker (claimed_by, claimed_at): a lease that another worker may take over
    # once it expires (services.deprovisioning.claim_chunk).
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"
    # Nothing to do, e.g. the user left the account between planning and processing.
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class Job(Base):
    """A bulk job of one account. The counters are updated in the same transaction as the
    items they count (one per chunk), so they always agree with the JobItem rows."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_account_id_created_at", "account_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32), default="deprovision")
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)
    # How the users were chosen: {"filter": ...}, {"not_updated_since": ...} or
    # {"csv": {"column": ..., "rows": ...}} (the CSV values themselves are not kept).
    criteria: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    cancelled: Mapped[int] = mapped_column(Integer, default=0)
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    # Who started it as the audit trail names them (an email, or "cli").
    created_by_label: Mapped[str | None] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Last time a chunk finished: a running job with work left and no progress for a lease
    # is picked up again by jobs.reclaim_expired (its worker was killed).
    progressed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def processed(self) -> int:
        return self.done + self.failed + self.skipped + self.cancelled

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status} {self.processed}/{self.total}>"


class JobItem(Base):
    """One user of a job. The row is the truth about that user's outcome: its state moves
    queued -> claimed -> done|failed|skipped in the chunk's own transaction."""

    __tablename__ = "job_items"
    __table_args__ = (
        # Claiming takes the next queued (or expired) items of one job in id order: with id in
        # the index that is a short index scan whatever the table's statistics say.
        Index("ix_job_items_job_id_state", "job_id", "state", "id"),
        # One item per user and job: a user is never deprovisioned twice by one job.
        UniqueConstraint("job_id", "user_id", name="uq_job_items_job_user"),
    )

    # BigInteger on PostgreSQL; SQLite only autoincrements a plain INTEGER primary key.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    # No foreign key: like the audit trail, the record outlives the user it names.
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    # The user's email when the job was planned (shown on the job page).
    label: Mapped[str | None] = mapped_column(String(254))
    state: Mapped[str] = mapped_column(String(16), default=ItemState.QUEUED.value)
    # What happened ("deactivated", "removed from the account", "not a member ...") or why
    # the item failed.
    outcome: Mapped[str | None] = mapped_column(String(500))
    # Claims so far (a reclaimed or retried item has more than one).
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    # Random per claim: a worker whose lease was taken over finds its token gone and does
    # nothing, so a chunk is processed once.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
