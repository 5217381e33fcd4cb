"""Views of the admin blueprint; every one goes through account_role_required."""

from __future__ import annotations

import re
from datetime import UTC
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta

from flask import g
from flask import render_template
from flask import request

from app.blueprints.admin import bp
from app.permissions import account_role_required
from app.services import accounts
from app.services import audit

AUDIT_PAGE_SIZE = 50
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


@bp.route("")
@account_role_required()
def overview(account_id: int):
    return render_template(
        "admin/overview.html", account=g.account, members=accounts.members_of(g.account)
    )


def _day_arg(name: str, label: str, errors: dict[str, str]) -> date | None:
    """A YYYY-MM-DD query argument; a malformed one adds a message to ``errors``."""
    raw = (request.args.get(name) or "").strip()[:20]
    if not raw:
        return None
    try:
        # fromisoformat also reads "20240131" and week dates: only the written-out form.
        if not _DAY.fullmatch(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        errors[name] = f"{label} must be a date written YYYY-MM-DD, e.g. 2025-01-31."
        return None


@bp.route("/audit")
@account_role_required()
def audit_log(account_id: int):
    page = max(request.args.get("page", 1, type=int), 1)
    action = (request.args.get("action") or "").strip()[:100]
    errors: dict[str, str] = {}
    since = _day_arg("since", "From", errors)
    until = _day_arg("until", "To", errors)
    if since and until and until < since:
        errors["until"] = "To must not be before From."
        until = None
    events = audit.list_events(
        account_id=account_id,
        action_prefix=action or None,
        # Whole UTC days: "until" includes its day.
        since=datetime.combine(since, time.min, UTC) if since else None,
        until=datetime.combine(until + timedelta(days=1), time.min, UTC) if until else None,
        limit=AUDIT_PAGE_SIZE + 1,
        offset=(page - 1) * AUDIT_PAGE_SIZE,
    )
    filters = {
        "action": action or None,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
    }
    return render_template(
        "admin/audit.html",
        account=g.account,
        events=events[:AUDIT_PAGE_SIZE],
        has_more=len(events) > AUDIT_PAGE_SIZE,
        page=page,
        action=action,
        since=request.args.get("since", "")[:20],
        until=request.args.get("until", "")[:20],
        filters=filters,
        errors=errors,
    ), (400 if errors else 200)
