"""Bulk deprovisioning jobs: plan (preview) a job, create it with its items, claim and process
chunks of items with set-based SQL, cancel, retry, and report progress.

The JobItem rows are the truth (STYLE "Tasks"). An item moves queued -> done, failed or
skipped. By default (``claim_and_process``) a chunk is claimed and processed in one
transaction: if it never commits, its items are simply still queued. With leased claims
(JOBS_LEASED_CLAIMS, and the fallback that splits a failing chunk) an item moves queued ->
claimed -> done, failed or skipped, and a chunk goes through two transactions:

1. ``claim_chunk``: one UPDATE marks up to N queued items (or items whose claim lease has
   expired: their worker died) as claimed by this worker, with a fresh random claim token.
   PostgreSQL takes the rows with ``FOR UPDATE SKIP LOCKED``, so concurrent workers take
   different items; SQLite runs the UPDATE under its single write lock.
2. ``process_chunk``: one transaction marks the items still claimed with that token done or
   skipped (one UPDATE, which also locks them), writes an audit event per user (INSERT ...
   SELECT), deactivates users, ends sessions, removes memberships, group memberships and
   external logins (one UPDATE or DELETE per table for the whole chunk) and adds the items to
   the job's counters. A worker whose lease was taken over finds its token gone and does
   nothing, so every item is processed exactly once, and a chunk entirely or not at all.

The semantics per user are those of ``users.deprovision_user`` (DESIGN "Accounts, users and
SCIM"): a user the account manages is deactivated, every session ends, every membership,
group membership and external login goes; for a member managed elsewhere (or by nobody) only
what the account controls goes: its membership, its groups and the links to its providers.

Services add and flush; the task, view or CLI command commits.
"""

from __future__ import annotations

import csv
import io
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta
from typing import Any

from sqlalchemy import JSON
from sqlalchemy import Select
from sqlalchemy import String
from sqlalchemy import Uuid
from sqlalchemy import and_
from sqlalchemy import any_
from sqlalchemy import bindparam
from sqlalchemy import case
from sqlalchemy import cast
from sqlalchemy import delete
from sqlalchemy import exists
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import literal
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy import update
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import ColumnElement

from app.extensions import db
from app.models import Account
from app.models import AuditEvent
from app.models import ExternalLogin
from app.models import Group
from app.models import GroupMember
from app.models import ItemState
from app.models import Job
from app.models import JobItem
from app.models import JobStatus
from app.models import Membership
from app.models import Session
from app.models import SsoProvider
from app.models import User
from app.models.base import UTCDateTime
from app.models.base import utcnow
from app.services import audit
from app.services import scim_filter as sf
from app.services import scim_schema as schema
from app.services.errors import NotFound
from app.services.errors import ValidationError
from app.services.errors import uuid_or_not_found

# The User attribute map SCIM filters are translated with, and SCIM's case-insensitive
# userName rewrite: a job's filter selects exactly the users GET /Users?filter= would list.
from app.services.scim import _lower_user_name
from app.services.scim import _user_attributes
from app.services.users import normalise_email

ITEM_ACTION = "job.item.deprovisioned"
SAMPLE_SIZE = 10
# Values per IN (...) when CSV rows are matched to users (well under SQLite's 32,766
# parameters, and a size PostgreSQL plans quickly).
CSV_BATCH = 1000
CSV_COLUMNS = ("email", "external_id")
# Errors a CSV report lists before "... and N more".
CSV_ERRORS_SHOWN = 5
MAX_FILTER_LENGTH = 4096
MAX_EXTERNAL_ID_LENGTH = 255
# Reasons recorded on sessions ended by a job (Session.revoked_reason).
SESSION_REASON = "deprovisioned"
OUTCOME_MANAGED = "deactivated; sessions ended; memberships, groups and logins removed"
OUTCOME_MEMBER = "removed from this account (membership, groups, logins to its providers)"
OUTCOME_NOT_MEMBER = "skipped: not a member of this account any more"
OUTCOME_CANCELLED = "cancelled before it was processed"
# Claims an item may get before it is given up as failed: an item whose worker dies every
# time (say, out of memory) must not be reclaimed for ever.
MAX_ATTEMPTS = 5

_items = JobItem.__table__
_jobs = Job.__table__
_users = User.__table__
_memberships = Membership.__table__
_sessions = Session.__table__
_links = ExternalLogin.__table__
_group_members = GroupMember.__table__
_audit = AuditEvent.__table__


