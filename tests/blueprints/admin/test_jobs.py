"""Deprovisioning job pages: access, preview (nothing changes) then start, the job page with
its progress bar and JSON, per-item outcomes, CSV upload errors, cancel and retry."""

from __future__ import annotations

import io
import re
import uuid

import pytest
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent
from app.models import Job
from app.models import JobItem
from app.models import User
from app.services import accounts
from app.services import deprovisioning as dp
from tests.conftest import AuthActions
from tests.conftest import base_config
from tests.conftest import csrf_token_from
from tests.jobs_helpers import add_members
from tests.jobs_helpers import job_state


@pytest.fixture
def config(database_url) -> dict:
    # These pages are tested with eager tasks on either database: the workers themselves are
    # tested in tests/tasks (a job started here runs before the redirect).
    return base_config(database_url, REDIS_URL="")


@pytest.fixture
def two_accounts(app, make_account, make_user):
    acme, globex = make_account("Acme"), make_account("Globex")
    people = {
        "acme_admin": make_user("admin@acme.example", account_id=acme.id, role="admin"),
        "acme_member": make_user("member@acme.example", account_id=acme.id, role="member"),
        "globex_admin": make_user("admin@globex.example", account_id=globex.id, role="admin"),
        "loner": make_user("loner@example.com"),
    }
    add_members(app, acme.id, 60, prefix="leaver")
    add_members(app, globex.id, 3, prefix="leaver-globex")
    return acme, globex, people


def browser_for(app, user):
    client = app.test_client()
    assert AuthActions(client).login(user.email).status_code == 303
    return client


def jobs_url(account_id: int, rest: str = "") -> str:
    return f"/admin/accounts/{account_id}/jobs{rest}"


def preview(client, account_id: int, **form):
    token = csrf_token_from(client.get(jobs_url(account_id)).text)
    return client.post(
        jobs_url(account_id, "/preview"),
        data={"csrf_token": token, **form},
        content_type="multipart/form-data",
    )


def confirm_token(html: str) -> str:
    match = re.search(r'name="criteria" type="hidden" value="([^"]+)"', html) or re.search(
        r'id="criteria" name="criteria" type="hidden" value="([^"]+)"', html
    )
    assert match, "the preview has no confirm form"
    return match.group(1)


def start(client, account_id: int, preview_html: str):
    return client.post(
        jobs_url(account_id),
        data={"csrf_token": csrf_token_from(preview_html), "criteria": confirm_token(preview_html)},
    )


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def make_job(app, account_id: int, filter_text: str) -> uuid.UUID:
    with app.app_context():
        job = dp.create_job(accounts.get_account(account_id), dp.filter_criteria(filter_text))
        db.session.commit()
        return job.id


# --- access --------------------------------------------------------------------------------
def _requests(acme_id: int, job_id: uuid.UUID):
    return [
        ("get", jobs_url(acme_id)),
        ("post", jobs_url(acme_id, "/preview")),
        ("post", jobs_url(acme_id)),
        ("get", jobs_url(acme_id, f"/{job_id}")),
        ("get", jobs_url(acme_id, f"/{job_id}/progress")),
        ("post", jobs_url(acme_id, f"/{job_id}/cancel")),
        ("post", jobs_url(acme_id, f"/{job_id}/retry")),
    ]


@pytest.mark.parametrize("who", ["acme_member", "globex_admin", "loner"])
def test_everyone_but_the_accounts_admins_gets_403(app, two_accounts, who):
    acme, _, people = two_accounts
    job_id = make_job(app, acme.id, 'userName sw "leaver-"')
    browser = browser_for(app, people[who])
    token = csrf_token_from(browser.get("/account").text)

    for method, url in _requests(acme.id, job_id):
        data = {"csrf_token": token} if method == "post" else None
        response = browser.open(url, method=method.upper(), data=data)
        assert response.status_code == 403, url
    assert job_state(app, job_id)["status"] == "queued"


def test_anonymous_visitors_are_sent_to_sign_in(client, app, two_accounts):
    acme, _, _ = two_accounts
    job_id = make_job(app, acme.id, 'userName sw "leaver-"')
    for method, url in _requests(acme.id, job_id):
        if method == "get":
            response = client.get(url)
            assert response.status_code == 303
            assert response.headers["Location"].startswith("/login?next=")


def test_another_accounts_job_is_not_found_here(app, two_accounts):
    acme, globex, people = two_accounts
    globex_job = make_job(app, globex.id, 'userName sw "leaver-"')
    browser = browser_for(app, people["acme_admin"])

    assert browser.get(jobs_url(acme.id, f"/{globex_job}")).status_code == 404
    assert browser.get(jobs_url(acme.id, f"/{globex_job}/progress")).status_code == 404
    response = AuthActions(browser).post(jobs_url(acme.id, f"/{globex_job}/cancel"))
    assert response.status_code == 404
    assert browser.get(jobs_url(acme.id, "/not-a-uuid")).status_code == 404
    assert job_state(app, globex_job)["status"] == "queued"


