"""Bulk deprovisioning through the service: criteria (SCIM filter, date, CSV), preview, the
set-based chunk with the semantics of users.deprovision_user, claims and their leases,
cancel, retry and progress. Tasks run eagerly here; tests/tasks runs them in workers."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import update

from app.extensions import db
from app.models import AuditEvent
from app.models import ExternalLogin
from app.models import GroupMember
from app.models import Job
from app.models import JobItem
from app.models import Membership
from app.models import Session
from app.models import User
from app.models.base import utcnow
from app.services import accounts
from app.services import deprovisioning as dp
from app.services.errors import NotFound
from app.services.errors import ValidationError
from app.tasks import deprovisioning as job_tasks
from tests.jobs_helpers import add_members
from tests.jobs_helpers import item_audit_counts
from tests.jobs_helpers import job_state
from tests.jobs_helpers import make_group
from tests.jobs_helpers import make_provider

LEASE = 60.0


@pytest.fixture
def world(app, make_account, make_user) -> SimpleNamespace:
    """Acme (the job's account) and Globex, each with a provider and a group. ``managed``:
    members of both accounts that Acme manages; ``shared``: members of both that nobody
    manages; ``globex_only``: Globex members whose emails match the same filters."""
    acme, globex = make_account("Acme"), make_account("Globex")
    acme_idp, globex_idp = (
        make_provider(app, acme.id, "acme-idp"),
        make_provider(app, globex.id, "globex-idp"),
    )
    acme_group, globex_group = (
        make_group(app, acme.id, "Staff"),
        make_group(app, globex.id, "Staff"),
    )
    common = {
        "provider_ids": (acme_idp, globex_idp),
        "group_ids": (acme_group, globex_group),
        "also_member_of": (globex.id,),
        "sessions": 2,
    }
    return SimpleNamespace(
        acme=acme,
        globex=globex,
        admin=make_user("admin@acme.example", account_id=acme.id, role="admin"),
        acme_idp=acme_idp,
        globex_idp=globex_idp,
        acme_group=acme_group,
        globex_group=globex_group,
        managed=add_members(app, acme.id, 3, prefix="dep-managed", **common),
        shared=add_members(app, acme.id, 2, prefix="dep-shared", managed=False, **common),
        globex_only=add_members(app, globex.id, 2, prefix="dep-globex", provider_ids=(globex_idp,)),
    )


def _account(account_id: int):
    return accounts.get_account(account_id)


def _actor(email: str) -> User:
    return db.session.scalar(select(User).where(User.email == email))


def _start(app, account_id: int, criteria: dp.Criteria, actor: str | None = None) -> uuid.UUID:
    with app.app_context():
        job = dp.create_job(_account(account_id), criteria, actor=_actor(actor) if actor else None)
        db.session.commit()
        return job.id


def _run(app, job_id: uuid.UUID) -> dict:
    with app.app_context():
        return job_tasks.run(str(job_id))


def _count(model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where)) or 0


# --- criteria ------------------------------------------------------------------------------
def test_csv_of_emails_is_normalised_and_deduplicated():
    data = "\ufeffName,Email\nAnn,Ann@Example.COM\n\n,ann@example.com\nBob, bob@example.com \n"

    criteria = dp.csv_criteria(data.encode(), max_rows=10)

    assert criteria.csv_column == "email"
    assert criteria.csv_values == ("ann@example.com", "bob@example.com")
    assert criteria.describe() == {"csv": {"column": "email", "rows": 2}}


def test_csv_of_external_ids_keeps_them_as_written():
    criteria = dp.csv_criteria(b"external_id\nAbC-1\nabc-1\n", max_rows=10)

    assert (criteria.csv_column, criteria.csv_values) == ("external_id", ("AbC-1", "abc-1"))


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (b"mail,name\na@example.com,A\n", "has neither email and external_id"),
        (b"email,external_id\na@example.com,1\n", "names both"),
        (b"email\n", "no email values"),
        (b"email\nnot-an-email\nok@example.com\nalso@bad@\n", "2 bad email values: line 2"),
        (b"email\n\xff\xfe\n", "UTF-8"),
        (b"email\na@example.com\nb@example.com\nc@example.com\n", "more than 2 rows"),
        (b"email,name\n,Ann\n", "line 2: empty email"),
        (b"external_id\n" + b"x" * 300 + b"\n", "longer than 255"),
    ],
)
def test_csv_errors_are_one_clear_message(data, fragment):
    with pytest.raises(ValidationError) as raised:
        dp.csv_criteria(data, max_rows=2)

    assert fragment.lower() in raised.value.message.lower()
    assert "\n" not in raised.value.message


def test_csv_error_names_the_bad_lines_and_how_many_more():
    rows = "\n".join(f"bad{n}" for n in range(8))

    with pytest.raises(ValidationError) as raised:
        dp.csv_criteria(f"email\n{rows}\n", max_rows=100)

    message = raised.value.message
    assert "8 bad email values" in message
    assert "line 2: 'bad0' is not a valid email address" in message
    assert "(and 3 more)" in message


def test_filter_and_date_criteria_are_checked():
    with pytest.raises(ValidationError, match="Filter is not valid"):
        dp.filter_criteria('userName eq "unterminated')
    with pytest.raises(ValidationError, match="must not be empty"):
        dp.filter_criteria("  ")
    with pytest.raises(ValidationError, match="YYYY-MM-DD"):
        dp.not_updated_since_criteria("31/01/2025")
    with pytest.raises(ValidationError, match="offset"):
        dp.not_updated_since_criteria("2025-01-31T10:00:00")
    assert dp.not_updated_since_criteria("2025-01-31").since.isoformat() == (
        "2025-01-31T00:00:00+00:00"
    )


def test_a_filter_on_an_unknown_attribute_is_refused_at_preview(app, world):
    with app.app_context():
        criteria = dp.filter_criteria('favouriteColour eq "blue"')
        with pytest.raises(ValidationError, match="Filter is not valid"):
            dp.preview_job(_account(world.acme.id), criteria)


# --- preview -------------------------------------------------------------------------------
def _snapshot() -> tuple:
    return (
        _count(Job),
        _count(JobItem),
        _count(AuditEvent),
        _count(User, User.active.is_(False)),
        _count(Membership),
        _count(Session, Session.revoked_at.is_not(None)),
        _count(ExternalLogin),
        _count(GroupMember),
    )


def test_preview_counts_and_samples_members_and_changes_nothing(app, world):
    with app.app_context():
        before = _snapshot()

        preview = dp.preview_job(_account(world.acme.id), dp.filter_criteria('userName sw "dep-"'))

        assert preview.count == 5  # managed + shared; Globex's own users are not seen
        assert preview.sample == [
            "dep-managed-0@example.com",
            "dep-managed-1@example.com",
            "dep-managed-2@example.com",
            "dep-shared-0@example.com",
            "dep-shared-1@example.com",
        ]
        assert _snapshot() == before


def test_preview_of_a_csv_counts_values_matching_no_member(app, world):
    data = "email\ndep-managed-0@example.com\nDEP-SHARED-1@example.com\n"
    data += "dep-globex-0@example.com\nnobody@example.com\n"
    with app.app_context():
        criteria = dp.csv_criteria(data, max_rows=100)

        preview = dp.preview_job(_account(world.acme.id), criteria)

        assert (preview.count, preview.unmatched) == (2, 2)
        assert preview.sample == ["dep-managed-0@example.com", "dep-shared-1@example.com"]


def test_the_admin_is_never_selected_and_the_preview_says_so(app, world):
    with app.app_context():
        criteria = dp.filter_criteria('userName co "example"')
        preview = dp.preview_job(
            _account(world.acme.id), criteria, actor=_actor("admin@acme.example")
        )

        assert preview.excludes_actor is True
        assert "admin@acme.example" not in preview.sample
        assert preview.count == 5

    job_id = _start(app, world.acme.id, criteria, actor="admin@acme.example")
    _run(app, job_id)
    with app.app_context():
        assert _actor("admin@acme.example").active is True
        assert accounts.role_in(_actor("admin@acme.example"), world.acme.id) is not None


def test_no_matching_member_creates_no_job(app, world):
    with app.app_context():
        with pytest.raises(ValidationError, match="no job was created"):
            dp.create_job(_account(world.acme.id), dp.filter_criteria('userName eq "nobody"'))
        db.session.rollback()
        assert _count(Job) == 0


# --- a job ---------------------------------------------------------------------------------
def test_a_job_deprovisions_like_deprovision_user_set_based(app, world):
    job_id = _start(
        app, world.acme.id, dp.filter_criteria('userName sw "dep-"'), "admin@acme.example"
    )

    summary = _run(app, job_id)

    assert summary["status"] == "succeeded"
    with app.app_context():
        for user_id in world.managed:
            user = db.session.get(User, user_id)
            # Managed by Acme: deactivated, every session ended, every membership, group
            # membership and login gone (Globex's included).
            assert user.active is False
            assert user.version == 2
            assert _count(Session, Session.user_id == user_id, Session.revoked_at.is_(None)) == 0
            assert (
                _count(
                    Session, Session.user_id == user_id, Session.revoked_reason == "deprovisioned"
                )
                == 2
            )
            assert _count(Membership, Membership.user_id == user_id) == 0
            assert _count(ExternalLogin, ExternalLogin.user_id == user_id) == 0
            assert _count(GroupMember, GroupMember.user_id == user_id) == 0
        for user_id in world.shared:
            user = db.session.get(User, user_id)
            # Managed by nobody: only what Acme controls goes.
            assert user.active is True
            assert user.version == 1
            assert _count(Session, Session.user_id == user_id, Session.revoked_at.is_(None)) == 2
            assert [m.account_id for m in user.memberships] == [world.globex.id]
            links = db.session.scalars(
                select(ExternalLogin.provider_id).where(ExternalLogin.user_id == user_id)
            )
            assert list(links) == [world.globex_idp]
            groups = db.session.scalars(
                select(GroupMember.group_id).where(GroupMember.user_id == user_id)
            )
            assert list(groups) == [world.globex_group]
        for user_id in world.globex_only:
            assert db.session.get(User, user_id).active is True
            assert _count(Membership, Membership.user_id == user_id) == 1
            assert _count(ExternalLogin, ExternalLogin.user_id == user_id) == 1

        events = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "job.item.deprovisioned")
        ).all()
        by_target = {event.target_id: event for event in events}
        assert set(by_target) == {str(u) for u in world.managed + world.shared}
        event = by_target[str(world.managed[0])]
        assert event.actor_label == "admin@acme.example"
        assert event.account_id == world.acme.id
        assert event.target_type == "user"
        assert event.details == {"job_id": str(job_id), "managed": True, "reason": "job"}
        assert by_target[str(world.shared[0])].details["managed"] is False
        assert {
            e.action
            for e in db.session.scalars(
                select(AuditEvent).where(AuditEvent.target_id == str(job_id))
            )
        } == {"job.created", "job.finished"}

    state = job_state(app, job_id)
    assert (state["status"], state["total"], state["done"], state["failed"]) == (
        "succeeded",
        5,
        5,
        0,
    )
    assert state["items"] == {"done": 5}
    assert state["started_at"] and state["finished_at"]
    with app.app_context():
        outcomes = {item.label: item.outcome for item in db.session.scalars(select(JobItem))}
        assert outcomes["dep-managed-0@example.com"] == dp.OUTCOME_MANAGED
        assert outcomes["dep-shared-0@example.com"] == dp.OUTCOME_MEMBER


def test_a_job_never_touches_another_accounts_users(app, world, make_user):
    # Globex's job, by a filter that also matches Acme's members who are not Globex's.
    outsider = add_members(app, world.acme.id, 2, prefix="dep-acme-only")
    job_id = _start(app, world.globex.id, dp.filter_criteria('userName sw "dep-"'))

    _run(app, job_id)

    with app.app_context():
        assert dp.get_job(job_id).total == 7  # managed, shared and Globex's own
        for user_id in outsider:
            assert db.session.get(User, user_id).active is True
            assert _count(Membership, Membership.user_id == user_id) == 1
            assert _count(Session, Session.user_id == user_id, Session.revoked_at.is_(None)) == 1
        # Acme manages these: Globex only removes its own membership, group and login.
        for user_id in world.managed:
            user = db.session.get(User, user_id)
            assert user.active is True
            assert [m.account_id for m in user.memberships] == [world.acme.id]
        assert set(item_audit_counts(app, job_id)) == {
            str(u) for u in world.managed + world.shared + world.globex_only
        }
        with pytest.raises(NotFound):
            dp.get_job(job_id, account_id=world.acme.id)


def test_not_updated_since_selects_by_scim_last_modified(app, world):
    with app.app_context():
        old = utcnow() - timedelta(days=400)
        db.session.execute(
            update(User).where(User.id.in_(world.managed[:2])).values(updated_at=old)
        )
        db.session.commit()
        since = (utcnow() - timedelta(days=30)).date().isoformat()
        preview = dp.preview_job(_account(world.acme.id), dp.not_updated_since_criteria(since))
        assert preview.sample == ["dep-managed-0@example.com", "dep-managed-1@example.com"]


def test_a_csv_of_external_ids_selects_members(app, world):
    criteria = dp.csv_criteria(
        b"external_id\ndep-shared-ext-1\ndep-globex-ext-0\nnone\n", max_rows=10
    )
    job_id = _start(app, world.acme.id, criteria)

    _run(app, job_id)

    assert set(item_audit_counts(app, job_id)) == {str(world.shared[1])}
    assert job_state(app, job_id)["criteria"] == {"csv": {"column": "external_id", "rows": 3}}


def test_an_item_whose_user_left_the_account_is_skipped(app, world):
    job_id = _start(app, world.acme.id, dp.filter_criteria('userName sw "dep-managed"'))
    with app.app_context():
        db.session.execute(
            Membership.__table__.delete().where(
                Membership.user_id == world.managed[0], Membership.account_id == world.acme.id
            )
        )
        db.session.commit()

    _run(app, job_id)

    state = job_state(app, job_id)
    assert (state["done"], state["skipped"], state["status"]) == (2, 1, "succeeded")
    with app.app_context():
        item = db.session.scalar(select(JobItem).where(JobItem.user_id == world.managed[0]))
        assert (item.state, item.outcome) == ("skipped", dp.OUTCOME_NOT_MEMBER)
        assert db.session.get(User, world.managed[0]).active is True
    assert str(world.managed[0]) not in item_audit_counts(app, job_id)


# --- claims, leases, exactly once ------------------------------------------------------------
def test_claim_and_process_takes_queued_items_only_and_finishes_them_at_once(app, world):
    job_id = _start(app, world.acme.id, dp.filter_criteria('userName sw "dep-"'))
    with app.app_context():
        leased = dp.claim_chunk(job_id, "worker-a", size=2, lease_seconds=LEASE)
        db.session.commit()
        result = dp.claim_and_process(job_id, "worker-c", size=10)
        db.session.commit()
        assert (result.done, result.skipped, result.failed) == (3, 0, 0)
        items = db.session.scalars(select(JobItem).order_by(JobItem.id)).all()
        # The leased claim is claim_chunk's to reclaim once it expires; it is left alone.
        assert [(i.state, i.claimed_by, i.attempt) for i in items if i.id in leased.item_ids] == [
            ("claimed", "worker-a", 1)
        ] * 2
        taken = [i for i in items if i.id not in leased.item_ids]
        assert [(i.state, i.claimed_by, i.attempt) for i in taken] == [("done", "worker-c", 1)] * 3
        assert all(i.finished_at is not None for i in taken)
        assert dp.claim_and_process(job_id, "worker-c", size=10) is None
        db.session.rollback()
    state = job_state(app, job_id)
    assert (state["done"], state["items"]["claimed"]) == (3, 2)
    assert set(item_audit_counts(app, job_id).values()) == {1}


def test_a_chunk_that_never_commits_leaves_no_trace(app, world):
    job_id = _start(app, world.acme.id, dp.filter_criteria('userName sw "dep-managed"'))
    with app.app_context():
        assert dp.claim_and_process(job_id, "worker-a", size=10).done == 3
        db.session.rollback()  # the worker died, or the database refused the chunk
        items = db.session.scalars(select(JobItem)).all()
        assert [(i.state, i.attempt, i.claimed_by) for i in items] == [("queued", 0, None)] * 3
        assert _count(User, User.id.in_(world.managed), User.active.is_(True)) == 3
        assert _count(Session, Session.user_id.in_(world.managed), Session.revoked_at.is_(None))
        assert _count(Membership, Membership.user_id.in_(world.managed)) == 6
    assert item_audit_counts(app, job_id) == {}
    assert job_state(app, job_id)["done"] == 0
    # The next worker takes the same items, as a first attempt.
    with app.app_context():
        assert dp.claim_and_process(job_id, "worker-b", size=10).done == 3
        db.session.commit()
        assert {i.attempt for i in db.session.scalars(select(JobItem))} == {1}


def test_a_chunk_in_progress_is_invisible_to_others_and_on_postgresql_skipped(app, make_app, world):
    job_id = _start(app, world.acme.id, dp.filter_criteria('userName sw "dep-"'))
    other = make_app()
    taken: list = []

    def second_worker() -> None:
        with other.app_context():
            taken.append(dp.claim_and_process(job_id, "worker-b", size=10))
            db.session.commit()

    with app.app_context():
        assert dp.claim_and_process(job_id, "worker-a", size=2).done == 2
        postgresql = db.engine.dialect.name == "postgresql"
        # Another connection sees nothing of the open chunk: all five still queued.
        assert job_state(other, job_id)["items"] == {"queued": 5}
        if postgresql:
            # ...and its own chunk takes the other three items (it waits only for the job
            # row's counters, at its very end, until this chunk commits).
            thread = threading.Thread(target=second_worker)
            thread.start()
            time.sleep(0.3)
        db.session.commit()
    if postgresql:
        thread.join(timeout=30)
        assert taken and taken[0].done == 3
    state = job_state(app, job_id)
    assert state["done"] == (5 if postgresql else 2)
    assert set(item_audit_counts(app, job_id).values()) == {1}


def test_workers_claim_different_items_and_a_lease_expires(app, world):
    job_id = _start(app, world.acme.id, dp.filter_criteria('userName sw "dep-"'))
    with app.app_context():
        first = dp.claim_chunk(job_id, "worker-a", size=3, lease_seconds=LEASE)
        db.session.commit()
        second = dp.claim_chunk(job_id, "worker-b", size=3, lease_seconds=LEASE)
        db.session.commit()
        assert len(first.item_ids) == 3 and len(second.item_ids) == 2
        assert not set(first.item_ids) & set(second.item_ids)
        assert dp.process_chunk(second).processed == 2
        db.session.commit()
        # Worker A dies. While its lease runs nothing is left to claim; after, B takes over.
        assert dp.claim_chunk(job_id, "worker-b", size=10, lease_seconds=LEASE) is None
        later = utcnow() + timedelta(seconds=LEASE + 1)
        reclaimed = dp.claim_chunk(job_id, "worker-b", size=10, lease_seconds=LEASE, now=later)
        db.session.commit()
        assert reclaimed.item_ids == first.item_ids

        # A comes back to life and processes its old claim: its token is gone, nothing happens.
        assert dp.process_chunk(first).processed == 0
        db.session.commit()
        assert dp.process_chunk(reclaimed).processed == 3
        db.session.commit()
        # Processing a chunk twice does nothing the second time.
        assert dp.process_chunk(reclaimed).processed == 0
        db.session.commit()
        items = db.session.scalars(select(JobItem).order_by(JobItem.id)).all()
        assert [i.attempt for i in items if i.id in first.item_ids] == [2, 2, 2]
        assert {i.claimed_by for i in items} == {"worker-b"}

    assert set(item_audit_counts(app, job_id).values()) == {1}
    assert len(item_audit_counts(app, job_id)) == 5


def test_a_chunk_rolled_back_leaves_no_trace(app, world):
    job_id = _start(app, world.acme.id, dp.filter_criteria('userName sw "dep-"'))
    with app.app_context():
        claim = dp.claim_chunk(job_id, "worker-a", size=10, lease_seconds=LEASE)
        db.session.commit()
        before = _snapshot()
        dp.process_chunk(claim)
        db.session.rollback()  # the worker died before its commit
        assert _snapshot() == before
        assert _count(JobItem, JobItem.state == "claimed") == 5


def test_items_that_keep_killing_workers_are_given_up(app, world):
    job_id = _start(app, world.acme.id, dp.filter_criteria('userName sw "dep-managed-0"'))
    with app.app_context():
        moment = utcnow()
        for _ in range(dp.MAX_ATTEMPTS):
            moment += timedelta(seconds=LEASE + 1)
            assert dp.claim_chunk(job_id, "w", size=10, lease_seconds=LEASE, now=moment)
            db.session.commit()
        moment += timedelta(seconds=LEASE + 1)
        assert dp.claim_chunk(job_id, "w", size=10, lease_seconds=LEASE, now=moment) is None
        db.session.commit()
        item = db.session.scalar(select(JobItem))
        assert item.state == "failed" and "gave up" in item.outcome
        assert dp.get_job(job_id).failed == 1


def test_stalled_jobs_are_found_once_per_lease(app, world):
    job_id = _start(app, world.acme.id, dp.filter_criteria('userName sw "dep-"'))
    with app.app_context():
        assert dp.stalled_jobs(lease_seconds=LEASE) == []
        later = utcnow() + timedelta(seconds=LEASE + 1)
        assert dp.stalled_jobs(lease_seconds=LEASE, now=later) == [job_id]
        db.session.commit()
        assert dp.stalled_jobs(lease_seconds=LEASE, now=later + timedelta(seconds=1)) == []


# --- cancel, retry, progress ---------------------------------------------------------------
def test_cancel_stops_a_job_and_keeps_what_is_done(app, world):
    job_id = _start(app, world.acme.id, dp.filter_criteria('userName sw "dep-"'))
    with app.app_context():
        done = dp.claim_chunk(job_id, "w", size=2, lease_seconds=LEASE)
        db.session.commit()
        dp.process_chunk(done)
        db.session.commit()
        held = dp.claim_chunk(job_id, "w", size=1, lease_seconds=LEASE)
        db.session.commit()

        cancelled = dp.cancel_job(dp.get_job(job_id))
        db.session.commit()

        assert cancelled == 3  # two queued, one claimed and not processed yet
        assert dp.process_chunk(held).processed == 0  # the worker finds its claim gone
        db.session.commit()
        with pytest.raises(ValidationError, match="already finished"):
            dp.cancel_job(dp.get_job(job_id))
        with pytest.raises(ValidationError, match="cancelled"):
            dp.retry_job(dp.get_job(job_id))
        db.session.rollback()
    state = job_state(app, job_id)
    assert (state["status"], state["done"], state["cancelled"]) == ("cancelled", 2, 3)
    assert state["items"] == {"done": 2, "cancelled": 3}
    assert state["cancelled_at"] and state["finished_at"]
    assert _run(app, job_id)["status"] == "not runnable"
    assert len(item_audit_counts(app, job_id)) == 2


def test_failed_items_are_recorded_and_retried(app, world):
    job_id = _start(app, world.acme.id, dp.filter_criteria('userName sw "dep-"'))
    with app.app_context():
        with pytest.raises(ValidationError, match="no failed items"):
            dp.retry_job(dp.get_job(job_id))
        db.session.rollback()
        claim = dp.claim_chunk(job_id, "w", size=10, lease_seconds=LEASE)
        db.session.commit()
        assert dp.fail_items(claim, claim.item_ids[:2], "OperationalError: boom") == 2
        db.session.commit()
        assert dp.process_chunk(claim).processed == 3  # the rest of the chunk
        db.session.commit()
    _run(app, job_id)
    state = job_state(app, job_id)
    assert (state["status"], state["done"], state["failed"]) == ("failed", 3, 2)
    with app.app_context():
        failed = db.session.scalars(select(JobItem).where(JobItem.state == "failed")).all()
        assert {item.outcome for item in failed} == {"OperationalError: boom"}

        assert dp.retry_job(dp.get_job(job_id)) == 2
        db.session.commit()
        assert dp.get_job(job_id).status == "queued"
    _run(app, job_id)
    state = job_state(app, job_id)
    assert (state["status"], state["done"], state["failed"]) == ("succeeded", 5, 0)
    assert state["items"] == {"done": 5}
    assert set(item_audit_counts(app, job_id).values()) == {1}
    with app.app_context(), pytest.raises(ValidationError, match="no failed items"):
        dp.retry_job(dp.get_job(job_id))


def test_progress_reports_rate_and_time_left(app, world):
    job_id = _start(app, world.acme.id, dp.filter_criteria('userName sw "dep-"'))
    with app.app_context():
        job = dp.get_job(job_id)
        assert dp.progress(job)["percent"] == 0.0
        assert dp.progress(job)["rate"] is None
        dp.mark_running(job_id)
        claim = dp.claim_chunk(job_id, "w", size=2, lease_seconds=LEASE)
        db.session.commit()
        dp.process_chunk(claim)
        db.session.commit()
        job = dp.get_job(job_id)
        db.session.refresh(job)
        now = job.started_at + timedelta(seconds=2)

        numbers = dp.progress(job, now=now)

        assert (numbers["processed"], numbers["total"], numbers["percent"]) == (2, 5, 40.0)
        assert numbers["rate"] == 1.0
        assert numbers["eta_seconds"] == 3.0
        assert numbers["finished"] is False