# --- criteria ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Criteria:
    """How a job chooses users among the account's members: exactly one of a SCIM filter,
    "not updated since" a moment (SCIM's meta.lastModified, User.updated_at), or the values
    of a CSV column (normalised emails, or externalIds)."""

    kind: str  # "filter", "not_updated_since" or "csv"
    filter: str | None = None
    since: datetime | None = None
    csv_column: str | None = None
    csv_values: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The JSON kept on the job and shown to admins (never the CSV's values)."""
        if self.kind == "filter":
            return {"filter": self.filter}
        if self.kind == "not_updated_since":
            assert self.since is not None
            return {"not_updated_since": self.since.isoformat()}
        return {"csv": {"column": self.csv_column, "rows": len(self.csv_values)}}

    def to_payload(self) -> dict[str, Any]:
        """Everything needed to plan the job again (the preview's confirm form carries it)."""
        return {
            "kind": self.kind,
            "filter": self.filter,
            "since": self.since.isoformat() if self.since else None,
            "csv_column": self.csv_column,
            "csv_values": list(self.csv_values),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Criteria:
        kind = payload.get("kind")
        if kind == "filter":
            return filter_criteria(payload.get("filter") or "")
        if kind == "not_updated_since":
            return not_updated_since_criteria(payload.get("since") or "")
        if kind == "csv" and payload.get("csv_column") in CSV_COLUMNS:
            return Criteria(
                "csv",
                csv_column=payload["csv_column"],
                csv_values=tuple(str(v) for v in payload.get("csv_values") or ()),
            )
        raise ValidationError("The job's criteria are not valid; preview the job again.")


def filter_criteria(filter_text: str) -> Criteria:
    """Criteria from a SCIM filter (RFC 7644 §3.4.2.2), e.g. ``active eq false`` or
    ``emails.value ew "@old.example"``. Raises ValidationError for a malformed filter (an
    unknown attribute is found when the filter is translated: preview_job, create_job)."""
    filter_text = (filter_text or "").strip()
    if not filter_text:
        raise ValidationError("Filter must not be empty.", "filter")
    try:
        sf.parse_filter(filter_text, max_length=MAX_FILTER_LENGTH)
    except sf.FilterError as exc:
        raise ValidationError(f"Filter is not valid: {exc}", "filter") from None
    return Criteria("filter", filter=filter_text)


def not_updated_since_criteria(value: str | date | datetime) -> Criteria:
    """Criteria "not updated since": users whose last change (SCIM meta.lastModified) is
    before ``value``. A date means its first instant in UTC; a string is YYYY-MM-DD or an
    ISO 8601 date-time with an offset. Raises ValidationError."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        moment = datetime.combine(value, time.min, UTC)
    else:
        moment = _parse_moment(str(value or "").strip())
    return Criteria("not_updated_since", since=moment.astimezone(UTC))


def _parse_moment(raw: str) -> datetime:
    if not raw:
        raise ValidationError("Date must not be empty.", "not_updated_since")
    try:
        if len(raw) == 10:
            return datetime.combine(date.fromisoformat(raw), time.min, UTC)
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"Date must be written YYYY-MM-DD (or an ISO 8601 date-time), not {raw[:40]!r}.",
            "not_updated_since",
        ) from None
    if moment.tzinfo is None:
        raise ValidationError(
            "A date-time needs an offset, e.g. 2025-01-31T00:00:00Z.", "not_updated_since"
        )
    return moment


def csv_criteria(data: bytes | str, *, max_rows: int) -> Criteria:
    """Criteria from a CSV file whose header row names an ``email`` or an ``external_id``
    column (other columns are ignored). Emails are normalised like every stored email;
    duplicates count once. Raises ValidationError naming the first bad lines: a missing or
    ambiguous header, a malformed email, an empty or overlong value, too many rows, a file
    that is not UTF-8 text. Nothing is matched to users here."""
    if isinstance(data, bytes):
        try:
            content = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValidationError("The CSV file must be UTF-8 text.", "csv") from None
    else:
        content = data.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    except csv.Error as exc:
        raise ValidationError(f"The CSV file cannot be read: {exc}.", "csv") from None
    if header is None:
        raise ValidationError(
            "The CSV file is empty: it needs a header row (email or external_id).", "csv"
        )
    names = [cell.strip().lower() for cell in header]
    found = [name for name in CSV_COLUMNS if name in names]
    if len(found) != 1:
        shown = ", ".join(cell.strip()[:40] for cell in header[:5]) or "(nothing)"
        problem = "names both" if len(found) > 1 else "has neither"
        raise ValidationError(
            f"The CSV header row {problem} email and external_id (it reads: {shown}); it must "
            "name exactly one of them.",
            "csv",
        )
    column = found[0]
    index = names.index(column)
    values: dict[str, None] = {}
    errors: list[str] = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank lines are harmless
            line = reader.line_num
            raw = row[index].strip() if index < len(row) else ""
            value, problem = _csv_value(column, raw)
            if problem:
                errors.append(f"line {line}: {problem}")
                continue
            values[value] = None
            if len(values) > max_rows:
                raise ValidationError(
                    f"The CSV file has more than {max_rows} rows; split it into several jobs.",
                    "csv",
                )
    except csv.Error as exc:
        raise ValidationError(f"The CSV file cannot be read: {exc}.", "csv") from None
    if errors:
        shown = "; ".join(errors[:CSV_ERRORS_SHOWN])
        hidden = len(errors) - CSV_ERRORS_SHOWN
        more = f" (and {hidden} more)" if hidden > 0 else ""
        raise ValidationError(
            f"The CSV file has {len(errors)} bad {column} value"
            f"{'s' if len(errors) != 1 else ''}: {shown}{more}.",
            "csv",
        )
    if not values:
        raise ValidationError(f"The CSV file has a header but no {column} values.", "csv")
    return Criteria("csv", csv_column=column, csv_values=tuple(values))


def _csv_value(column: str, raw: str) -> tuple[str, str | None]:
    """The stored form of one CSV value, or a problem to report (with the value, bounded:
    it is text from an uploaded file)."""
    shown = repr(raw[:60])
    if not raw:
        return "", f"empty {column}"
    if column == "email":
        try:
            return normalise_email(raw), None
        except ValidationError:
            return "", f"{shown} is not a valid email address"
    if len(raw) > MAX_EXTERNAL_ID_LENGTH:
        return "", f"external_id longer than {MAX_EXTERNAL_ID_LENGTH} characters"
    return raw, None


# --- planning ------------------------------------------------------------------------------
def _member_query(account_id: int, *columns: Any) -> Select:
    """``columns`` of the users who are members of the account (one row per user)."""
    return (
        select(*columns)
        .select_from(User)
        .join(
            Membership,
            and_(Membership.user_id == User.id, Membership.account_id == account_id),
        )
    )


def _clauses(account_id: int, criteria: Criteria) -> list[ColumnElement[bool]]:
    """One WHERE clause per query the criteria need: one, or one per batch of CSV values."""
    if criteria.kind == "filter":
        try:
            parsed = _lower_user_name(sf.parse_filter(criteria.filter or ""), schema.USER_TYPE)
            attributes = _user_attributes(literal(account_id))
            return [sf.to_sql(parsed, attributes, default_urn=schema.USER_TYPE.schema.id)]
        except sf.FilterError as exc:
            raise ValidationError(f"Filter is not valid: {exc}", "filter") from None
    if criteria.kind == "not_updated_since":
        return [User.updated_at < criteria.since]
    column = User.email if criteria.csv_column == "email" else User.external_id
    values = criteria.csv_values
    return [column.in_(values[i : i + CSV_BATCH]) for i in range(0, len(values), CSV_BATCH)]


def _selections(account_id: int, criteria: Criteria, exclude: uuid.UUID | None, *columns):
    for clause in _clauses(account_id, criteria):
        query = _member_query(account_id, *columns).where(clause)
        if exclude is not None:
            query = query.where(User.id != exclude)
        yield query


@dataclass
class Preview:
    """What a job would do: how many members it selects, a sample of them, and (CSV) how many
    values matched no member of the account."""

    account_id: int
    criteria: Criteria
    count: int
    sample: list[str]
    unmatched: int = 0
    # The admin previewing is among the selected users: a job never deprovisions its author.
    excludes_actor: bool = False

    def serialise(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "criteria": self.criteria.describe(),
            "count": self.count,
            "sample": self.sample,
            "unmatched": self.unmatched,
            "excludes_actor": self.excludes_actor,
            "dry_run": True,
        }


def preview_job(account: Account, criteria: Criteria, *, actor: User | None = None) -> Preview:
    """Count and sample the members ``criteria`` select, changing nothing (the preview, and
    ``flask jobs deprovision --dry-run``). Raises ValidationError for a filter that names an
    unknown attribute or compares a value of the wrong type."""
    exclude = actor.id if actor is not None else None
    count = 0
    matched_values = 0
    sample: list[str] = []
    key = User.email if criteria.csv_column != "external_id" else User.external_id
    for query in _selections(account.id, criteria, exclude, User.id):
        count += db.session.scalar(select(func.count()).select_from(query.subquery())) or 0
        if criteria.kind == "csv":
            distinct = query.with_only_columns(func.count(func.distinct(key)))
            matched_values += db.session.scalar(distinct) or 0
    for query in _selections(account.id, criteria, exclude, User.email):
        if len(sample) >= SAMPLE_SIZE:
            break
        sample += db.session.scalars(query.order_by(User.email).limit(SAMPLE_SIZE - len(sample)))
    excludes_actor = False
    if actor is not None:
        for query in _selections(account.id, criteria, None, User.id):
            if db.session.scalar(query.where(User.id == actor.id).limit(1)) is not None:
                excludes_actor = True
                break
    unmatched = len(criteria.csv_values) - matched_values if criteria.kind == "csv" else 0
    return Preview(account.id, criteria, count, sample, unmatched, excludes_actor)


def create_job(
    account: Account,
    criteria: Criteria,
    *,
    actor: User | None = None,
    actor_label: str | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
) -> Job:
    """Create a queued job and one item per selected member, with INSERT ... SELECT (no row
    goes through Python). The caller commits, then starts it (tasks.deprovisioning.start).
    Never selects ``actor``. Raises ValidationError when no member matches."""
    now = utcnow()
    job = Job(
        id=uuid.uuid4(),
        account_id=account.id,
        kind="deprovision",
        status=JobStatus.QUEUED.value,
        criteria=criteria.describe(),
        created_by_id=actor.id if actor is not None else None,
        created_by_label=actor.email if actor is not None else actor_label,
        created_at=now,
    )
    db.session.add(job)
    db.session.flush()
    exclude = actor.id if actor is not None else None
    columns = ("job_id", "user_id", "label", "state", "attempt")
    for query in _selections(
        account.id,
        criteria,
        exclude,
        literal(job.id, Uuid),
        User.id,
        User.email,
        literal(ItemState.QUEUED.value),
        literal(0),
    ):
        db.session.execute(insert(_items).from_select(columns, query.order_by(User.email)))
    # Counted, not summed from rowcounts: drivers do not all report them for INSERT ... SELECT.
    total = db.session.scalar(select(func.count()).where(_items.c.job_id == job.id)) or 0
    if total == 0:
        raise ValidationError(
            f"No member of account {account.id} matches these criteria; no job was created.",
            "criteria",
        )
    job.total = total
    audit.record(
        "job.created",
        actor=actor,
        actor_label=actor_label,
        account_id=account.id,
        target_type="job",
        target_id=job.id,
        details={"kind": job.kind, "criteria": job.criteria, "total": total},
        meta=meta,
    )
    db.session.flush()
    return job


# --- reading -------------------------------------------------------------------------------
def get_job(job_id: uuid.UUID | str, *, account_id: int | None = None) -> Job:
    """The job; with ``account_id``, only that account's (another's is simply not found)."""
    key = uuid_or_not_found(job_id, f"No job with id {job_id}.")
    job = db.session.get(Job, key)
    if job is None or (account_id is not None and job.account_id != account_id):
        raise NotFound(f"No job with id {job_id}.")
    return job


def list_jobs(*, account_id: int | None = None, limit: int | None = 100) -> list[Job]:
    """Jobs, newest first, optionally of one account."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id)
    if account_id is not None:
        query = query.where(Job.account_id == account_id)
    if limit is not None:
        query = query.limit(limit)
    return list(db.session.scalars(query))


def list_items(
    job: Job, *, state: str | None = None, limit: int = 50, offset: int = 0
) -> list[JobItem]:
    """A page of the job's items in the order they were planned (by email)."""
    query = select(JobItem).where(JobItem.job_id == job.id).order_by(JobItem.id)
    if state:
        query = query.where(JobItem.state == state)
    return list(db.session.scalars(query.offset(offset).limit(limit)))


def count_items(job: Job, state: str) -> int:
    query = select(func.count()).where(JobItem.job_id == job.id, JobItem.state == state)
    return db.session.scalar(query) or 0


def serialise(job: Job) -> dict[str, Any]:
    """The JSON shape of a job (CLI ``--json``): DESIGN's keys, plus the rest."""

    def stamp(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(job.id),
        "account_id": job.account_id,
        "kind": job.kind,
        "status": job.status,
        "criteria": job.criteria,
        "total": job.total,
        "done": job.done,
        "failed": job.failed,
        "skipped": job.skipped,
        "cancelled": job.cancelled,
        "created_by": job.created_by_label,
        "created_at": stamp(job.created_at),
        "started_at": stamp(job.started_at),
        "finished_at": stamp(job.finished_at),
        "cancelled_at": stamp(job.cancelled_at),
    }


def progress(job: Job, *, now: datetime | None = None) -> dict[str, Any]:
    """The job page's live numbers, from the job row (its counters move in the same
    transaction as the items they count): processed/total, percent, items per second since
    the job started, and the seconds left at that rate (None while unknown)."""
    now = now or utcnow()
    worked = job.done + job.failed + job.skipped
    processed = worked + job.cancelled
    finished = JobStatus(job.status).finished
    percent = 100.0 if job.total == 0 else min(100.0, 100.0 * processed / job.total)
    rate = None
    eta = None
    if job.started_at is not None:
        elapsed = ((job.finished_at or now) - job.started_at).total_seconds()
        if elapsed > 0 and worked:
            rate = worked / elapsed
    if rate and not finished:
        eta = max(0.0, (job.total - processed) / rate)
    return {
        **serialise(job),
        "processed": processed,
        "in_progress": count_items(job, ItemState.CLAIMED.value) if not finished else 0,
        "percent": round(percent, 1),
        "rate": round(rate, 1) if rate is not None else None,
        "eta_seconds": round(eta, 1) if eta is not None else None,
        "finished": finished,
    }


# --- running -------------------------------------------------------------------------------
def mark_running(job_id: uuid.UUID) -> bool:
    """A worker starts on the job: queued -> running (started_at kept from a first run).
    False when the job is gone, finished or cancelled (nothing to do)."""
    now = utcnow()
    result = db.session.execute(
        update(_jobs)
        .where(
            _jobs.c.id == job_id,
            _jobs.c.status.in_((JobStatus.QUEUED.value, JobStatus.RUNNING.value)),
        )
        .values(
            status=JobStatus.RUNNING.value,
            started_at=func.coalesce(_jobs.c.started_at, literal(now, UTCDateTime)),
        )
    )
    return bool(result.rowcount)


@dataclass(frozen=True)
class Claim:
    """Items one worker claimed: processed only while ``token`` is still theirs."""

    job_id: uuid.UUID
    worker: str
    token: str
    item_ids: list[int] = field(default_factory=list)


def _dialect() -> str:
    return db.session.get_bind().dialect.name


def _relax_commit() -> None:
    """PostgreSQL: this transaction's commit does not wait for its WAL flush.

    Safe here, and only here: a claim or a chunk holds its effects and its item states in the
    same transaction, so a commit lost in a database crash loses both, and the items are
    simply claimed and processed again (nothing outside the database happened). It saves a
    disk flush per chunk. Other transactions keep synchronous commits."""
    if _dialect() == "postgresql":
        db.session.execute(text("SET LOCAL synchronous_commit TO OFF"))


def claim_chunk(
    job_id: uuid.UUID,
    worker: str,
    *,
    size: int,
    lease_seconds: float | None,
    now: datetime | None = None,
) -> Claim | None:
    """Claim up to ``size`` items of the job: queued ones, or claimed ones whose lease (claimed
    at + ``lease_seconds``) has expired because their worker died (an item on its
    MAX_ATTEMPTS-th expired claim fails instead). With ``lease_seconds`` None only queued
    items are taken (claim_and_process on SQLite). The caller commits at once so other workers
    see the claim. None when nothing is left to claim (or another worker took it first)."""
    now = now or utcnow()
    _relax_commit()
    token = secrets.token_hex(16)
    expired = now - timedelta(seconds=lease_seconds if lease_seconds is not None else 0)
    # Expired claims first (a dead worker's chunk), then queued items, each in id order: both
    # are short scans of the (job_id, state, id) index, whatever the statistics say.
    found: list[int] = []
    expired_items = select(_items.c.id, _items.c.attempt).where(
        _items.c.job_id == job_id,
        _items.c.state == ItemState.CLAIMED.value,
        _items.c.claimed_at < expired,
    )
    queued_items = select(_items.c.id, _items.c.attempt).where(
        _items.c.job_id == job_id, _items.c.state == ItemState.QUEUED.value
    )
    for query in (expired_items, queued_items) if lease_seconds is not None else (queued_items,):
        query = query.order_by(_items.c.id).limit(size - len(found))
        if _dialect() == "postgresql":
            # Rows another worker is claiming right now are skipped, not waited for; the
            # ones found stay locked until this transaction ends.
            query = query.with_for_update(skip_locked=True)
        rows = db.session.execute(query).all()
        exhausted = [item_id for item_id, attempt in rows if attempt >= MAX_ATTEMPTS]
        if exhausted:
            _give_up(job_id, exhausted, now)
        found += [item_id for item_id, attempt in rows if attempt < MAX_ATTEMPTS]
        if len(found) >= size:
            break
    if not found:
        return None
    # By primary key (no job_id here, so no plan can scan the job's items instead), checking
    # again that each row is still claimable: PostgreSQL holds the rows locked since the
    # SELECT, but on SQLite another process may have claimed some in between (it takes the
    # write lock only with this UPDATE); those are simply not ours.
    claimable = _items.c.state == ItemState.QUEUED.value
    if lease_seconds is not None:
        claimable = or_(
            claimable,
            and_(_items.c.state == ItemState.CLAIMED.value, _items.c.claimed_at < expired),
        )
    statement = (
        update(_items)
        .where(_in(_items.c.id, found), claimable)
        .values(
            state=ItemState.CLAIMED.value,
            claimed_by=worker[:200],
            claim_token=token,
            claimed_at=now,
            attempt=_items.c.attempt + 1,
        )
        .returning(_items.c.id)
    )
    ids = sorted(db.session.execute(statement).scalars())
    if not ids:
        return None
    return Claim(job_id=job_id, worker=worker, token=token, item_ids=ids)


def _give_up(job_id: uuid.UUID, item_ids: list[int], now: datetime) -> None:
    """Expired claims that used up MAX_ATTEMPTS fail instead of being claimed again."""
    db.session.execute(
        update(_items)
        .where(_in(_items.c.id, item_ids))
        .values(
            state=ItemState.FAILED.value,
            outcome=f"gave up after {MAX_ATTEMPTS} attempts: its worker stopped every time",
            finished_at=now,
        )
    )
    _add_to_counters(job_id, now, failed=len(item_ids))


@dataclass
class ChunkResult:
    done: int = 0
    skipped: int = 0
    failed: int = 0

    @property
    def processed(self) -> int:
        return self.done + self.skipped + self.failed


def _uuid_text(column: Any) -> ColumnElement[str]:
    """A UUID column as the text ``str(uuid)`` gives (AuditEvent.target_id): PostgreSQL
    casts its uuid; SQLite stores 32 hex digits, which get their hyphens back."""
    if _dialect() == "postgresql":
        return cast(column, String)
    parts = [
        func.substr(column, start, length, type_=String)
        for start, length in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
    ]
    return parts[0] + "-" + parts[1] + "-" + parts[2] + "-" + parts[3] + "-" + parts[4]


def _in(column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """``column IN values``: on PostgreSQL as ``= ANY(array)``, one parameter however many
    values (a chunk's thousand ids would otherwise be a thousand parameters to bind and
    parse in every statement)."""
    if _dialect() == "postgresql":
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))
    return column.in_(list(values))


