"""The sign-in rate limiter: its in-process storage (no Redis) and what its answers carry."""

from __future__ import annotations

import time

import pytest
from limits.storage import memory as limits_memory

from app import ratelimit
from app.extensions import limiter
from app.ratelimit import SweptMemoryStorage
from tests.conftest import base_config
from tests.conftest import csrf_token_from


def test_without_redis_the_counters_live_in_the_swept_memory_storage(make_app):
    app = make_app(REDIS_URL="")
    assert app.config["RATELIMIT_STORAGE_URI"] == "keyward-memory://"
    assert isinstance(limiter.storage, SweptMemoryStorage)


def test_counting_starts_no_thread(monkeypatch):
    storage = SweptMemoryStorage()

    def no_timer(*args, **kwargs):
        raise AssertionError("a counter write started a thread")

    monkeypatch.setattr(limits_memory.threading, "Timer", no_timer)
    for expected in range(1, 6):
        assert storage.incr("login:10.0.0.1", 60) == expected
    assert storage.get("login:10.0.0.1") == 5
    assert storage.acquire_entry("moving:10.0.0.1", limit=2, expiry=60)


def test_expired_counters_read_as_zero_and_are_swept_away():
    storage = SweptMemoryStorage()
    storage.incr("old", 60)
    storage.incr("gone", 60)
    storage.expirations["old"] = storage.expirations["gone"] = time.time() - 1
    assert storage.get("old") == 0  # a read drops its own expired counter
    assert "gone" in storage.storage  # nobody read it: still held...
    storage._next_sweep = 0
    storage.incr("new", 60)  # ...until the next sweep, at a counter write
    assert "gone" not in storage.storage and storage.get("new") == 1


class TestAnswers:
    @pytest.fixture
    def config(self, database_url):
        return base_config(database_url, LOGIN_RATE_LIMIT="2/minute")

    def test_sign_in_answers_do_not_count_down_and_a_429_says_when_to_retry(
        self, client, make_user
    ):
        user = make_user()
        statuses = []
        for _ in range(3):
            token = csrf_token_from(client.get("/login").text)
            response = client.post(
                "/login",
                data={"email": user.email, "password": "wrong password x", "csrf_token": token},
            )
            statuses.append(response.status_code)
            names = [name for name, _ in response.headers.items()]
            assert not [name for name in names if name.startswith("X-RateLimit")]
        assert statuses == [401, 401, 429]
        assert 0 < int(response.headers["Retry-After"]) <= 60


class TestStorageOutage:
    @pytest.fixture
    def config(self, database_url):
        return base_config(database_url, LOGIN_RATE_LIMIT="2/minute")

    def test_a_storage_outage_neither_locks_out_nor_lifts_the_limit(
        self, client, make_user, monkeypatch
    ):
        class UnreachableStorage:
            def __getattr__(self, name):
                def fail(*args, **kwargs):
                    raise ConnectionError("storage down")

                return fail

        monkeypatch.setattr(type(limiter), "limiter", property(lambda self: UnreachableStorage()))
        ratelimit._fallback.storage.reset()
        user = make_user()
        statuses = []
        for _ in range(3):
            token = csrf_token_from(client.get("/login").text)
            response = client.post(
                "/login",
                data={"email": user.email, "password": "wrong password x", "csrf_token": token},
            )
            statuses.append(response.status_code)
        assert statuses == [401, 401, 429]
        assert int(response.headers["Retry-After"]) > 0
