"""Bulk deprovisioning pages: /admin/accounts/<id>/jobs (list, preview, start, live progress,
per-item outcomes, cancel, retry).

The forms live here rather than in forms.py: they serve these views only, and the preview's
confirm form carries the criteria as one signed token (nothing is stored before the admin
confirms, so a preview changes nothing)."""

from __future__ import annotations

from typing import Any

from flask import abort
from flask import current_app
from flask import flash
from flask import g
from flask import jsonify
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from itsdangerous import BadSignature
from itsdangerous import SignatureExpired
from itsdangerous import URLSafeTimedSerializer
from wtforms import HiddenField
from wtforms import RadioField
from wtforms import SelectChoice
from wtforms import StringField

from app.blueprints.admin import bp
from app.blueprints.admin.forms import ActionForm
from app.extensions import db
from app.models import ItemState
from app.models import JobStatus
from app.permissions import account_role_required
from app.services import deprovisioning
from app.services.errors import NotFound
from app.services.errors import ValidationError
from app.tasks import deprovisioning as job_tasks
from app.web import request_meta

ITEMS_PAGE_SIZE = 50
# A preview's confirm button works this long (then the admin previews again).
PREVIEW_MAX_AGE = 60 * 60
# Upper bounds of the two requests that carry a CSV's values: the upload, and the confirm
# form with the signed (compressed) values. Werkzeug's defaults would refuse a large CSV's
# confirm form (500 kB of form fields) and accept an unbounded upload.
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_CONFIRM_FORM_BYTES = 16 * 1024 * 1024
METHODS = [
    SelectChoice("filter", "SCIM filter"),
    SelectChoice("not_updated_since", "Not updated by SCIM since a date"),
    SelectChoice("csv", "CSV file of emails or externalIds"),
]


class JobCriteriaForm(FlaskForm):
    """How the job chooses the account's members (one of three ways)."""

    method = RadioField("Choose users by", choices=METHODS, default="filter")
    filter = StringField(
        "SCIM filter",
        description='For example: active eq false, or emails.value ew "@old.example".',
    )
    not_updated_since = StringField(
        "Not updated since (UTC day)",
        render_kw={"type": "date", "placeholder": "YYYY-MM-DD"},
        description="Members whose SCIM record (meta.lastModified) last changed before this day.",
    )
    csv_file = FileField(
        "CSV file",
        description="A header row naming an email or an external_id column, one user per row.",
    )


class ConfirmJobForm(FlaskForm):
    """The preview's "Start" button: the criteria, signed so they cannot be altered."""

    criteria = HiddenField()


@bp.url_value_preprocessor
def _size_limits(endpoint: str | None, _values: dict[str, Any] | None) -> None:
    # Runs before the CSRF check reads the form, which is when the limits apply.
    if endpoint == "admin.jobs_preview":
        request.max_content_length = MAX_UPLOAD_BYTES
    elif endpoint == "admin.jobs_create":
        request.max_content_length = MAX_CONFIRM_FORM_BYTES
        request.max_form_memory_size = MAX_CONFIRM_FORM_BYTES


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="keyward.jobs.criteria")


def _job_or_404(account_id: int, job_id: str):
    try:
        # Another account's job is simply not found here.
        return deprovisioning.get_job(job_id, account_id=account_id)
    except NotFound:
        abort(404)


def _index(form: JobCriteriaForm, status: int = 200):
    return render_template(
        "admin/jobs.html",
        account=g.account,
        jobs=deprovisioning.list_jobs(account_id=g.account.id, limit=50),
        form=form,
    ), status


@bp.get("/jobs")
@account_role_required()
def jobs_index(account_id: int):
    return _index(JobCriteriaForm())


def _criteria_from(form: JobCriteriaForm) -> deprovisioning.Criteria:
    method = form.method.data
    if method == "filter":
        return deprovisioning.filter_criteria(form.filter.data or "")
    if method == "not_updated_since":
        return deprovisioning.not_updated_since_criteria(form.not_updated_since.data or "")
    if method == "csv":
        upload = form.csv_file.data
        if upload is None or not getattr(upload, "filename", ""):
            raise ValidationError("Choose a CSV file.", "csv_file")
        try:
            return deprovisioning.csv_criteria(
                upload.read(), max_rows=current_app.config["JOBS_CSV_MAX_ROWS"]
            )
        except ValidationError as error:
            raise ValidationError(error.message, "csv_file") from None
    raise ValidationError("Choose how to select users.", "method")