def _claimed_by(claim: Claim, ids: Sequence[int] | None = None) -> ColumnElement[bool]:
    """The claim's items (or ``ids`` of them) that are still claimed with its token: a lease
    taken over by another worker, or a cancelled job, leaves fewer or none."""
    return and_(
        _in(_items.c.id, claim.item_ids if ids is None else ids),
        _items.c.state == ItemState.CLAIMED.value,
        _items.c.claim_token == claim.token,
    )


def _finish_items(which: ColumnElement[bool], account_id: int, now: datetime, **claim_values):
    """The UPDATE that marks the items ``which`` selects done (or skipped when their user is
    no longer a member), locking them until commit, returning (item id, user id, state,
    outcome) of each. The outcome says which semantics apply to the user. ``claim_values``
    are more columns to set (claim_and_process claims and finishes in this one UPDATE)."""
    member = exists(
        select(literal(1)).where(
            _memberships.c.user_id == _items.c.user_id,
            _memberships.c.account_id == account_id,
        )
    )
    managed = exists(
        select(literal(1)).where(
            _users.c.id == _items.c.user_id, _users.c.managed_by_account_id == account_id
        )
    )
    return (
        update(_items)
        .where(which)
        .values(
            **claim_values,
            state=case((member, ItemState.DONE.value), else_=ItemState.SKIPPED.value),
            outcome=case(
                (~member, OUTCOME_NOT_MEMBER), (managed, OUTCOME_MANAGED), else_=OUTCOME_MEMBER
            ),
            finished_at=now,
        )
        .returning(_items.c.id, _items.c.user_id, _items.c.state, _items.c.outcome)
    )


