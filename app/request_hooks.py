"""Per-request plumbing: request ids (correlation ids) and Prometheus request metrics."""

from __future__ import annotations

import re
import time
import uuid

from flask import Flask
from flask import g
from flask import request

from app.extensions import http_request_duration
from app.extensions import http_requests

# An incoming X-Request-ID (from the load balancer) is kept only when it looks like an id;
# anything else could smuggle text into log lines.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def register_request_hooks(app: Flask) -> None:
    @app.before_request
    def assign_request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
        g.request_started = time.perf_counter()

    @app.after_request
    def record_request(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        endpoint = request.endpoint or "unmatched"
        started = g.get("request_started")
        if started is not None:
            http_request_duration.labels(endpoint, request.method).observe(
                time.perf_counter() - started
            )
        http_requests.labels(endpoint, request.method, str(response.status_code)).inc()
        return response
