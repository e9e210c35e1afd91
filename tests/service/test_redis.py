"""The server with a real Redis: cache-aside hits, Redis killed mid-test, Redis back again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from harness import ServerProcess

from hashrec.data import Dataset


@pytest.fixture()
def redis_served(bundles: Path, redis_server, tmp_path: Path) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    with ServerProcess(
        bundles,
        tmp_path / "server.log",
        HASHREC_REDIS_URL=redis_server.url,
        HASHREC_BREAKER_RESET_S="0.5",
        HASHREC_REDIS_TIMEOUT_S="0.05",
        HASHREC_NEAR_CACHE_SIZE="0",  # every hit goes to Redis: these tests are about Redis itself
    ).start() as srv:
        yield srv


def test_redis_cache_aside_and_survival(
    redis_served: ServerProcess, redis_server, synth_dataset: Dataset
) -> None:  # type: ignore[no-untyped-def]
    users = [str(u) for u in synth_dataset.users.raw[:40]]
    with httpx.Client(base_url=redis_served.url, timeout=5) as c:
        assert c.get("/healthz").json()["cache"]["backend"] == "redis"
        first = [c.get(f"/recommend/{u}").json() for u in users[:10]]
        assert {b["source"] for b in first} == {"model"}
        again = [c.get(f"/recommend/{u}").json() for u in users[:10]]
        assert {b["source"] for b in again} == {"cache"}
        assert [b["items"] for b in again] == [b["items"] for b in first]
        # the entries live in Redis, keyed by version, with a TTL
        r = redis.Redis.from_url(redis_server.url)
        keys = r.keys("hashrec:ans:v2:*")
        assert len(keys) == 10 and all(first[0]["version"].encode() in k for k in keys)
        assert 0 < r.pttl(keys[0]) <= 300_000
        r.close()

        redis_server.stop()  # SIGKILL mid-test
        latencies = []
        for u in users:
            t0 = time.perf_counter()
            resp = c.get(f"/recommend/{u}")
            latencies.append(time.perf_counter() - t0)
            assert resp.status_code == 200
            assert resp.json()["source"] == "model"
        # the breaker opens after 3 failures: later requests pay no Redis timeout at all
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.03, latencies
        assert sum(latencies) < 1.5
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["cache"]["reachable"] is False
        assert c.get("/readyz").status_code == 200  # Redis down does not make the service unready
        metrics = c.get("/metrics").text
        assert 'hashrec_cache_requests_total{backend="redis",op="get",result="error"}' in metrics
        assert 'hashrec_cache_requests_total{backend="redis",op="get",result="skipped"}' in metrics

        redis_server.start()  # back on the same port: after the reset time, one trial closes the breaker
        time.sleep(0.6)
        deadline = time.monotonic() + 5
        sources: list[str] = []
        while time.monotonic() < deadline:
            sources.append(c.get(f"/recommend/{users[0]}").json()["source"])
            if sources[-1] == "cache":
                break
            time.sleep(0.1)
        assert sources[-1] == "cache", sources


def test_stalled_redis_costs_bounded_time(
    redis_served: ServerProcess, redis_server, synth_dataset: Dataset
) -> None:  # type: ignore[no-untyped-def]
    """A Redis that accepts connections but never answers (SIGSTOP): timeouts, then the breaker."""
    import signal

    users = [str(u) for u in synth_dataset.users.raw[:30]]
    with httpx.Client(base_url=redis_served.url, timeout=5) as c:
        assert c.get(f"/recommend/{users[0]}").status_code == 200  # pool connections are open
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.perf_counter()
            for u in users:
                assert c.get(f"/recommend/{u}").status_code == 200
            total = time.perf_counter() - t0
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
    # at most a few requests pay the 50 ms timeout (twice: get and set) before the breaker opens
    assert total < 1.5, total


def test_near_cache_in_front_of_redis(
    bundles: Path, redis_server, tmp_path: Path, synth_dataset: Dataset
) -> None:  # type: ignore[no-untyped-def]
    """Default set-up: hot answers from the in-process near cache, shared ones from Redis."""
    users = [str(u) for u in synth_dataset.users.raw[300:320]]
    env = {"HASHREC_REDIS_URL": redis_server.url, "HASHREC_NEAR_CACHE_SIZE": "100"}
    with (
        ServerProcess(bundles, tmp_path / "a.log", **env).start() as a,
        ServerProcess(bundles, tmp_path / "b.log", **env).start() as b,
    ):
        first = httpx.get(f"{a.url}/recommend/{users[0]}").json()
        assert first["source"] == "model"
        # a answers without waiting for its Redis write (queued behind the near cache): wait until it lands
        r = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 3
        while not r.keys("hashrec:ans:v2:*") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(r.keys("hashrec:ans:v2:*")) == 1
        r.close()
        # another process finds the answer in Redis (shared), then in its own near cache
        from_b = httpx.get(f"{b.url}/recommend/{users[0]}").json()
        assert from_b["source"] == "cache" and from_b["items"] == first["items"]
        redis_server.stop()
        # Redis gone: near-cache hits still answer from the cache, new questions from the model
        assert httpx.get(f"{a.url}/recommend/{users[0]}").json()["source"] == "cache"
        assert httpx.get(f"{b.url}/recommend/{users[0]}").json()["source"] == "cache"
        for u in users[1:]:
            resp = httpx.get(f"{a.url}/recommend/{u}")
            assert resp.status_code == 200 and resp.json()["source"] == "model"