def process_chunk(claim: Claim, *, now: datetime | None = None) -> ChunkResult:
    """Deprovision the users of the claim's items, set-based, in the caller's transaction
    (commit once afterwards; roll back on any error and nothing of the chunk remains).

    Per item: the user managed by the job's account is deactivated, their sessions end, and
    every membership, group membership and external login goes; another member loses only
    this account's membership, groups and provider links; an item whose user is no longer a
    member is skipped. One ``job.item.deprovisioned`` audit event per deprovisioned user.
    Items no longer claimed with the claim's token are left alone. One statement per table
    for the whole chunk."""
    now = now or utcnow()
    _relax_commit()
    result = ChunkResult()
    job = _job_row(claim.job_id)
    account_id = job.account_id
    if _dialect() == "postgresql":
        finished = _finish_items(_claimed_by(claim), account_id, now).cte("finished")
        counts = _process_in_one_statement(finished, claim.job_id, job, now)
        result.done = counts.get(ItemState.DONE.value, 0)
        result.skipped = counts.get(ItemState.SKIPPED.value, 0)
        return result
    # Being the chunk's first statement, this UPDATE also takes SQLite's write lock before
    # anything is read.
    rows = db.session.execute(_finish_items(_claimed_by(claim), account_id, now)).all()
    if not rows:
        return result
    managed_users = [row.user_id for row in rows if row.outcome == OUTCOME_MANAGED]
    member_users = [row.user_id for row in rows if row.outcome == OUTCOME_MEMBER]
    affected = managed_users + member_users
    if affected:
        # The audit trail first (the database writes one event per user from the rows).
        _insert_audit_events(affected, claim.job_id, job, now)
    if managed_users:
        # Only the managing account deactivates the user and ends their sessions (DESIGN
        # "Accounts, users and SCIM"); the version is SCIM's ETag. Other members keep their
        # user row as it is: this account only ever controlled the membership.
        db.session.execute(
            update(_users)
            .where(_in(_users.c.id, managed_users))
            .values(active=False, version=_users.c.version + 1, updated_at=now)
        )
        db.session.execute(
            update(_sessions)
            .where(_in(_sessions.c.user_id, managed_users), _sessions.c.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=SESSION_REASON)
        )
    _delete_for(_memberships, managed_users, member_users, _memberships.c.account_id == account_id)
    _delete_for(
        _links,
        managed_users,
        member_users,
        _links.c.provider_id.in_(
            select(SsoProvider.id).where(SsoProvider.account_id == account_id)
        ),
    )
    _delete_for(
        _group_members,
        managed_users,
        member_users,
        _group_members.c.group_id.in_(select(Group.id).where(Group.account_id == account_id)),
    )
    result.done = len(affected)
    result.skipped = len(rows) - len(affected)
    _add_to_counters(claim.job_id, now, done=result.done, skipped=result.skipped)
    return result