# --- preview and start ---------------------------------------------------------------------
def test_preview_shows_count_and_sample_and_changes_nothing(app, two_accounts):
    acme, _, people = two_accounts
    browser = browser_for(app, people["acme_admin"])
    jobs, events = count(app, Job), count(app, AuditEvent)

    response = preview(browser, acme.id, method="filter", filter='userName sw "leaver-"')

    assert response.status_code == 200
    assert '<dd id="preview-count">60</dd>' in response.text
    assert "leaver-0@example.com" in response.text
    assert "leaver-globex" not in response.text
    assert "Start deprovisioning" in response.text
    assert (count(app, Job), count(app, AuditEvent)) == (jobs, events)
    with app.app_context():
        assert db.session.scalar(select(func.count()).where(User.active.is_(False))) == 0


def test_starting_the_previewed_job_runs_it_and_shows_its_page(app, two_accounts):
    acme, globex, people = two_accounts
    browser = browser_for(app, people["acme_admin"])
    page = preview(browser, acme.id, method="filter", filter='userName sw "leaver-"').text

    response = start(browser, acme.id, page)

    assert response.status_code == 303
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    state = job_state(app, job_id)
    assert (state["status"], state["total"], state["done"]) == ("succeeded", 60, 60)
    assert state["created_by"] == "admin@acme.example"
    assert state["account_id"] == acme.id

    page = browser.get(response.headers["Location"])
    assert page.status_code == 200
    assert 'id="job-progress" max="60" value="60"' in page.text
    assert 'aria-valuenow="60"' in page.text and 'aria-valuemax="60"' in page.text
    assert "job-progress.js" in page.text
    assert "<script>" not in page.text  # CSP: no inline script
    assert "leaver-0@example.com" in page.text
    assert dp.OUTCOME_MANAGED in page.text
    assert 'rel="next"' in page.text or ">Next</a>" in page.text  # 60 items, 50 a page
    second = browser.get(jobs_url(acme.id, f"/{job_id}?page=2"))
    assert second.text.count(dp.OUTCOME_MANAGED) == 10

    progress = browser.get(jobs_url(acme.id, f"/{job_id}/progress"))
    assert progress.is_json
    body = progress.get_json()
    assert {k: body[k] for k in ("status", "total", "done", "failed", "percent", "finished")} == {
        "status": "succeeded",
        "total": 60,
        "done": 60,
        "failed": 0,
        "percent": 100.0,
        "finished": True,
    }
    assert body["id"] == job_id and body["started_at"] and body["finished_at"]
    # Globex's members were never touched.
    with app.app_context():
        globex_members = accounts.members_of(accounts.get_account(globex.id))
        assert all(m.user.active for m in globex_members)
    listing = browser.get(jobs_url(acme.id))
    assert job_id in listing.text and "succeeded" in listing.text


def test_a_csv_upload_selects_members_and_reports_unmatched_rows(app, two_accounts):
    acme, _, people = two_accounts
    browser = browser_for(app, people["acme_admin"])
    csv = b"email\nleaver-1@example.com\nLEAVER-2@example.com\nleaver-globex-0@example.com\n"

    response = preview(browser, acme.id, method="csv", csv_file=(io.BytesIO(csv), "leavers.csv"))

    assert response.status_code == 200
    assert '<dd id="preview-count">2</dd>' in response.text
    assert '<dd id="preview-unmatched">1</dd>' in response.text
    started = start(browser, acme.id, response.text)
    job_id = started.headers["Location"].rsplit("/", 1)[1]
    state = job_state(app, job_id)
    assert (state["done"], state["criteria"]) == (2, {"csv": {"column": "email", "rows": 3}})


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        (b"mail\nleaver-1@example.com\n", "has neither email and external_id"),
        (
            b"email\nleaver-1@example.com\nnot an email\n",
            "line 3: &#39;not an email&#39; is not a valid",
        ),
    ],
)
def test_a_bad_csv_is_refused_with_a_clear_error_and_nothing_created(
    app, two_accounts, csv, message
):
    acme, _, people = two_accounts
    browser = browser_for(app, people["acme_admin"])
    jobs, events = count(app, Job), count(app, AuditEvent)

    response = preview(browser, acme.id, method="csv", csv_file=(io.BytesIO(csv), "x.csv"))

    assert response.status_code == 400
    assert message in response.text
    assert 'aria-invalid="true"' in response.text
    assert (count(app, Job), count(app, AuditEvent)) == (jobs, events)


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"method": "filter", "filter": 'userName eq "x'}, "Filter is not valid"),
        ({"method": "filter", "filter": 'shoeSize eq "x"'}, "Filter is not valid"),
        ({"method": "not_updated_since", "not_updated_since": "yesterday"}, "YYYY-MM-DD"),
        ({"method": "csv"}, "Choose a CSV file."),
    ],
)
def test_bad_criteria_are_shown_on_the_form(app, two_accounts, form, message):
    acme, _, people = two_accounts
    response = preview(browser_for(app, people["acme_admin"]), acme.id, **form)
    assert response.status_code == 400
    assert message in response.text
    assert count(app, Job) == 0


