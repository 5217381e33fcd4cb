"""Short task locks (indico's ``locked_task``): Redis ``SET NX PX`` with REDIS_URL, else
a lock inside this process (the embedded default has one process and eager tasks)."""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from typing import TypeVar

import redis
from flask import current_app

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Deletes the key only while it still holds our token: a holder whose lock expired (it ran
# longer than the TTL) must not release the lock another process has taken since.
_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""


class _RedisLocks:
    """Shared by every worker, beat and web process on one Redis."""

    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self._prefix = prefix
        self._release = self._client.register_script(_RELEASE)

    def acquire(self, name: str, token: str, ttl: float) -> bool:
        key = self._prefix + name
        return bool(self._client.set(key, token, nx=True, px=max(1, int(ttl * 1000))))

    def release(self, name: str, token: str) -> None:
        self._release(keys=[self._prefix + name], args=[token])


class _ProcessLocks:
    """Without Redis there is one process: a dictionary under a mutex is enough."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, float]] = {}
        self._mutex = threading.Lock()

    def acquire(self, name: str, token: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._mutex:
            held = self._held.get(name)
            if held is not None and held[1] > now:
                return False
            self._held[name] = (token, now + ttl)
            return True

    def release(self, name: str, token: str) -> None:
        with self._mutex:
            held = self._held.get(name)
            if held is not None and held[0] == token:
                del self._held[name]


def _locks() -> _RedisLocks | _ProcessLocks:
    """The app's lock store, made on first use (kept in app.extensions, like the cache)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    store = app.extensions.get("keyward.task_locks")
    if store is None:
        url = app.config.get("REDIS_URL")
        prefix = app.config.get("CACHE_KEY_PREFIX", "keyward:") + "lock:"
        made = _RedisLocks(url, prefix) if url else _ProcessLocks()
        # setdefault: two threads making the store at once must end up sharing one.
        store = app.extensions.setdefault("keyward.task_locks", made)
    return store


@contextmanager
def task_lock(name: str, ttl: float) -> Iterator[bool]:
    """Try once to take the lock ``name`` for at most ``ttl`` seconds; yields whether this
    caller holds it (never waits). Released on exit, only if still ours. Needs an app
    context; raises redis errors when Redis is configured but down."""
    token = secrets.token_hex(16)
    store = _locks()
    acquired = store.acquire(name, token, ttl)
    try:
        yield acquired
    finally:
        if acquired:
            store.release(name, token)


def locked_task(ttl: float) -> Callable[[F], F]:
    """Decorate a periodic task (under ``@shared_task``) so that one run at a time happens
    across every beat and worker: a run that finds the lock taken logs and returns None.

    ``ttl`` bounds how long a crashed run blocks the next ones."""

    def decorator(func: F) -> F:
        name = f"task:{func.__module__}.{func.__qualname__}"

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with task_lock(name, ttl) as acquired:
                if not acquired:
                    log.info("%s is already running elsewhere; this run is skipped", name)
                    return None
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
