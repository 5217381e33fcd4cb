"""/scim/v2: the SCIM 2.0 API (RFC 7644). JSON only, bearer tokens, CSRF-exempt, SCIM errors."""

from flask import Blueprint

from app.extensions import csrf

bp = Blueprint("scim", __name__, url_prefix="/scim/v2")
# Bearer-token API called by identity providers: no cookies, so no CSRF to forge.
csrf.exempt(bp)

from app.blueprints.scim import routes  # noqa: E402,F401
