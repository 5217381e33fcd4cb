"""Views of the home blueprint."""

from __future__ import annotations

from flask import jsonify
from flask import render_template
from flask_login import current_user
from flask_login import login_required

from app.blueprints.auth.federated import whoami_extra
from app.blueprints.home import bp
from app.models import Role
from app.services import accounts


@bp.route("/")
@login_required
def index():
    memberships = accounts.memberships_of(current_user)
    return render_template(
        "home/index.html",
        memberships=memberships,
        admin_rank=Role.ADMIN.rank,
    )


@bp.route("/whoami")
def whoami():
    """Who the browser is signed in as, for connected apps and tests (DESIGN contract)."""
    if not current_user.is_authenticated:
        return jsonify(authenticated=False)
    return jsonify(
        authenticated=True,
        id=str(current_user.id),
        email=current_user.email,
        account_ids=[m.account_id for m in accounts.memberships_of(current_user)],
        **whoami_extra(),
    )
