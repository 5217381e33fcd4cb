"""The rate limiter's in-process storage, used when there is no Redis (the embedded default).

limits' MemoryStorage drops expired counters from a ``threading.Timer`` that it starts again
(a new thread, 10 ms) on nearly every counter write once the previous timer has fired: on the
sign-in page that is one thread started per sign-in attempt, a measurable share of its CPU.
The counters do not depend on that timer (a read drops its own counter once expired); it only
frees the memory of counters nobody reads again. This storage does that housekeeping inline,
at most once every SWEEP_INTERVAL seconds, in whichever request comes along.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache

from limits import RateLimitItem
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

# What settings.py names the in-process storage, and what create_app gives the limiter instead.
MEMORY_URI = "memory://"
SWEPT_MEMORY_URI = "keyward-memory://"
SWEEP_INTERVAL = 10.0


class SweptMemoryStorage(MemoryStorage):
    STORAGE_SCHEME = ["keyward-memory"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._sweep_lock = threading.Lock()
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._sweep_lock = threading.Lock()

    # Replaces MemoryStorage's private __schedule_expiry (called before each counter write,
    # outside the counters' locks). One thread sweeps at a time; the others go on.
    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + SWEEP_INTERVAL
            self._MemoryStorage__expire_events()
        finally:
            self._sweep_lock.release()


# --- the password sign-in limits ------------------------------------------------------------
# The sign-in POST is the one request Keyward limits on every attempt, and its cost is
# benchmarked against argon2 alone (bench/password_login.py). Flask-Limiter's decorators
# resolve, filter and evaluate their limits through several layers per request (about 0.6 ms
# per sign-in, a fifth of everything but argon2); the same fixed-window counters, read and
# written here directly on the limiter's storage (Redis, or the swept memory one), cost a
# few microseconds.


class SignInRateLimited(TooManyRequests):
    """A 429 that knows when to come back (app/errors.py turns it into Retry-After)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = max(1, retry_after)


@lru_cache(maxsize=32)
def _item(limit: str) -> RateLimitItem:
    return parse(limit)


_fallback = FixedWindowRateLimiter(SweptMemoryStorage())
log = logging.getLogger(__name__)


def _call(method: str, limit: str, *identifiers: str) -> bool:
    """Run ``hit`` or ``test`` on the configured storage; while it is unreachable (Redis down)
    on this process's memory instead, so that an outage neither locks everyone out nor lifts
    the limit."""
    from app.extensions import limiter

    try:
        return getattr(limiter.limiter, method)(_item(limit), *identifiers)
    except Exception as error:  # limits wraps nothing by default: any storage error
        log.warning("rate-limit storage unavailable (%s); counting in memory", type(error).__name__)
        return getattr(_fallback, method)(_item(limit), *identifiers)


def _refuse(limit: str, *identifiers: str) -> SignInRateLimited:
    from app.extensions import limiter

    try:
        reset_at = limiter.limiter.get_window_stats(_item(limit), *identifiers).reset_time
    except Exception:
        reset_at = time.time() + _item(limit).get_expiry()
    return SignInRateLimited(int(reset_at - time.time()) + 1)


def check_sign_in_attempt(ip_limit: str, ip: str, email_limit: str, email: str) -> None:
    """Count this sign-in attempt against its client IP, and check (without counting) the
    per-address limit, which only failures use up. Raises SignInRateLimited."""
    if not _call("hit", ip_limit, "login-ip", ip):
        raise _refuse(ip_limit, "login-ip", ip)
    if not _call("test", email_limit, "login-email", email):
        raise _refuse(email_limit, "login-email", email)


def count_failed_sign_in(email_limit: str, email: str) -> None:
    """A failed attempt uses up one of the address's tries (it stops one account being
    guessed at from many IPs)."""
    _call("hit", email_limit, "login-email", email)


# --- the SCIM per-token limit ------------------------------------------------------------------
# Every SCIM request is counted against its token (SCIM_RATE_LIMIT, DESIGN): the same direct
# counters on the limiter's storage as the sign-in limits, for the same reason (an IdP syncing
# a tenant sends hundreds of requests a second, and the limit must not cost more than they do).
SCIM_MAX_RETRY_AFTER = 60


class ScimRateLimited(TooManyRequests):
    """A 429 for a SCIM token: the SCIM blueprint answers it with a SCIM error body."""

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        # DESIGN: Retry-After at most 60 s, even for a limit counted per hour.
        self.retry_after = min(SCIM_MAX_RETRY_AFTER, max(1, retry_after))


def check_scim_request(limit: str, token_id: str) -> None:
    """Count one SCIM request against its token. Raises ScimRateLimited."""
    if not _call("hit", limit, "scim-token", token_id):
        refused = _refuse(limit, "scim-token", token_id)
        raise ScimRateLimited(refused.retry_after)
