"""The rate limiter's in-process storage, used when there is no Redis (the embedded default).

limits' MemoryStorage drops expired counters from a ``threading.Timer`` that it starts again
(a new thread, 10 ms) on nearly every counter write once the previous timer has fired: on the
sign-in page that is one thread started per sign-in attempt, a measurable share of its CPU.
The counters do not depend on that timer (a read drops its own counter once expired); it only
frees the memory of counters nobody reads again. This storage does that housekeeping inline,
at most once every SWEEP_INTERVAL seconds, in whichever request comes along.
"""

from __future__ import annotations

import threading
import time

from limits.storage import MemoryStorage

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
