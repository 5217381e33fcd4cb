"""The audit page's date filters (since/until, whole UTC days) next to the action filter."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

import pytest

from app.extensions import db
from app.models import AuditEvent
from app.services import audit
from tests.blueprints.admin.test_access import browser_for

TIMES = {
    "test.jan.early": datetime(2025, 1, 1, 0, 0, 0, tzinfo=UTC),
    "test.jan.late": datetime(2025, 1, 31, 23, 59, 59, tzinfo=UTC),
    "test.feb.first": datetime(2025, 2, 1, 0, 0, 0, tzinfo=UTC),
    "test.mar.mid": datetime(2025, 3, 15, 12, 0, 0, tzinfo=UTC),
}


@pytest.fixture
def dated(app, make_account, make_user):
    acme = make_account("Acme")
    admin = make_user("admin@acme.example", account_id=acme.id, role="admin")
    with app.app_context():
        for action, when in TIMES.items():
            db.session.add(AuditEvent(action=action, account_id=acme.id, occurred_at=when))
        db.session.commit()
    return acme, browser_for(app, admin)


def _shown(html: str) -> set[str]:
    return {action for action in TIMES if f"<code>{action}</code>" in html}


@pytest.mark.parametrize(
    "query,expected",
    [
        ("since=2025-02-01", {"test.feb.first", "test.mar.mid"}),
        ("until=2025-01-31", {"test.jan.early", "test.jan.late"}),
        ("since=2025-01-31&until=2025-02-01", {"test.jan.late", "test.feb.first"}),
        ("since=2025-03-15&until=2025-03-15", {"test.mar.mid"}),
        ("action=test.jan&since=2025-01-15", {"test.jan.late"}),
        ("", set(TIMES)),
    ],
)
def test_date_filters_keep_whole_utc_days(dated, query, expected):
    acme, browser = dated
    response = browser.get(f"/admin/accounts/{acme.id}/audit?{query}")
    assert response.status_code == 200
    assert _shown(response.text) == expected


def test_filters_are_kept_in_the_form_and_the_pager(app, dated, monkeypatch):
    from app.blueprints.admin import routes

    monkeypatch.setattr(routes, "AUDIT_PAGE_SIZE", 1)
    acme, browser = dated
    html = browser.get(f"/admin/accounts/{acme.id}/audit?since=2025-01-01&until=2025-03-31").text
    assert 'name="since" type="date" value="2025-01-01"' in html
    assert 'name="until" type="date" value="2025-03-31"' in html
    assert "since=2025-01-01" in html and "until=2025-03-31" in html and "page=2" in html


@pytest.mark.parametrize(
    "query,field,message",
    [
        ("since=yesterday", "since", "From must be a date written YYYY-MM-DD"),
        ("until=2025-02-30", "until", "To must be a date written YYYY-MM-DD"),
        ("since=20250101", "since", "From must be a date written YYYY-MM-DD"),
        ("since=2025-03-01&until=2025-02-01", "until", "To must not be before From"),
    ],
)
def test_invalid_dates_answer_a_message_not_an_error(dated, query, field, message):
    acme, browser = dated
    response = browser.get(f"/admin/accounts/{acme.id}/audit?{query}")
    assert response.status_code == 400
    assert message in response.text
    assert f'aria-describedby="{field}-errors"' in response.text
    assert "Something went wrong" not in response.text


def test_list_events_takes_a_time_range(app, dated):
    acme, _ = dated
    with app.app_context():
        rows = audit.list_events(
            account_id=acme.id,
            since=datetime(2025, 1, 31, 23, 59, 59, tzinfo=UTC),
            until=datetime(2025, 3, 15, 12, 0, 0, tzinfo=UTC),
        )
        # since included, until excluded, newest first.
        assert [r.action for r in rows] == ["test.feb.first", "test.jan.late"]
        # Existing callers (no range) see everything.
        assert {r.action for r in audit.list_events(account_id=acme.id)} >= set(TIMES)
