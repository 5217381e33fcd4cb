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


# Added unless the view set its own (e.g. a page meant to be framed by an IdP).
DEFAULT_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
)
HSTS = ("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
# Pages show personal data: never kept by a shared cache or the back button.
NO_STORE = ("Cache-Control", "no-store")


def register(app: Flask) -> None:
    defaults = DEFAULT_HEADERS + ((HSTS,) if _https(app) else ())
    # (lower-cased name, name, value): one pass over the response's headers per request,
    # not one per header.
    defaults_lower = tuple((name.lower(), name, value) for name, value in defaults)
    no_store_lower = (NO_STORE[0].lower(), *NO_STORE)

    @app.after_request
    def add_security_headers(response):
        headers = response.headers
        present = {key.lower() for key, _ in headers.items()}
        missing = [(name, value) for lower, name, value in defaults_lower if lower not in present]
        if request.endpoint != "static" and no_store_lower[0] not in present:
            missing.append(no_store_lower[1:])
        if "x-content-type-options" in present:
            headers["X-Content-Type-Options"] = "nosniff"
        else:
            missing.append(("X-Content-Type-Options", "nosniff"))
        headers.extend(missing)
        return response


def _https(app: Flask) -> bool:
    return (app.config.get("PUBLIC_URL") or "").startswith("https://")
