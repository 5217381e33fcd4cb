"""`flask jobs`: start (or preview) bulk deprovisioning jobs, list, show, cancel and retry them."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app

from app.cli.output import KeywardGroup
from app.cli.output import OneLineUsageError
from app.cli.output import emit
from app.cli.output import service_errors
from app.extensions import db
from app.models import Job
from app.services import accounts
from app.services import deprovisioning
from app.services.errors import NotFound
from app.services.errors import ValidationError
from app.tasks import deprovisioning as job_tasks

jobs_cli = KeywardGroup("jobs", help="Bulk deprovisioning jobs.")


def _account(account_id: int):
    try:
        return accounts.get_account(account_id)
    except NotFound:
        raise ValidationError(f"No account with id {account_id}.") from None


def _summary(job: Job) -> str:
    return (
        f"Job {job.id} ({job.kind}, account {job.account_id}): {job.status}, "
        f"{job.done} done, {job.failed} failed, {job.skipped} skipped, "
        f"{job.cancelled} cancelled of {job.total}"
    )


def _criteria(
    filter_text: str | None, csv_path: Path | None, since: str | None
) -> deprovisioning.Criteria:
    options = {"--filter": filter_text, "--csv": csv_path, "--not-updated-since": since}
    given = [name for name, value in options.items() if value is not None]
    if len(given) != 1:
        raise OneLineUsageError(
            "give exactly one of --filter, --csv and --not-updated-since"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if filter_text is not None:
        return deprovisioning.filter_criteria(filter_text)
    if since is not None:
        return deprovisioning.not_updated_since_criteria(since)
    assert csv_path is not None
    try:
        data = csv_path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"Cannot read {csv_path}: {exc.strerror or exc}.") from None
    return deprovisioning.csv_criteria(data, max_rows=current_app.config["JOBS_CSV_MAX_ROWS"])


@jobs_cli.command("deprovision")
@click.option("--account", "account_id", type=int, required=True, help="Account id.")
@click.option("--filter", "filter_text", default=None, help='SCIM filter, e.g. "active eq false".')
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CSV file with a header row naming an email or external_id column.",
)
@click.option(
    "--not-updated-since",
    "since",
    default=None,
    help="Users whose last change (SCIM meta.lastModified) is before this date (YYYY-MM-DD).",
)
@click.option("--dry-run", is_flag=True, help="Only preview: count and sample, nothing changed.")
@click.option("--json", "as_json", is_flag=True, help="Print the job (or preview) as JSON.")
@service_errors
def deprovision(account_id, filter_text, csv_path, since, dry_run, as_json) -> None:
    """Deprovision the account's members chosen by a SCIM filter, a CSV of emails or
    externalIds, or their last change. Without Redis the job runs now, in this process;
    with it, the workers run it and this prints the queued job."""
    account = _account(account_id)
    criteria = _criteria(filter_text, csv_path, since)
    if dry_run:
        preview = deprovisioning.preview_job(account, criteria)
        sample = "\n".join(f"  {email}" for email in preview.sample)
        text = f"{preview.count} member(s) of account {account.id} would be deprovisioned"
        if preview.unmatched:
            text += f" ({preview.unmatched} CSV value(s) match no member)"
        emit(preview.serialise(), as_json, text + (":\n" + sample if sample else "."))
        return
    job = deprovisioning.create_job(account, criteria, actor_label="cli")
    db.session.commit()
    job_tasks.start(job.id)
    db.session.expire_all()
    job = deprovisioning.get_job(job.id)
    emit(deprovisioning.serialise(job), as_json, _summary(job))


@jobs_cli.command("list")
@click.option("--account", "account_id", type=int, default=None, help="Only this account.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@service_errors
def list_jobs(account_id: int | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    if account_id is not None:
        _account(account_id)
    rows = deprovisioning.list_jobs(account_id=account_id, limit=limit)
    emit(
        [deprovisioning.serialise(job) for job in rows],
        as_json,
        "\n".join(_summary(job) for job in rows) or "No jobs.",
    )


@jobs_cli.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@service_errors
def show_job(job_id: str, as_json: bool) -> None:
    """Show a job's status and counts."""
    job = deprovisioning.get_job(job_id)
    emit(deprovisioning.serialise(job), as_json, _summary(job))


@jobs_cli.command("cancel")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@service_errors
def cancel_job(job_id: str, as_json: bool) -> None:
    """Cancel a job: the items not processed yet are cancelled; the done ones stay done."""
    job = deprovisioning.get_job(job_id)
    deprovisioning.cancel_job(job)
    db.session.commit()
    job = deprovisioning.get_job(job_id)
    emit(deprovisioning.serialise(job), as_json, _summary(job))


@jobs_cli.command("retry")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@service_errors
def retry_job(job_id: str, as_json: bool) -> None:
    """Queue a job's failed items again (without Redis: process them now)."""
    job = deprovisioning.get_job(job_id)
    deprovisioning.retry_job(job)
    db.session.commit()
    job_tasks.start(job.id)
    db.session.expire_all()
    job = deprovisioning.get_job(job_id)
    emit(deprovisioning.serialise(job), as_json, _summary(job))
