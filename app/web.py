"""Small helpers the blueprints share: request metadata for the audit trail, safe redirects."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import g
from flask import request

from app.services.audit import RequestMeta


def request_meta() -> RequestMeta:
    """The client IP (after the trusted proxies) and request id, for audit events."""
    return RequestMeta(ip_address=request.remote_addr, request_id=g.get("request_id"))


def safe_next(target: str | None) -> str | None:
    """``target`` when it is a local path on this site, else None (no open redirect).

    Refuses absolute and scheme-relative URLs ("//evil"), backslash tricks browsers read as
    slashes ("/\\evil"), and control characters.
    """
    if not target or len(target) > 2048:
        return None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target) or "\\" in target:
        return None
    if not target.startswith("/") or target.startswith("//"):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target
