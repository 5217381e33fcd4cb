"""An account admin starts a deprovisioning job in Chromium and watches its progress bar move
to 100% without reloading the page (static/job-progress.js polling the progress JSON).

The job's chunks are slowed down (JOBS_CHUNK_DELAY_MS) so the bar has time to move. With
TEST_REDIS_URL a Celery worker started here runs the job; without Redis the web process runs
it eagerly inside the "Start" request, so the admin watches it from a second tab while the
other gunicorn worker answers the page and its polls.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from playwright.sync_api import BrowserContext
from playwright.sync_api import expect
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import Job
from tests.conftest import DEFAULT_PASSWORD
from tests.jobs_helpers import JobProcess
from tests.jobs_helpers import add_members
from tests.jobs_helpers import job_state
from tests.live_server import LiveServer
from tests.tasks.conftest import TEST_REDIS_URL

pytestmark = pytest.mark.browser

USERS = 400
QUEUE = f"keyward-test-browser-jobs-{uuid.uuid4().hex[:8]}"
# 20 chunks of 20 users, a quarter of a second each: about five seconds in all.
JOB_ENV = {"JOBS_QUEUE": QUEUE, "JOBS_CHUNK_SIZE": "20", "JOBS_CHUNK_DELAY_MS": "250"}


@pytest.fixture(scope="module")
def live_server(database_url: str) -> Iterator[LiveServer]:
    with LiveServer(database_url, env=JOB_ENV, workers=2) as server:
        yield server


@pytest.fixture(scope="module")
def job_worker(database_url: str, tmp_path_factory) -> Iterator[JobProcess | None]:
    """With Redis, the Celery worker that runs the job (on this module's own queue)."""
    if not TEST_REDIS_URL:
        yield None
        return
    worker = JobProcess(
        database_url, tmp_path_factory.mktemp("job-worker"), "browser", QUEUE, JOB_ENV
    )
    worker.start_worker()
    try:
        yield worker
    finally:
        worker.stop()


def _sign_in(context: BrowserContext, email: str, base_url: str):
    page = context.new_page()
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base_url}/")
    return page


def _jobs(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Job))


def test_admin_watches_a_job_progress_bar_reach_100_percent(
    app, context: BrowserContext, live_server: LiveServer, job_worker, make_account, make_user
) -> None:
    account = make_account("Acme Rockets", "acme-rockets")
    admin = make_user("admin@acme.example", account_id=account.id, role="admin")
    add_members(app, account.id, USERS, prefix="leaver")
    jobs_page = f"/admin/accounts/{account.id}/jobs"

    page = _sign_in(context, admin.email, live_server.url)
    page.goto(f"/admin/accounts/{account.id}")
    page.get_by_role("link", name="Deprovisioning jobs").click()
    page.get_by_role("textbox", name="SCIM filter").fill('userName sw "leaver-"')
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#preview-count")).to_have_text(str(USERS))
    assert _jobs(app) == 0  # a preview changes nothing

    # Start: with a worker the page moves on at once; without one this request runs the job.
    page.get_by_role("button", name="Start deprovisioning").click(no_wait_after=True)

    deadline = time.monotonic() + 10
    while _jobs(app) == 0:
        assert time.monotonic() < deadline, "the job was never created"
        time.sleep(0.05)
    watcher = context.new_page()
    watcher.goto(jobs_page)
    watcher.locator("table.jobs a").first.click()
    bar = watcher.locator("#job-progress")
    expect(bar).to_have_attribute("aria-valuemax", str(USERS))
    watcher.evaluate("window.keywardMarker = 'no reload'")

    seen: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        value = int(bar.evaluate("bar => bar.value"))
        if not seen or seen[-1] != value:
            seen.append(value)
        if value == USERS:
            break
        time.sleep(0.05)

    assert seen[-1] == USERS, f"the bar stopped at {seen}"
    moving = [value for value in seen if 0 < value < USERS]
    assert moving, f"the bar never showed the job part-way through: {seen}"
    assert seen == sorted(seen)
    # Updated in place, by the script: the same document, with its ARIA values and counts.
    assert watcher.evaluate("window.keywardMarker") == "no reload"
    expect(bar).to_have_attribute("aria-valuenow", str(USERS))
    expect(watcher.locator('#job-counts [data-field="done"]')).to_have_text(str(USERS))
    expect(watcher.locator("#job-live")).to_contain_text("Finished: succeeded")
    expect(watcher.get_by_role("button", name="Cancel")).to_have_count(0)

    # The tab that pressed Start ends on the same job page.
    expect(page.locator("#job-progress")).to_have_attribute("aria-valuenow", str(USERS))
    job_id = watcher.url.rsplit("/", 1)[1]
    state = job_state(app, job_id)
    assert (state["status"], state["done"]) == ("succeeded", USERS)