def test_a_date_selects_members_not_updated_since(app, two_accounts):
    acme, _, people = two_accounts
    response = preview(
        browser_for(app, people["acme_admin"]),
        acme.id,
        method="not_updated_since",
        not_updated_since="2000-01-01",
    )
    assert response.status_code == 200
    assert "No member of this account matches" in response.text
    assert "Start deprovisioning" not in response.text


def test_a_tampered_or_foreign_confirmation_is_refused(app, two_accounts):
    acme, globex, people = two_accounts
    acme_browser = browser_for(app, people["acme_admin"])
    page = preview(acme_browser, acme.id, method="filter", filter='userName sw "leaver-"').text
    token = confirm_token(page)
    csrf = csrf_token_from(page)

    tampered = acme_browser.post(
        jobs_url(acme.id), data={"csrf_token": csrf, "criteria": token[:-3] + "xyz"}
    )
    assert tampered.status_code == 400

    # Globex's admin replays Acme's confirmation against Globex: refused.
    globex_browser = browser_for(app, people["globex_admin"])
    globex_csrf = csrf_token_from(globex_browser.get(jobs_url(globex.id)).text)
    replayed = globex_browser.post(
        jobs_url(globex.id), data={"csrf_token": globex_csrf, "criteria": token}
    )
    assert replayed.status_code == 400
    assert count(app, Job) == 0


# --- cancel and retry ----------------------------------------------------------------------
def test_cancel_and_retry_from_the_job_page(app, two_accounts):
    acme, _, people = two_accounts
    browser = browser_for(app, people["acme_admin"])
    job_id = make_job(app, acme.id, 'userName sw "leaver-"')
    page = browser.get(jobs_url(acme.id, f"/{job_id}"))
    assert ">Cancel</button>" in page.text

    cancelled = AuthActions(browser).post(jobs_url(acme.id, f"/{job_id}/cancel"))

    assert cancelled.status_code == 303
    state = job_state(app, job_id)
    assert (state["status"], state["cancelled"], state["done"]) == ("cancelled", 60, 0)
    again = browser.get(cancelled.headers["Location"])
    assert "Job cancelled: 60 users were not processed." in again.text
    assert ">Cancel</button>" not in again.text
    with app.app_context():
        assert (
            db.session.scalar(select(func.count()).where(AuditEvent.action == "job.cancelled")) == 1
        )

    refused = AuthActions(browser).post(jobs_url(acme.id, f"/{job_id}/retry"))
    assert (
        "was cancelled; start a new job instead." in browser.get(refused.headers["Location"]).text
    )


def test_retry_requeues_failed_items(app, two_accounts):
    acme, _, people = two_accounts
    browser = browser_for(app, people["acme_admin"])
    job_id = make_job(app, acme.id, 'userName sw "leaver-1"')  # leaver-1, leaver-10..19
    with app.app_context():
        claim = dp.claim_chunk(job_id, "w", size=100, lease_seconds=60)
        db.session.commit()
        dp.fail_items(claim, claim.item_ids[:3], "OperationalError: database went away")
        dp.process_chunk(claim)
        dp.finish_if_complete(job_id, lease_seconds=60)
        db.session.commit()
    page = browser.get(jobs_url(acme.id, f"/{job_id}?state=failed"))
    assert page.text.count("OperationalError: database went away") == 3
    assert ">Retry failed users</button>" in page.text

    response = AuthActions(browser).post(jobs_url(acme.id, f"/{job_id}/retry"))

    assert response.status_code == 303
    state = job_state(app, job_id)
    assert (state["status"], state["done"], state["failed"]) == ("succeeded", 11, 0)
    with app.app_context():
        retried = db.session.scalars(select(JobItem).where(JobItem.attempt == 2)).all()
        assert len(retried) == 3


def test_the_overview_links_to_the_jobs(app, two_accounts):
    acme, _, people = two_accounts
    page = browser_for(app, people["acme_admin"]).get(f"/admin/accounts/{acme.id}")
    assert f'href="/admin/accounts/{acme.id}/jobs"' in page.text