@bp.post("/jobs/preview")
@account_role_required()
def jobs_preview(account_id: int):
    """Count and sample the selected members; nothing is stored until the admin confirms."""
    form = JobCriteriaForm()
    if not form.validate_on_submit():
        return _index(form, 400)
    try:
        criteria = _criteria_from(form)
        preview = deprovisioning.preview_job(g.account, criteria, actor=current_user)
    except ValidationError as error:
        field = getattr(form, error.field or "", None) or form.method
        field.errors = [*field.errors, error.message]
        return _index(form, 400)
    confirm = ConfirmJobForm(
        criteria=_serializer().dumps({"account_id": account_id, **criteria.to_payload()})
    )
    return render_template(
        "admin/jobs_preview.html", account=g.account, preview=preview, form=confirm
    )


@bp.post("/jobs")
@account_role_required()
def jobs_create(account_id: int):
    """Start the previewed job, then show its progress."""
    form = ConfirmJobForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        payload = _serializer().loads(form.criteria.data or "", max_age=PREVIEW_MAX_AGE)
    except SignatureExpired:
        flash("That preview is more than an hour old: preview the job again.", "error")
        return redirect(url_for("admin.jobs_index", account_id=account_id), code=303)
    except BadSignature:
        abort(400)
    if payload.get("account_id") != account_id:
        abort(400)
    try:
        criteria = deprovisioning.Criteria.from_payload(payload)
        job = deprovisioning.create_job(
            g.account, criteria, actor=current_user, meta=request_meta()
        )
    except ValidationError as error:
        db.session.rollback()
        flash(error.message, "error")
        return redirect(url_for("admin.jobs_index", account_id=account_id), code=303)
    db.session.commit()
    job_id = job.id
    # With workers this queues the job; without Redis it runs now, chunk by chunk.
    job_tasks.start(job_id)
    flash(f"Deprovisioning job started for {job.total} users.", "success")
    return redirect(url_for("admin.jobs_show", account_id=account_id, job_id=job_id), code=303)


@bp.get("/jobs/<job_id>")
@account_role_required()
def jobs_show(account_id: int, job_id: str):
    job = _job_or_404(account_id, job_id)
    page = max(request.args.get("page", 1, type=int), 1)
    state = request.args.get("state") or None
    if state not in {None, *(s.value for s in ItemState)}:
        state = None
    items = deprovisioning.list_items(
        job, state=state, limit=ITEMS_PAGE_SIZE + 1, offset=(page - 1) * ITEMS_PAGE_SIZE
    )
    return render_template(
        "admin/jobs_show.html",
        account=g.account,
        job=job,
        progress=deprovisioning.progress(job),
        items=items[:ITEMS_PAGE_SIZE],
        has_more=len(items) > ITEMS_PAGE_SIZE,
        page=page,
        state=state,
        states=[s.value for s in ItemState],
        finished=JobStatus(job.status).finished,
        action_form=ActionForm(),
    )


@bp.get("/jobs/<job_id>/progress")
@account_role_required()
def jobs_progress(account_id: int, job_id: str):
    """The job page's live numbers (polled by static/job-progress.js)."""
    job = _job_or_404(account_id, job_id)
    return jsonify(deprovisioning.progress(job))


@bp.post("/jobs/<job_id>/cancel")
@account_role_required()
def jobs_cancel(account_id: int, job_id: str):
    if not ActionForm().validate_on_submit():
        abort(400)
    job = _job_or_404(account_id, job_id)
    try:
        cancelled = deprovisioning.cancel_job(job, actor=current_user, meta=request_meta())
    except ValidationError as error:
        db.session.rollback()
        flash(error.message, "error")
    else:
        db.session.commit()
        flash(f"Job cancelled: {cancelled} users were not processed.", "success")
    return redirect(url_for("admin.jobs_show", account_id=account_id, job_id=job_id), code=303)


@bp.post("/jobs/<job_id>/retry")
@account_role_required()
def jobs_retry(account_id: int, job_id: str):
    if not ActionForm().validate_on_submit():
        abort(400)
    job = _job_or_404(account_id, job_id)
    try:
        retried = deprovisioning.retry_job(job, actor=current_user, meta=request_meta())
    except ValidationError as error:
        db.session.rollback()
        flash(error.message, "error")
    else:
        db.session.commit()
        job_tasks.start(job.id)
        flash(f"{retried} failed users queued again.", "success")
    return redirect(url_for("admin.jobs_show", account_id=account_id, job_id=job_id), code=303)
