"""Operator endpoints: /healthz, /readyz, /metrics."""

from flask import Blueprint

bp = Blueprint("ops", __name__)

from app.blueprints.ops import routes  # noqa: E402,F401
