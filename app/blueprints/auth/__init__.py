"""Sign-in and sign-out: /login, /login/<slug>, /logout."""

from flask import Blueprint

bp = Blueprint("auth", __name__)

from app.blueprints.auth import federated  # noqa: E402,F401
from app.blueprints.auth import routes  # noqa: E402,F401