def _process_in_one_statement(
    finished: Any, job_id: uuid.UUID, job: Any, now: datetime
) -> dict[str, int]:
    """PostgreSQL: the whole chunk as one statement of data-modifying CTEs (the same steps as
    process_chunk's, in the same transaction), so the users' ids never travel to Python and
    back: one round trip and one array parameter per chunk instead of a dozen. ``finished``
    is the CTE of _finish_items. Every CTE sees the snapshot from before the statement, and
    each table is changed by one of them only. Returns the items finished, counted per state."""
    account_id = job.account_id
    managed = finished.c.outcome == OUTCOME_MANAGED
    done = finished.c.state == ItemState.DONE.value
    details = {"job_id": str(job_id), "reason": "job"}
    audit_rows = select(
        literal(now, UTCDateTime),
        literal(ITEM_ACTION),
        cast(literal(job.created_by_id, Uuid), Uuid),
        literal(job.created_by_label, String),
        literal(account_id),
        literal("user"),
        cast(finished.c.user_id, String),
        case(
            (managed, _json_literal({**details, "managed": True})),
            else_=_json_literal({**details, "managed": False}),
        ),
    ).where(done)
    steps = [
        insert(_audit).from_select(_AUDIT_COLUMNS, audit_rows),
        update(_users)
        .where(_users.c.id == finished.c.user_id, managed)
        .values(active=False, version=_users.c.version + 1, updated_at=now),
        update(_sessions)
        .where(_sessions.c.user_id == finished.c.user_id, managed, _sessions.c.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=SESSION_REASON),
        delete(_memberships).where(
            _memberships.c.user_id == finished.c.user_id,
            done,
            or_(managed, _memberships.c.account_id == account_id),
        ),
        delete(_links).where(
            _links.c.user_id == finished.c.user_id,
            done,
            or_(
                managed,
                _links.c.provider_id.in_(
                    select(SsoProvider.id).where(SsoProvider.account_id == account_id)
                ),
            ),
        ),
        delete(_group_members).where(
            _group_members.c.user_id == finished.c.user_id,
            done,
            or_(
                managed,
                _group_members.c.group_id.in_(
                    select(Group.id).where(Group.account_id == account_id)
                ),
            ),
        ),
        update(_jobs)
        .where(_jobs.c.id == job_id)
        .values(
            done=_jobs.c.done + select(func.count()).where(done).scalar_subquery(),
            skipped=_jobs.c.skipped + select(func.count()).where(~done).scalar_subquery(),
            progressed_at=now,
        ),
    ]
    statement = (
        select(finished.c.state, func.count())
        .group_by(finished.c.state)
        .add_cte(*(step.cte(f"step_{n}") for n, step in enumerate(steps)))
    )
    return dict(db.session.execute(statement).all())


