"""`flask jobs`: deprovision (and its --dry-run preview), list, show, cancel, retry; JSON on
stdout, one-line errors and a non-zero exit on bad input."""

from __future__ import annotations

import pytest
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent
from app.models import Job
from app.models import User
from app.services import accounts
from app.services import deprovisioning as dp
from tests.cli.helpers import assert_error
from tests.cli.helpers import run_json
from tests.conftest import base_config
from tests.jobs_helpers import add_members
from tests.jobs_helpers import job_state

JOB_KEYS = {"id", "status", "total", "done", "failed", "started_at", "finished_at"}


@pytest.fixture
def config(database_url) -> dict:
    # Eager tasks on either database: `jobs deprovision` then runs the job before it prints
    # it (the workers are tested in tests/tasks).
    return base_config(database_url, REDIS_URL="")


@pytest.fixture
def acme(app, make_account):
    account = make_account("Acme")
    add_members(app, account.id, 12, prefix="gone")
    return account


def count(app, model, *where) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


def test_dry_run_previews_and_changes_nothing(runner, app, acme):
    events = count(app, AuditEvent)

    preview = run_json(
        runner,
        "jobs",
        "deprovision",
        "--account",
        str(acme.id),
        "--filter",
        'userName sw "gone-"',
        "--dry-run",
    )

    assert preview["count"] == 12
    assert preview["dry_run"] is True
    assert set(preview["sample"]) <= {f"gone-{n}@example.com" for n in range(12)}
    assert len(preview["sample"]) == 10
    assert (count(app, Job), count(app, AuditEvent)) == (0, events)
    assert count(app, User, User.active.is_(False)) == 0
    text = runner.invoke(
        args=[
            "jobs",
            "deprovision",
            "--account",
            str(acme.id),
            "--filter",
            'userName eq "gone-3@example.com"',
            "--dry-run",
        ]
    )
    assert text.exit_code == 0
    assert "1 member(s) of account" in text.stdout and "gone-3@example.com" in text.stdout


def test_deprovision_runs_the_job_and_prints_it(runner, app, acme):
    job = run_json(
        runner, "jobs", "deprovision", "--account", str(acme.id), "--filter", 'userName sw "gone-"'
    )

    assert JOB_KEYS <= set(job)
    assert (job["status"], job["total"], job["done"], job["failed"]) == ("succeeded", 12, 12, 0)
    assert job["started_at"] and job["finished_at"]
    assert count(app, User, User.active.is_(False)) == 12
    assert run_json(runner, "jobs", "show", job["id"]) == job
    assert [j["id"] for j in run_json(runner, "jobs", "list")] == [job["id"]]
    assert [j["id"] for j in run_json(runner, "jobs", "list", "--account", str(acme.id))] == [
        job["id"]
    ]


def test_deprovision_from_a_csv_and_by_date(runner, app, acme, tmp_path):
    path = tmp_path / "leavers.csv"
    path.write_text("external_id\ngone-ext-1\ngone-ext-2\nunknown\n")

    preview = run_json(
        runner, "jobs", "deprovision", "--account", str(acme.id), "--csv", str(path), "--dry-run"
    )
    assert (preview["count"], preview["unmatched"]) == (2, 1)
    job = run_json(runner, "jobs", "deprovision", "--account", str(acme.id), "--csv", str(path))
    assert (job["done"], job["criteria"]) == (2, {"csv": {"column": "external_id", "rows": 3}})

    dated = run_json(
        runner,
        "jobs",
        "deprovision",
        "--account",
        str(acme.id),
        "--not-updated-since",
        "2000-01-01",
        "--dry-run",
    )
    assert dated["count"] == 0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "exactly one of --filter, --csv and --not-updated-since"),
        (
            ["--filter", "active eq false", "--not-updated-since", "2025-01-01"],
            "(got --filter, --not-updated-since)",
        ),
        (["--filter", 'userName eq "x'], "Filter is not valid"),
        (["--filter", 'userName eq "nobody"'], "no job was created"),
        (["--not-updated-since", "last week"], "YYYY-MM-DD"),
        (["--csv", "/nonexistent/leavers.csv"], "Cannot read"),
    ],
)
def test_bad_input_is_one_line_and_a_failure(runner, app, acme, args, fragment):
    result = runner.invoke(args=["jobs", "deprovision", "--account", str(acme.id), *args, "--json"])

    assert_error(result, fragment)
    assert count(app, Job) == 0


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("address\nx@example.com\n", "has neither email and external_id"),
        (
            "email\nx@example.com\nnot-an-email\n",
            "line 3: 'not-an-email' is not a valid email address",
        ),
    ],
)
def test_a_bad_csv_is_refused_and_nothing_created(runner, app, acme, tmp_path, content, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(content)

    result = runner.invoke(
        args=["jobs", "deprovision", "--account", str(acme.id), "--csv", str(path)]
    )

    assert_error(result, fragment)
    assert (count(app, Job), count(app, User, User.active.is_(False))) == (0, 0)


def test_unknown_account_and_job_are_errors(runner, acme):
    assert_error(
        runner.invoke(
            args=["jobs", "deprovision", "--account", "999", "--filter", "active eq true"]
        ),
        "No account with id 999",
    )
    assert_error(runner.invoke(args=["jobs", "list", "--account", "999"]), "No account")
    for command in ("show", "cancel", "retry"):
        assert_error(runner.invoke(args=["jobs", command, "not-a-job"]), "No job with id not-a-job")
    assert_error(
        runner.invoke(args=["jobs", "deprovision", "--filter", "active eq true"]), "--account"
    )


def test_cancel_and_retry(runner, app, acme):
    with app.app_context():
        job = dp.create_job(
            accounts.get_account(acme.id), dp.filter_criteria('userName sw "gone-"')
        )
        db.session.commit()
        job_id = str(job.id)

    cancelled = run_json(runner, "jobs", "cancel", job_id)

    assert (cancelled["status"], cancelled["cancelled"], cancelled["done"]) == ("cancelled", 12, 0)
    assert_error(runner.invoke(args=["jobs", "cancel", job_id]), "already finished")
    assert_error(runner.invoke(args=["jobs", "retry", job_id]), "was cancelled")

    finished = run_json(
        runner, "jobs", "deprovision", "--account", str(acme.id), "--filter", 'userName sw "gone-1"'
    )
    assert_error(runner.invoke(args=["jobs", "retry", finished["id"]]), "no failed items")
    with app.app_context():
        db.session.execute(
            dp._items.update()
            .where(dp._items.c.job_id == dp.get_job(finished["id"]).id)
            .values(state="failed", outcome="OperationalError: gone")
        )
        db.session.execute(
            dp._jobs.update()
            .where(dp._jobs.c.id == dp.get_job(finished["id"]).id)
            .values(status="failed", done=0, failed=finished["total"])
        )
        db.session.commit()

    retried = run_json(runner, "jobs", "retry", finished["id"])

    # Requeued and processed again: their users had already left, so they are skipped now.
    assert (retried["status"], retried["failed"], retried["skipped"]) == ("succeeded", 0, 3)
    assert job_state(app, finished["id"])["items"] == {"skipped": 3}


def test_list_without_jobs_and_text_output(runner, acme):
    assert run_json(runner, "jobs", "list") == []
    assert runner.invoke(args=["jobs", "list"]).stdout.strip() == "No jobs."
    result = runner.invoke(
        args=["jobs", "deprovision", "--account", str(acme.id), "--filter", 'userName sw "gone-"']
    )
    assert result.exit_code == 0
    assert "succeeded, 12 done, 0 failed" in result.stdout
