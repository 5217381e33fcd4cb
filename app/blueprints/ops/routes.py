"""Views of the ops blueprint (JSON and Prometheus text; no session needed)."""

from __future__ import annotations

import logging
import os

from flask import Response
from flask import current_app
from flask import jsonify
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client import multiprocess

from app.blueprints.ops import bp
from app.services import health

log = logging.getLogger(__name__)


@bp.route("/healthz")
def healthz():
    """Liveness: the process answers."""
    return jsonify(status="ok")


@bp.route("/readyz")
def readyz():
    """Readiness: 200 when the database (and Redis, when configured) answer, else 503."""
    checks = health.check_dependencies(current_app.config.get("REDIS_URL"))
    ready = all(check["ok"] for check in checks.values())
    return jsonify(status="ready" if ready else "unavailable", checks=checks), (
        200 if ready else 503
    )


@bp.route("/metrics")
def metrics():
    """Prometheus text format. Under gunicorn with PROMETHEUS_MULTIPROC_DIR set, the
    numbers of every worker process are added together."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        payload = generate_latest(registry)
    else:
        payload = generate_latest()
    return Response(payload, mimetype=CONTENT_TYPE_LATEST)
