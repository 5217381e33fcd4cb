"""Views of the admin blueprint; every one goes through account_role_required."""

from __future__ import annotations

from flask import g
from flask import render_template
from flask import request

from app.blueprints.admin import bp
from app.permissions import account_role_required
from app.services import accounts
from app.services import audit

AUDIT_PAGE_SIZE = 50


@bp.route("")
@account_role_required()
def overview(account_id: int):
    return render_template(
        "admin/overview.html", account=g.account, members=accounts.members_of(g.account)
    )


@bp.route("/audit")
@account_role_required()
def audit_log(account_id: int):
    page = max(request.args.get("page", 1, type=int), 1)
    action = (request.args.get("action") or "").strip()[:100]
    events = audit.list_events(
        account_id=account_id,
        action_prefix=action or None,
        limit=AUDIT_PAGE_SIZE + 1,
        offset=(page - 1) * AUDIT_PAGE_SIZE,
    )
    return render_template(
        "admin/audit.html",
        account=g.account,
        events=events[:AUDIT_PAGE_SIZE],
        has_more=len(events) > AUDIT_PAGE_SIZE,
        page=page,
        action=action,
    )
