"""Refresh-ahead and the stored entry format: the window, deduplication, the concurrency bound, failures that
never reach the request, the versioned header and values that are not valid entries."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from harness import ADMIN_TOKEN, ServerProcess, make_bundle
from prometheus_client import CollectorRegistry

from hashrec.data import Dataset
from hashrec.service.cache import (
    ENTRY_FORMAT,
    HEADER_BYTES,
    CachedAnswer,
    CircuitBreaker,
    RedisCache,
    answer_key,
    pack_entry,
    unpack_entry,
)
from hashrec.service.metrics import ServiceMetrics
from hashrec.service.refresh import RefreshAhead, SupersededError

# -- the stored entry ------------------------------------------------------------------------------------


def test_entry_header_round_trip() -> None:
    entry = CachedAnswer(b'[{"item":"i1","score":0.5,"hamming":3}]', 1_700_000_000.25, 1_700_000_300.5)
    raw = pack_entry(entry)
    assert len(raw) == HEADER_BYTES + len(entry.body)
    assert raw[3] == ENTRY_FORMAT
    assert unpack_entry(raw) == entry
    assert unpack_entry(pack_entry(entry._replace(body=b""))) == entry._replace(body=b"")


@pytest.mark.parametrize(
    "raw",
    [
        b'[{"item":"i1","score":0.5,"hamming":3}]',  # a bare answer (the v1 value format)
        b"[]",  # shorter than a header
        b"",
        struct.pack("<3sBdd", b"HRa", ENTRY_FORMAT + 1, 1.0, 2.0) + b"[]",  # a format this release can't read
        struct.pack("<3sBdd", b"XYZ", ENTRY_FORMAT, 1.0, 2.0) + b"[]",  # not our magic
        struct.pack("<3sBdd", b"HRa", ENTRY_FORMAT, 5.0, 2.0) + b"[]",  # expires before it was stored
        struct.pack("<3sBdd", b"HRa", ENTRY_FORMAT, float("nan"), 2.0) + b"[]",
    ],
)
def test_values_that_are_not_entries_are_refused(raw: bytes) -> None:
    assert unpack_entry(raw) is None


def test_refresh_due_only_in_the_last_fraction_of_the_life() -> None:
    e = CachedAnswer(b"[]", stored_at=1000.0, expires_at=1100.0)  # a 100 s life
    assert not e.refresh_due(1089.9, 0.1)
    assert e.refresh_due(1090.0, 0.1) and e.refresh_due(1099.0, 0.1)
    assert not e.refresh_due(1049.0, 0.5) and e.refresh_due(1050.0, 0.5)
    assert not e.refresh_due(1099.0, 0.0)  # 0 = refresh-ahead off


def test_redis_values_in_another_format_are_misses(redis_server) -> None:  # type: ignore[no-untyped-def]
    """A bare (v1-style) value or one with an unknown header reads as a miss, counted as invalid."""
    m = ServiceMetrics()

    async def run() -> list[CachedAnswer | None]:
        cache = RedisCache(
            redis_server.url, ttl_s=30, timeout_s=1.0, pool_size=2, breaker=CircuitBreaker(3, 5), metrics=m
        )
        await cache.set_many([("good", b"[1]")])
        try:
            return await cache.get_many(["good", "bare", "future", "absent"])
        finally:
            await cache.close()

    r = redis.Redis.from_url(redis_server.url)
    r.set("bare", b'[{"item":"i1","score":0.5,"hamming":3}]')
    r.set("future", struct.pack("<3sBdd", b"HRa", ENTRY_FORMAT + 1, time.time(), time.time() + 60) + b"[2]")
    good, bare, future, absent = asyncio.run(run())
    assert good is not None and good.body == b"[1]"
    assert 29.0 < good.expires_at - good.stored_at <= 30.0
    assert bare is None and future is None and absent is None
    get = {"backend": "redis", "op": "get"}
    assert m.registry.get_sample_value("hashrec_cache_requests_total", {**get, "result": "invalid"}) == 2
    assert m.registry.get_sample_value("hashrec_cache_requests_total", {**get, "result": "miss"}) == 1
    # the value in Redis carries the header, and Redis' own TTL matches the header's expiry
    raw = r.get("good")
    assert isinstance(raw, bytes)
    entry = unpack_entry(raw)
    assert entry is not None and abs((entry.expires_at - time.time()) * 1000 - r.pttl("good")) < 1000
    r.close()


# -- RefreshAhead ------------------------------------------------------------------------------------------


def count(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("hashrec_cache_refreshes_total", {"result": result}) or 0.0


def test_one_refresh_per_key_at_a_time() -> None:
    reg = CollectorRegistry()
    ra = RefreshAhead(0.1, max_concurrent=4, registry=reg)
    calls: list[str] = []

    async def run() -> None:
        release = asyncio.Event()

        async def refresh() -> None:
            calls.append("k")
            await release.wait()

        assert ra.schedule("k", refresh)
        await asyncio.sleep(0)  # the refresh is running
        assert ra.in_flight("k")
        for _ in range(10):  # more hits on the same due key while it runs: no second refresh
            assert not ra.schedule("k", refresh)
        release.set()
        await asyncio.sleep(0.01)
        assert not ra.in_flight("k")
        assert ra.schedule("k", refresh)  # done: the key may be refreshed again (when due again)
        await asyncio.sleep(0.01)

    asyncio.run(run())
    assert calls == ["k", "k"]
    assert count(reg, "refreshed") == 2 and count(reg, "busy") == 0


def test_concurrent_refreshes_are_bounded() -> None:
    reg = CollectorRegistry()
    ra = RefreshAhead(0.1, max_concurrent=2, registry=reg)
    started: list[str] = []

    async def run() -> None:
        release = asyncio.Event()

        def refresh_of(key: str):  # type: ignore[no-untyped-def]
            async def refresh() -> None:
                started.append(key)
                await release.wait()

            return refresh

        assert ra.schedule("a", refresh_of("a"))
        assert ra.schedule("b", refresh_of("b"))
        assert not ra.schedule("c", refresh_of("c"))  # at the bound: skipped, not queued
        await asyncio.sleep(0)
        release.set()
        await asyncio.sleep(0.01)
        assert ra.schedule("c", refresh_of("c"))  # slots free again
        await asyncio.sleep(0.01)

    asyncio.run(run())
    assert started == ["a", "b", "c"]
    assert count(reg, "busy") == 1 and count(reg, "refreshed") == 3
    assert reg.get_sample_value("hashrec_cache_refreshes_in_flight") == 0


def test_a_failed_refresh_is_counted_logged_and_frees_its_key(caplog: pytest.LogCaptureFixture) -> None:
    reg = CollectorRegistry()
    ra = RefreshAhead(0.1, max_concurrent=1, registry=reg)

    async def broken() -> None:
        raise RuntimeError("model exploded")

    async def superseded() -> None:
        raise SupersededError("bundle v1 is no longer served")

    async def run() -> None:
        assert ra.schedule("k", broken)  # returns at once: the caller never sees the error
        await asyncio.sleep(0.01)
        assert not ra.in_flight("k")
        assert ra.schedule("k", superseded)
        await asyncio.sleep(0.01)
        for _ in range(5):  # a broken model fails every refresh: counted each time, warned about once
            assert ra.schedule("k", broken)
            await asyncio.sleep(0.01)

    with caplog.at_level(logging.WARNING, logger="hashrec.service.refresh"):
        asyncio.run(run())
    assert count(reg, "error") == 6 and count(reg, "superseded") == 1 and count(reg, "refreshed") == 0
    warnings = [r for r in caplog.records if "model exploded" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_refresh_ahead_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="fraction"):
        RefreshAhead(1.0, 4)
    with pytest.raises(ValueError, match="max_concurrent"):
        RefreshAhead(0.1, 0)
    assert not RefreshAhead(0.0, 4).enabled


# -- through the server, with a real Redis ------------------------------------------------------------------

TTL_S = 6.0
FRACTION = 0.5  # due in the last 3 s of a 6 s life


@pytest.fixture()
def refresh_served(bundles: Path, redis_server, tmp_path: Path) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    with ServerProcess(
        bundles,
        tmp_path / "server.log",
        HASHREC_REDIS_URL=redis_server.url,
        HASHREC_CACHE_TTL_S=str(TTL_S),
        HASHREC_CACHE_TTL_JITTER="0",
        HASHREC_CACHE_REFRESH_AHEAD=str(FRACTION),
        HASHREC_QUALITY_SAMPLE_RATE="0",
        HASHREC_ADMIN_TOKEN=ADMIN_TOKEN,
    ).start() as srv:
        yield srv


def refreshes(c: httpx.Client, result: str = "refreshed") -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f'hashrec_cache_refreshes_total{{result="{result}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def stored(r: redis.Redis, key: str, newer_than: float = 0.0) -> CachedAnswer:
    """The valid entry in Redis under ``key`` stored after ``newer_than``, waiting up to 3 s for it: behind
    the near cache, the server queues its Redis writes and answers without waiting for them."""
    deadline = time.monotonic() + 3
    while True:
        raw = r.get(key)
        entry = unpack_entry(raw) if isinstance(raw, bytes) else None
        if entry is not None and entry.stored_at > newer_than:
            return entry
        assert time.monotonic() < deadline, f"no valid entry stored after {newer_than} under {key}: {raw!r}"
        time.sleep(0.02)


def test_refresh_happens_in_the_window_and_not_before(
    refresh_served: ServerProcess, redis_server, synth_dataset: Dataset
) -> None:  # type: ignore[no-untyped-def]
    user = str(synth_dataset.users.raw[7])
    r = redis.Redis.from_url(redis_server.url)
    with httpx.Client(base_url=refresh_served.url, timeout=5) as c:
        first = c.get(f"/recommend/{user}").json()
        assert first["source"] == "model"
        key = answer_key(first["version"], user, first["k"], first["candidates"], True)
        entry = stored(r, key)
        assert entry.expires_at - entry.stored_at == pytest.approx(TTL_S)

        # before the window: hits, no refresh
        for _ in range(5):
            assert c.get(f"/recommend/{user}").json()["source"] == "cache"
        assert time.time() < entry.stored_at + TTL_S * (1 - FRACTION) - 0.5, "machine too slow for this test"
        time.sleep(0.3)
        assert refreshes(c) == 0
        assert stored(r, key) == entry

        # in the window: still answered from the cache, and recomputed once in the background
        time.sleep(max(0.0, entry.stored_at + TTL_S * (1 - FRACTION) + 0.2 - time.time()))
        for _ in range(5):
            body = c.get(f"/recommend/{user}").json()
            assert body["source"] == "cache" and body["items"] == first["items"]
        deadline = time.monotonic() + 3
        while refreshes(c) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refreshes(c) == 1
        again = stored(r, key, newer_than=entry.stored_at)
        assert again.stored_at > entry.stored_at + TTL_S * (1 - FRACTION)
        assert again.expires_at - again.stored_at == pytest.approx(TTL_S)
        assert r.pttl(key) > 1000 * TTL_S * (1 - FRACTION)  # Redis' own TTL was renewed with the value

        # past the first entry's expiry: still a hit (the refreshed entry), never a miss
        time.sleep(max(0.0, entry.expires_at + 0.3 - time.time()))
        body = c.get(f"/recommend/{user}").json()
        assert body["source"] == "cache" and body["items"] == first["items"]
        assert refreshes(c, "error") == 0
    r.close()


def test_a_stored_value_in_another_format_is_recomputed_not_served(
    refresh_served: ServerProcess, redis_server, synth_dataset: Dataset
) -> None:  # type: ignore[no-untyped-def]
    user = str(synth_dataset.users.raw[8])
    r = redis.Redis.from_url(redis_server.url)
    with httpx.Client(base_url=refresh_served.url, timeout=5) as c:
        version = c.get("/readyz").json()["version"]
        key = answer_key(version, user, 20, 500, True)
        r.set(key, b'[{"item":"not-this","score":1.0,"hamming":0}]', px=60_000)  # a bare v1-style value
        body = c.get(f"/recommend/{user}").json()
        assert body["source"] == "model" and "not-this" not in {it["item"] for it in body["items"]}
        assert stored(r, key).body.startswith(b'[{"item":')  # replaced by a valid entry
        assert c.get(f"/recommend/{user}").json()["source"] == "cache"
        assert (
            'hashrec_cache_requests_total{backend="redis",op="get",result="invalid"} 1.0'
            in c.get("/metrics").text
        )
    r.close()


def test_no_stale_answer_after_a_reload_while_entries_are_due(
    refresh_served: ServerProcess, redis_server, synth_dataset: Dataset
) -> None:  # type: ignore[no-untyped-def]
    """Entries of the old version that are due for a refresh never answer for the new version: the key names
    the version, and a refresh started for the old snapshot is dropped."""
    users = [str(u) for u in synth_dataset.users.raw[20:30]]
    with httpx.Client(base_url=refresh_served.url, timeout=10) as c:
        old = {u: c.get(f"/recommend/{u}").json() for u in users}
        old_version = old[users[0]]["version"]
        time.sleep(TTL_S * (1 - FRACTION) + 0.2)  # every entry is now in its refresh window
        make_bundle(refresh_served.bundles, synth_dataset, seed=11)
        for u in users[:5]:  # due hits: refreshes start for the old snapshot...
            assert c.get(f"/recommend/{u}").json()["source"] == "cache"
        r = c.post("/admin/reload", json={}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200 and r.json()["version"] != old_version
        for u in users:  # ...and none of them, nor the old entries, answers for the new version
            body = c.get(f"/recommend/{u}").json()
            assert body["version"] == r.json()["version"] and body["source"] == "model"
        assert refreshes(c, "error") == 0
