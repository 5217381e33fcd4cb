"""Error pages: a short reason and the correlation id, never a stack trace or a secret."""

from __future__ import annotations

import logging
import time

from flask import Flask
from flask import g
from flask import jsonify
from flask import render_template
from flask import request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import InternalServerError

from app.extensions import db
from app.extensions import limiter

log = logging.getLogger(__name__)

MESSAGES = {
    400: "The request could not be understood.",
    401: "You need to sign in to see this page.",
    403: "You do not have access to this page.",
    404: "There is nothing at this address.",
    405: "This address does not accept that kind of request.",
    413: "The request is too large.",
    429: "Too many attempts. Wait a little and try again.",
    500: "Something went wrong on our side. It has been logged.",
    503: "The service is not available right now.",
}

JSON_PATHS = ("/whoami", "/healthz", "/readyz", "/metrics")


def render_error(status: int, message: str | None = None, title: str | None = None):
    message = message or MESSAGES.get(status, "The request failed.")
    if request.path.startswith(JSON_PATHS):
        body = jsonify(error=message, status=status, request_id=g.get("request_id"))
        return body, status
    return (
        render_template(
            "errors/error.html",
            status=status,
            title=title,
            message=message,
            request_id=g.get("request_id"),
        ),
        status,
    )


def _retry_after() -> int:
    """Seconds until the breached rate limit's window resets (Flask-Limiter's own figure for
    its header, at least 1)."""
    breached = limiter.current_limit
    if breached is None:  # pragma: no cover - a 429 raised by something else than the limiter
        return 60
    return max(1, int(breached.reset_at - time.time()))


def register(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        log.warning("CSRF check failed: %s", error.description)
        return render_error(
            400,
            "The form has expired or was not sent from this site. Go back, reload the "
            "page and try again.",
            "Form expired",
        )

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        if status >= 500:
            db.session.rollback()
        # A description given to abort() is written for users; werkzeug's own defaults are
        # replaced by the short messages above.
        # Flask-Limiter's 429 describes the limit itself ("3 per 1 minute"): not for users.
        custom = status != 429 and error.description != type(error).description
        response = app.make_response(render_error(status, error.description if custom else None))
        allowed = getattr(error, "valid_methods", None)
        if status == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        if status == 429:
            retry_after = getattr(error, "retry_after", None)
            response.headers["Retry-After"] = str(retry_after or _retry_after())
        return response

    @app.errorhandler(Exception)
    def unhandled_error(error: Exception):
        if isinstance(error, HTTPException):  # pragma: no cover - routed above
            return http_error(error)
        db.session.rollback()
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render_error(InternalServerError.code)
