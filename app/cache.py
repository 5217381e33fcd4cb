"""The shared cache: Redis when REDIS_URL is set, else a per-process dictionary.

Values are JSON. Used for provider metadata (read-through to ProviderMetadata), one-time
markers and short locks; nothing here is the only copy of anything.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import redis
from flask import Flask


class MemoryCache:
    """Process-local cache for the embedded default (one process, no Redis)."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[float | None, str]] = {}
        self._lock = threading.Lock()

    def _alive(self, key: str) -> str | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires is not None and expires <= time.monotonic():
            del self._data[key]
            return None
        return value

    def get(self, key: str) -> Any:
        with self._lock:
            raw = self._alive(key)
        return json.loads(raw) if raw is not None else None

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        expires = time.monotonic() + ttl if ttl else None
        with self._lock:
            self._data[key] = (expires, json.dumps(value))

    def add(self, key: str, value: Any, ttl: float) -> bool:
        """Set only when absent (a lock or one-time marker); True when this call set it."""
        with self._lock:
            if self._alive(key) is not None:
                return False
            self._data[key] = (time.monotonic() + ttl, json.dumps(value))
            return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class RedisCache:
    """Shared by every web process and worker."""

    def __init__(self, url: str, prefix: str = "keyward:") -> None:
        self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self._prefix = prefix

    def get(self, key: str) -> Any:
        raw = self._client.get(self._prefix + key)
        return json.loads(raw) if raw is not None else None

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        px = int(ttl * 1000) if ttl else None
        self._client.set(self._prefix + key, json.dumps(value), px=px)

    def add(self, key: str, value: Any, ttl: float) -> bool:
        return bool(
            self._client.set(self._prefix + key, json.dumps(value), nx=True, px=int(ttl * 1000))
        )

    def delete(self, key: str) -> None:
        self._client.delete(self._prefix + key)

    def clear(self) -> None:
        for key in self._client.scan_iter(match=self._prefix + "*", count=500):
            self._client.delete(key)

    def close(self) -> None:
        self._client.close()


def init_cache(app: Flask) -> None:
    url = app.config.get("REDIS_URL")
    prefix = app.config.get("CACHE_KEY_PREFIX", "keyward:")
    app.extensions["keyward.cache"] = RedisCache(url, prefix) if url else MemoryCache()


def get_cache() -> MemoryCache | RedisCache:
    from flask import current_app

    return current_app.extensions["keyward.cache"]
