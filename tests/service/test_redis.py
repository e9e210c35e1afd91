"""The app with a real Redis, in-process: cache-aside hits, Redis killed mid-test and back again, a stalled
Redis, the near cache in front of Redis shared by two apps."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from support import RedisProcess, app_client

from hashrec.data import Dataset
from hashrec.service.cache import KEY_PREFIX


def redis_app(bundles: Path, rds: RedisProcess, **overrides: Any) -> AbstractContextManager[TestClient]:
    """The app on Redis; every hit goes to Redis (no near cache) unless ``overrides`` say otherwise."""
    settings: dict[str, Any] = {"redis_url": rds.url, "near_cache_bytes": 0, **overrides}
    return app_client(bundles, **settings)


def cache_count(c: TestClient, op: str, result: str) -> float:
    """``hashrec_cache_requests_total`` of the Redis backend for ``op`` and ``result`` (0 when absent)."""
    prefix = f'hashrec_cache_requests_total{{backend="redis",op="{op}",result="{result}"}} '
    line = next((x for x in c.get("/metrics").text.splitlines() if x.startswith(prefix)), None)
    return 0.0 if line is None else float(line.split()[-1])


def wait_for_keys(url: str, n: int) -> list[bytes]:
    """The answer keys in Redis once there are ``n`` (writes are queued: they land a moment later)."""
    r = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while len(keys := r.keys(f"{KEY_PREFIX}:*")) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(keys)
    finally:
        r.close()


@pytest.fixture()
def users(synth_dataset: Dataset) -> Iterator[list[str]]:
    yield [str(u) for u in synth_dataset.users.raw[:40]]


def test_redis_cache_aside_and_survival(bundles: Path, redis_server: RedisProcess, users: list[str]) -> None:
    reset_s = 1.0
    with redis_app(bundles, redis_server, breaker_reset_s=reset_s, redis_timeout_s=0.05) as c:
        assert c.get("/healthz").json()["cache"]["backend"] == "redis"
        first = [c.get(f"/recommend/{u}").json() for u in users[:10]]
        assert {b["source"] for b in first} == {"model"}
        keys = wait_for_keys(redis_server.url, 10)  # keyed by version, with a TTL
        assert len(keys) == 10 and all(first[0]["version"].encode() in k for k in keys)
        r = redis.Redis.from_url(redis_server.url)
        assert 0 < r.pttl(keys[0]) <= 300_000
        r.close()
        again = [c.get(f"/recommend/{u}").json() for u in users[:10]]
        assert {b["source"] for b in again} == {"cache"}
        assert [b["items"] for b in again] == [b["items"] for b in first]

        redis_server.stop()  # SIGKILL mid-test
        errors0, skipped0 = cache_count(c, "get", "error"), cache_count(c, "get", "skipped")
        t0 = time.monotonic()
        for u in users:
            resp = c.get(f"/recommend/{u}")
            assert resp.status_code == 200 and resp.json()["source"] == "model"
        elapsed = time.monotonic() - t0
        # at most three failures open the breaker; then look-ups skip Redis instead of paying its timeout,
        # but for one trial per reset period (a slow machine may let a period pass during the loop)
        errors = cache_count(c, "get", "error") - errors0
        skipped = cache_count(c, "get", "skipped") - skipped0
        assert errors + skipped == len(users), (errors, skipped)
        assert 1 <= errors <= 3 + int(elapsed / reset_s), (errors, elapsed)
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["cache"]["reachable"] is False
        assert c.get("/readyz").status_code == 200  # Redis down does not make the service unready

        redis_server.start()  # back on the same port, empty: after the reset time one trial closes it
        deadline = time.monotonic() + 15
        sources: list[str] = []
        while time.monotonic() < deadline:
            sources.append(c.get(f"/recommend/{users[0]}").json()["source"])
            if sources[-1] == "cache":
                break
            time.sleep(0.05)
        assert sources[-1] == "cache", sources


def test_stalled_redis_costs_a_bounded_time(
    bundles: Path, redis_server: RedisProcess, users: list[str]
) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP): a few timeouts, then the breaker."""
    with redis_app(bundles, redis_server, redis_timeout_s=0.5, breaker_reset_s=60) as c:
        assert c.get(f"/recommend/{users[0]}").status_code == 200  # pool connections are open
        errors0 = cache_count(c, "get", "error")
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.perf_counter()
            for u in users[1:31]:
                assert c.get(f"/recommend/{u}").status_code == 200
            total = time.perf_counter() - t0
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        errors = cache_count(c, "get", "error") - errors0
        skipped = cache_count(c, "get", "skipped")
    assert 1 <= errors <= 3 and errors + skipped == 30, (errors, skipped)
    # without the breaker each of the 30 look-ups would wait its 0.5 s timeout: 15 s; with it, about 1.5 s
    assert total < 8.0, total


def test_near_cache_in_front_of_redis(
    bundles: Path, redis_server: RedisProcess, synth_dataset: Dataset
) -> None:
    """The default set-up, two apps on one Redis: hot answers from each app's near cache, shared ones
    from Redis; with Redis gone, near-cache hits still answer from the cache."""
    users = [str(u) for u in synth_dataset.users.raw[300:320]]
    with (
        redis_app(bundles, redis_server, near_cache_bytes=1 << 20) as a,
        redis_app(bundles, redis_server, near_cache_bytes=1 << 20) as b,
    ):
        first = a.get(f"/recommend/{users[0]}").json()
        assert first["source"] == "model"
        assert len(wait_for_keys(redis_server.url, 1)) == 1  # a did not wait for its Redis write
        from_b = b.get(f"/recommend/{users[0]}").json()  # found in Redis (shared), now in b's near cache
        assert from_b["source"] == "cache" and from_b["items"] == first["items"]
        redis_server.stop()
        assert a.get(f"/recommend/{users[0]}").json()["source"] == "cache"
        assert b.get(f"/recommend/{users[0]}").json()["source"] == "cache"
        for u in users[1:]:
            resp = a.get(f"/recommend/{u}")
            assert resp.status_code == 200 and resp.json()["source"] == "model"
