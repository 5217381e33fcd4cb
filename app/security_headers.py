"""Response headers from DESIGN "Security invariants": CSP, framing, sniffing, referrer."""

from __future__ import annotations

from flask import Flask
from flask import request

# No 'unsafe-inline' anywhere: every script and style is a file under app/static.
# form-action is left out on purpose: sign-out and federated sign-in forms end in redirects to
# identity providers, and browsers apply form-action to those redirects too.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # Provider icons are admin-entered http(s) URLs (product documents allow both).
        "img-src 'self' data: https: http:",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)


def register(app: Flask) -> None:
    hsts = (app.config.get("PUBLIC_URL") or "").startswith("https://")

    @app.after_request
    def add_security_headers(response):
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Frame-Options", "DENY")
        headers["X-Content-Type-Options"] = "nosniff"
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        if hsts:
            headers.setdefault("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
        if request.endpoint != "static":
            # Pages show personal data: never kept by a shared cache or the back button.
            headers.setdefault("Cache-Control", "no-store")
        return response