def claim_and_process(
    job_id: uuid.UUID, worker: str, *, size: int, now: datetime | None = None
) -> ChunkResult | None:
    """Claim up to ``size`` queued items of the job and process them in the same transaction
    (the caller commits once, or rolls back). None when no queued item is left to take.

    The chunk commits whole or not at all: if its transaction never commits (a database
    error, a worker killed mid-chunk) its items are still queued, for any worker to take, so
    no lease is needed and each item row is written once instead of twice (claim, then
    finish). On PostgreSQL the whole chunk is one statement whose claim is a ``SELECT ...
    FOR UPDATE SKIP LOCKED`` CTE: concurrent workers take different items, and an item being
    processed stays locked (cancel waits for it). On SQLite it is claim_chunk and
    process_chunk in one transaction under the single write lock. Claims whose lease expired
    (JOBS_LEASED_CLAIMS, or a chunk that failed here and was split) are claim_chunk's."""
    now = now or utcnow()
    if _dialect() != "postgresql":
        claim = claim_chunk(job_id, worker, size=size, lease_seconds=None, now=now)
        return process_chunk(claim, now=now) if claim is not None else None
    _relax_commit()
    job = _job_row(job_id)
    picked = (
        select(_items.c.id)
        .where(_items.c.job_id == job_id, _items.c.state == ItemState.QUEUED.value)
        .order_by(_items.c.id)
        .limit(size)
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    finished = _finish_items(
        _items.c.id == picked.c.id,
        job.account_id,
        now,
        claimed_by=worker[:200],
        claim_token=secrets.token_hex(16),
        claimed_at=now,
        attempt=_items.c.attempt + 1,
    ).cte("finished")
    counts = _process_in_one_statement(finished, job_id, job, now)
    if not counts:
        return None
    return ChunkResult(
        done=counts.get(ItemState.DONE.value, 0), skipped=counts.get(ItemState.SKIPPED.value, 0)
    )


def _job_row(job_id: uuid.UUID) -> Any:
    return db.session.execute(
        select(_jobs.c.account_id, _jobs.c.created_by_id, _jobs.c.created_by_label).where(
            _jobs.c.id == job_id
        )
    ).one()


_AUDIT_COLUMNS = (
    "occurred_at",
    "action",
    "actor_user_id",
    "actor_label",
    "account_id",
    "target_type",
    "target_id",
    "details",
)


def _insert_audit_events(
    user_ids: list[uuid.UUID], job_id: uuid.UUID, job: Any, now: datetime
) -> None:
    """One ``job.item.deprovisioned`` event per user, actor the job's author, in one
    INSERT ... SELECT. ``managed`` in the details says which semantics applied."""
    details = {"job_id": str(job_id), "reason": "job"}
    rows = select(
        literal(now, UTCDateTime),
        literal(ITEM_ACTION),
        cast(literal(job.created_by_id, Uuid), Uuid),
        literal(job.created_by_label, String),
        literal(job.account_id),
        literal("user"),
        _uuid_text(_users.c.id),
        case(
            (
                _users.c.managed_by_account_id == job.account_id,
                _json_literal({**details, "managed": True}),
            ),
            else_=_json_literal({**details, "managed": False}),
        ),
    ).where(_in(_users.c.id, user_ids))
    db.session.execute(insert(_audit).from_select(_AUDIT_COLUMNS, rows))


def _json_literal(value: dict[str, Any]) -> ColumnElement[Any]:
    # PostgreSQL puts text into a json column only with a cast; SQLite must not get one (its
    # CAST to an unknown type name means NUMERIC, which turns the text into 0).
    bound = literal(value, JSON)
    return cast(bound, JSON) if _dialect() == "postgresql" else bound


def _delete_for(table, managed_users, member_users, member_scope) -> None:
    """Delete a table's rows of managed users (all of them) and of other members (only those
    within the account: ``member_scope``), in one statement."""
    conditions = []
    if managed_users:
        conditions.append(_in(table.c.user_id, managed_users))
    if member_users:
        conditions.append(and_(_in(table.c.user_id, member_users), member_scope))
    if conditions:
        db.session.execute(delete(table).where(or_(*conditions)))


def _add_to_counters(
    job_id: uuid.UUID, now: datetime, *, done: int = 0, skipped: int = 0, failed: int = 0
) -> None:
    # Last statement of the chunk's transaction: the job row is locked only until commit, so
    # concurrent workers queue on it briefly instead of for a whole chunk.
    db.session.execute(
        update(_jobs)
        .where(_jobs.c.id == job_id)
        .values(
            done=_jobs.c.done + done,
            skipped=_jobs.c.skipped + skipped,
            failed=_jobs.c.failed + failed,
            progressed_at=now,
        )
    )


def fail_items(claim: Claim, item_ids: Sequence[int], reason: str) -> int:
    """Record items of the claim as failed with ``reason`` (their chunk's transaction failed
    and was rolled back); returns how many. The caller commits. Failed items can be retried."""
    now = utcnow()
    statement = (
        update(_items)
        .where(_claimed_by(claim, item_ids))
        .values(state=ItemState.FAILED.value, outcome=reason[:500], finished_at=now)
        .returning(_items.c.id)
    )
    ids = list(db.session.execute(statement).scalars())
    if not ids:
        return 0
    _add_to_counters(claim.job_id, now, failed=len(ids))
    return len(ids)


@dataclass
class Remaining:
    """What is left of a job after a worker found nothing to claim."""

    finished: bool
    status: str
    # Items other workers hold (their leases are live): wait for them, or for the leases to
    # run out, then claim them.
    claimed: int = 0
    next_expiry: datetime | None = None


def finish_if_complete(
    job_id: uuid.UUID, *, lease_seconds: float, now: datetime | None = None
) -> Remaining:
    """Close the job when no item is queued or claimed: status succeeded, or failed when
    some items failed (they can be retried); one ``job.finished`` audit event. Otherwise say
    how many items are still claimed and when the first lease expires. The caller commits."""
    now = now or utcnow()
    open_items = select(_items.c.id).where(
        _items.c.job_id == job_id,
        _items.c.state.in_((ItemState.QUEUED.value, ItemState.CLAIMED.value)),
    )
    result = db.session.execute(
        update(_jobs)
        .where(
            _jobs.c.id == job_id,
            _jobs.c.status.in_((JobStatus.QUEUED.value, JobStatus.RUNNING.value)),
            ~exists(open_items),
        )
        .values(
            status=case(
                (_jobs.c.failed > 0, JobStatus.FAILED.value), else_=JobStatus.SUCCEEDED.value
            ),
            finished_at=now,
        )
        .returning(
            _jobs.c.status,
            _jobs.c.account_id,
            _jobs.c.total,
            _jobs.c.done,
            _jobs.c.failed,
            _jobs.c.skipped,
        )
    ).first()
    if result is not None:
        audit.insert_now(
            "job.finished",
            account_id=result.account_id,
            target_type="job",
            target_id=job_id,
            details={
                "status": result.status,
                "total": result.total,
                "done": result.done,
                "failed": result.failed,
                "skipped": result.skipped,
            },
        )
        return Remaining(finished=True, status=result.status)
    status = db.session.scalar(select(_jobs.c.status).where(_jobs.c.id == job_id))
    if status is None or JobStatus(status).finished:
        return Remaining(finished=True, status=status or JobStatus.CANCELLED.value)
    claimed, first = db.session.execute(
        select(func.count(), func.min(_items.c.claimed_at)).where(
            _items.c.job_id == job_id, _items.c.state == ItemState.CLAIMED.value
        )
    ).one()
    expiry = first + timedelta(seconds=lease_seconds) if first is not None else None
    return Remaining(finished=False, status=status, claimed=claimed or 0, next_expiry=expiry)


def stalled_jobs(*, lease_seconds: float, now: datetime | None = None) -> list[uuid.UUID]:
    """Jobs left unfinished with no progress for a whole lease: their worker died (or their
    first message was lost). Each is marked as progressing now, so that the next sweep does
    not pick it again before a new worker had a lease's time. The caller commits, then queues
    a run for each."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=lease_seconds)
    open_items = select(_items.c.id).where(
        _items.c.job_id == _jobs.c.id,
        _items.c.state.in_((ItemState.QUEUED.value, ItemState.CLAIMED.value)),
    )
    last_sign = func.coalesce(_jobs.c.progressed_at, _jobs.c.started_at, _jobs.c.created_at)
    ids = list(
        db.session.execute(
            update(_jobs)
            .where(
                _jobs.c.status.in_((JobStatus.QUEUED.value, JobStatus.RUNNING.value)),
                last_sign < cutoff,
                exists(open_items),
            )
            .values(progressed_at=now)
            .returning(_jobs.c.id)
        ).scalars()
    )
    return ids


# --- cancel and retry ----------------------------------------------------------------------
def cancel_job(
    job: Job,
    *,
    actor: User | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
) -> int:
    """Cancel the job: every item not processed yet (queued, or claimed by a worker that has
    not started on it) becomes cancelled, and workers stop. Items already done stay done.
    Returns how many were cancelled. Raises ValidationError when the job has finished."""
    if JobStatus(job.status).finished:
        raise ValidationError(f"Job {job.id} has already finished ({job.status}).")
    now = utcnow()
    # Items first, then the job row: the same order as a chunk's transaction, so a cancel
    # and a chunk running at once never wait for each other in a cycle. Items a worker is
    # processing right now are locked: this waits for them, then leaves them done.
    result = db.session.execute(
        update(_items)
        .where(
            _items.c.job_id == job.id,
            _items.c.state.in_((ItemState.QUEUED.value, ItemState.CLAIMED.value)),
        )
        .values(state=ItemState.CANCELLED.value, outcome=OUTCOME_CANCELLED, finished_at=now)
    )
    cancelled = result.rowcount or 0
    db.session.execute(
        update(_jobs)
        .where(_jobs.c.id == job.id)
        .values(
            status=JobStatus.CANCELLED.value,
            cancelled=_jobs.c.cancelled + cancelled,
            cancelled_at=now,
            finished_at=now,
        )
    )
    db.session.expire(job)
    audit.record(
        "job.cancelled",
        actor=actor,
        account_id=job.account_id,
        target_type="job",
        target_id=job.id,
        details={"items_cancelled": cancelled},
        meta=meta,
    )
    return cancelled


def retry_job(
    job: Job,
    *,
    actor: User | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
) -> int:
    """Queue the job's failed items again (and the job, if it had finished); returns how
    many. The caller commits, then starts the job. Raises ValidationError when there is
    nothing to retry or the job was cancelled."""
    if job.status == JobStatus.CANCELLED.value:
        raise ValidationError(f"Job {job.id} was cancelled; start a new job instead.")
    result = db.session.execute(
        update(_items)
        .where(_items.c.job_id == job.id, _items.c.state == ItemState.FAILED.value)
        .values(
            state=ItemState.QUEUED.value,
            outcome=None,
            claimed_by=None,
            claim_token=None,
            claimed_at=None,
            finished_at=None,
        )
    )
    retried = result.rowcount or 0
    if not retried:
        raise ValidationError(f"Job {job.id} has no failed items to retry.")
    db.session.execute(
        update(_jobs)
        .where(_jobs.c.id == job.id)
        .values(
            failed=_jobs.c.failed - retried,
            status=case(
                (_jobs.c.status == JobStatus.RUNNING.value, JobStatus.RUNNING.value),
                else_=JobStatus.QUEUED.value,
            ),
            finished_at=None,
        )
    )
    db.session.expire(job)
    audit.record(
        "job.retried",
        actor=actor,
        account_id=job.account_id,
        target_type="job",
        target_id=job.id,
        details={"items_retried": retried},
        meta=meta,
    )
    return retried
