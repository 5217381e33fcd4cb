"""SSO provider management for account admins: /admin/accounts/<id>/sso-providers."""

from flask import Blueprint

bp = Blueprint("providers", __name__, url_prefix="/admin/accounts/<int:account_id>/sso-providers")

from app.blueprints.providers import routes  # noqa: E402,F401
from app.blueprints.providers import test_signin  # noqa: E402,F401
