"""Account administration: /admin/accounts/<id> (members, audit log, SCIM tokens)."""

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin/accounts/<int:account_id>")

from app.blueprints.admin import jobs  # noqa: E402,F401
from app.blueprints.admin import routes  # noqa: E402,F401
from app.blueprints.admin import scim_tokens  # noqa: E402,F401
