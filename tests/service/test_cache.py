"""Cache layer: the LRU (TTL, bounded in bytes), the circuit breaker's state machine, and RedisCache and the
near cache against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import redis

from hashrec.service.cache import (
    CircuitBreaker,
    LruCache,
    RedisCache,
    TieredCache,
    answer_key,
    filters_digest,
    make_cache,
)
from hashrec.service.metrics import ServiceMetrics


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_answer_key_changes_with_every_parameter() -> None:
    base = answer_key("v1", "u", 20, 500, True)
    variants = {
        answer_key("v2", "u", 20, 500, True),
        answer_key("v1", "w", 20, 500, True),
        answer_key("v1", "u", 10, 500, True),
        answer_key("v1", "u", 20, 400, True),
        answer_key("v1", "u", 20, 500, False),
    }
    assert base not in variants and len(variants) == 5
    # item filters are part of the question: no filter is the plain key, each filter set its own
    assert answer_key("v1", "u", 20, 500, True, filters="") == base
    digests = {filters_digest([3, 7], None), filters_digest([3], None), filters_digest([], [3, 7])}
    assert len(digests) == 3 and "" not in digests and filters_digest([], None) == ""
    assert answer_key("v1", "u", 20, 500, True, filters_digest([3, 7], None)) not in variants | {base}


async def _stored(m: ServiceMetrics, n: int) -> None:
    """Wait until ``n`` writes reached Redis (they are queued and leave in the background; the loop must
    keep turning meanwhile): the cache's own count of successful writes."""
    labels = {"backend": "redis", "op": "set", "result": "ok"}
    deadline = time.monotonic() + 10
    while (m.registry.get_sample_value("hashrec_cache_requests_total", labels) or 0) < n:
        assert time.monotonic() < deadline, "queued writes did not reach Redis"
        await asyncio.sleep(0.01)


def _entry_bytes(key: str, value: bytes) -> int:
    """What one entry costs the LRU: measured, so the test does not restate the overhead constant."""
    c = LruCache(max_bytes=1 << 20, ttl_s=10)
    asyncio.run(c.set_many([(key, value)]))
    return c.bytes


def test_lru_ttl_and_eviction() -> None:
    clock = FakeClock()
    m = ServiceMetrics()
    c = LruCache(max_bytes=2 * _entry_bytes("a", b"1"), ttl_s=10, metrics=m, clock=clock)

    async def run() -> None:
        await c.set_many([("a", b"1"), ("b", b"2")])
        assert await c.get_many(["a", "b", "x"]) == [b"1", b"2", None]
        await c.get_many(["a"])  # a is now most recent
        await c.set_many([("c", b"3")])  # evicts b
        assert await c.get_many(["a", "b", "c"]) == [b"1", None, b"3"]
        clock.t += 11
        assert await c.get_many(["a", "c"]) == [None, None]
        assert len(c) == 0

    asyncio.run(run())
    assert (
        m.registry.get_sample_value(
            "hashrec_cache_requests_total", {"backend": "memory", "op": "get", "result": "hit"}
        )
        == 5
    )


def test_lru_is_bounded_in_bytes_not_entries() -> None:
    """Large answers take more of the budget than small ones; a value larger than the whole cache is not
    stored; replacing an entry does not count it twice; clear frees everything."""
    small, large = b"s" * 10, b"L" * 5000
    one_large = _entry_bytes("k0", large)
    c = LruCache(max_bytes=3 * one_large, ttl_s=100)

    async def run() -> None:
        await c.set_many([(f"k{i}", large) for i in range(5)])  # room for three
        assert len(c) == 3 and c.bytes <= c.max_bytes
        assert await c.get_many(["k0", "k1", "k2", "k3", "k4"]) == [None, None, large, large, large]
        await c.set_many([(f"s{i}", small) for i in range(200)])  # small ones evict large ones as needed
        assert c.bytes <= c.max_bytes and len(c) > 30  # the room of three large answers holds dozens
        assert await c.get_many(["k4", "s199"]) == [None, small]
        before = c.bytes
        await c.set_many([("s199", small)])  # a replacement, not a second copy
        assert c.bytes == before
        await c.set_many([("huge", b"x" * (4 * one_large))])  # never fits: not stored, nothing evicted
        assert await c.get_many(["huge"]) == [None] and c.bytes == before
        assert c.state()["bytes"] == before and c.state()["max_bytes"] == 3 * one_large
        await c.clear()
        assert len(c) == 0 and c.bytes == 0

    asyncio.run(run())


def test_make_cache_builds_the_configured_backend(redis_server) -> None:  # type: ignore[no-untyped-def]
    common = {"ttl_s": 10, "max_bytes": 1 << 20, "timeout_s": 0.5, "pool_size": 2}
    common |= {"breaker_failures": 3, "breaker_reset_s": 5}
    assert make_cache("memory", redis_url=None, **common).backend == "memory"
    assert make_cache("none", redis_url=None, **common).backend == "none"
    tiered = make_cache("redis", redis_url=redis_server.url, near_bytes=1 << 16, **common)
    assert isinstance(tiered, TieredCache) and tiered.near.max_bytes == 1 << 16
    assert isinstance(make_cache("redis", redis_url=redis_server.url, near_bytes=0, **common), RedisCache)
    for backend, url in (("redis", None), ("disk", None)):
        with pytest.raises(ValueError):
            make_cache(backend, redis_url=url, **common)
    asyncio.run(tiered.close())


def test_lru_jittered_ttl_spreads_expiry() -> None:
    """Entries cached together expire over [ttl * (1 - jitter), ttl], not all at once (no miss stampede)."""
    clock = FakeClock()
    c = LruCache(max_bytes=1 << 20, ttl_s=100, clock=clock, ttl_jitter=0.2)
    keys = [f"k{i}" for i in range(200)]

    async def alive() -> int:
        return sum(v is not None for v in await c.get_many(keys))

    async def run() -> None:
        await c.set_many([(k, b"v") for k in keys])
        clock.t += 79.9  # before the shortest possible TTL: all there
        assert await alive() == 200
        clock.t += 10.1  # t = 90, the middle of [80, 100]: about half expired (binomial, 200 draws)
        assert 60 <= await alive() <= 140
        clock.t += 10.1  # past the longest TTL: none left
        assert await alive() == 0

    asyncio.run(run())


def test_redis_ttls_are_jittered(redis_server) -> None:  # type: ignore[no-untyped-def]
    m = ServiceMetrics()

    async def run() -> None:
        cache = RedisCache(
            redis_server.url,
            ttl_s=100,
            timeout_s=1.0,
            pool_size=2,
            breaker=CircuitBreaker(3, 60),
            metrics=m,
            ttl_jitter=0.2,
        )
        await cache.set_many([(f"j{i}", b"v") for i in range(50)])
        await _stored(m, 50)
        await cache.close()

    asyncio.run(run())
    ttls = [int(redis_server.command("PTTL", f"j{i}") or 0) for i in range(50)]
    assert all(79_000 <= t <= 100_000 for t in ttls), ttls
    assert max(ttls) - min(ttls) > 5_000  # spread, not one value


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failures=3, reset_s=5, clock=clock)
    assert b.allow() and b.state == "closed"
    assert not b.failure() and not b.failure()
    assert b.failure()  # third consecutive failure opens
    assert b.state == "open" and not b.allow()
    clock.t += 5
    assert b.state == "half_open"
    assert b.allow()  # one trial...
    assert not b.allow()  # ...at a time
    assert b.failure()  # a failed trial re-opens at once
    assert b.state == "open"
    clock.t += 5
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_breaker_success_resets_the_count() -> None:
    b = CircuitBreaker(failures=2, reset_s=5, clock=FakeClock())
    b.failure()
    b.success()
    assert not b.failure()  # only one consecutive failure since the success
    assert b.state == "closed"


def test_redis_cache_round_trip_and_breaker_on_dead_redis(redis_server) -> None:  # type: ignore[no-untyped-def]
    m = ServiceMetrics()

    async def run() -> None:
        cache = RedisCache(
            redis_server.url, ttl_s=30, timeout_s=0.05, pool_size=4, breaker=CircuitBreaker(3, 60), metrics=m
        )
        # the install brings hiredis (redis[hiredis]): replies parsed in C, the cold cache's main cost
        assert cache.state()["parser"] == "hiredis"
        await cache.set_many([("k1", b"v1")])
        await _stored(m, 1)
        assert await cache.get_many(["k1", "k2"]) == [b"v1", None]
        redis_server.stop()
        t0 = time.perf_counter()
        for _ in range(3):  # three failures open the breaker
            assert await cache.get_many(["k1"]) == [None]
        assert cache.breaker.state == "open"
        # with the breaker open no call touches Redis: 200 look-ups cost next to nothing
        t1 = time.perf_counter()
        for _ in range(200):
            assert await cache.get_many(["k1"]) == [None]
            await cache.set_many([("k1", b"v")])
        assert time.perf_counter() - t1 < 1.0  # generous: a busy machine; the counts below are the proof
        assert time.perf_counter() - t0 < 5.0
        await cache.close()

    asyncio.run(run())
    get = {"backend": "redis", "op": "get"}
    assert m.registry.get_sample_value("hashrec_cache_requests_total", {**get, "result": "hit"}) == 1
    assert m.registry.get_sample_value("hashrec_cache_requests_total", {**get, "result": "error"}) == 3
    assert m.registry.get_sample_value("hashrec_cache_requests_total", {**get, "result": "skipped"}) == 200
    assert m.registry.get_sample_value("hashrec_cache_breaker_open") == 1


def test_cancelled_request_does_not_wedge_the_breaker(redis_server) -> None:  # type: ignore[no-untyped-def]
    """A request cancelled while its half-open trial waits on Redis must not leave the breaker stuck: the
    trial completes for the others (or, if the trial itself is cancelled, frees the slot)."""
    import signal

    clock = FakeClock()
    m = ServiceMetrics()

    async def run() -> None:
        breaker = CircuitBreaker(1, 5, clock=clock)
        cache = RedisCache(redis_server.url, ttl_s=30, timeout_s=1.0, pool_size=2, breaker=breaker, metrics=m)
        await cache.set_many([("k", b"v")])
        await _stored(m, 1)
        breaker.failure()  # open
        clock.t += 5  # half-open: the next call is the trial
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            task = asyncio.create_task(cache.get_many(["k"]))
            await asyncio.sleep(0.1)  # the trial is waiting on the frozen Redis
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 10  # the trial's MGET completes once Redis runs again, and closes it
        while breaker.state != "closed" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert breaker.state == "closed"
        assert await cache.get_many(["k"]) == [b"v"]
        # a trial abandoned outright (its task cancelled: shutdown) frees the slot
        breaker.failure()
        clock.t += 5
        assert breaker.allow() and not breaker.allow()
        breaker.release()
        assert breaker.allow()
        await cache.close()

    asyncio.run(run())


def test_concurrent_lookups_share_round_trips(redis_server) -> None:  # type: ignore[no-untyped-def]
    m = ServiceMetrics()

    async def run() -> None:
        cache = RedisCache(
            redis_server.url, ttl_s=30, timeout_s=0.5, pool_size=4, breaker=CircuitBreaker(3, 5), metrics=m
        )
        await cache.set_many([(f"k{i}", f"v{i}".encode()) for i in range(100)])
        await _stored(m, 100)
        cache.max_fetches = 1
        results = await asyncio.gather(*(cache.get_many([f"k{i}", "absent"]) for i in range(100)))
        assert [(r) for r in results] == [[f"v{i}".encode(), None] for i in range(100)]
        await cache.close()

    asyncio.run(run())
    get = {"backend": "redis", "op": "get"}
    assert m.registry.get_sample_value("hashrec_cache_requests_total", {**get, "result": "hit"}) == 100
    assert m.registry.get_sample_value("hashrec_cache_requests_total", {**get, "result": "miss"}) == 100
    info = redis.Redis.from_url(redis_server.url).info("commandstats")
    assert info["cmdstat_mget"]["calls"] <= 3  # 100 look-ups, at most a few round trips


def test_concurrent_writes_share_pipelines(redis_server) -> None:  # type: ignore[no-untyped-def]
    """Writes of concurrent requests leave together: one connection at a time writes, however many
    requests store answers at once (each used to take a pooled connection of its own)."""
    m = ServiceMetrics()

    async def run() -> None:
        cache = RedisCache(
            redis_server.url, ttl_s=30, timeout_s=0.5, pool_size=8, breaker=CircuitBreaker(3, 5), metrics=m
        )
        cache.max_writes = 1
        await asyncio.gather(*(cache.set_many([(f"w{i}", f"v{i}".encode())]) for i in range(200)))
        await _stored(m, 200)
        assert await cache.get_many([f"w{i}" for i in range(200)]) == [f"v{i}".encode() for i in range(200)]
        await cache.close()

    asyncio.run(run())
    assert (
        m.registry.get_sample_value(
            "hashrec_cache_requests_total", {"backend": "redis", "op": "set", "result": "ok"}
        )
        == 200
    )
    info = redis.Redis.from_url(redis_server.url).info("stats")
    # one write pipeline + one MGET at most; without coalescing, 200 writes would open all 8 connections
    assert info["total_connections_received"] <= 3, info["total_connections_received"]


def test_near_cache_write_does_not_wait_for_redis(redis_server) -> None:  # type: ignore[no-untyped-def]
    """Behind a near cache, a write returns once the near cache holds it; Redis gets it from the queue (a
    miss never waits a Redis round trip, or a stalled Redis' timeout, for a copy only other processes
    read)."""
    import signal

    m = ServiceMetrics()

    async def run() -> None:
        far = RedisCache(
            redis_server.url, ttl_s=30, timeout_s=2.0, pool_size=4, breaker=CircuitBreaker(3, 5), metrics=m
        )
        cache = TieredCache(LruCache(1 << 20, ttl_s=30, metrics=m), far)
        assert await far.get_many(["warm"]) == [None]  # a pooled connection is open
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.perf_counter()
            await cache.set_many([("k", b"v")])
            elapsed = time.perf_counter() - t0
            assert await cache.near.get_many(["k"]) == [b"v"]
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        # awaiting the frozen Redis would take its 4 s timeout (2 x 2 s): well over this generous bound
        assert elapsed < 1.0, elapsed
        await _stored(m, 1)  # the queued write lands once Redis runs again
        assert await far.get_many(["k"]) == [b"v"]
        await cache.close()

    asyncio.run(run())


def test_a_lone_write_leaves_after_the_linger(redis_server) -> None:  # type: ignore[no-untyped-def]
    """A write no other joins still reaches Redis (after ``write_linger_s``), with its TTL; writes arriving
    within the linger leave as one command."""
    m = ServiceMetrics()

    async def run() -> None:
        cache = RedisCache(
            redis_server.url, ttl_s=30, timeout_s=0.5, pool_size=4, breaker=CircuitBreaker(3, 5), metrics=m
        )
        cache.write_linger_s = 0.05
        await cache.set_many([("lone", b"v")])
        await cache.set_many([("second", b"w")])  # joins the first: same command
        assert redis.Redis.from_url(redis_server.url).get("lone") is None  # still lingering
        await _stored(m, 2)
        await cache.close()

    asyncio.run(run())
    r = redis.Redis.from_url(redis_server.url)
    assert r.get("lone") == b"v" and r.get("second") == b"w"
    assert 0 < r.pttl("lone") <= 30_000
    stats = r.info("commandstats")["cmdstat_evalsha"]
    # one write command; the first EVALSHA of a new Redis fails (NOSCRIPT) and redis-py loads the script
    assert stats["calls"] - stats.get("failed_calls", 0) == 1, stats


def test_a_cold_cache_stops_waiting_for_redis_until_hits_return(redis_server) -> None:  # type: ignore[no-untyped-def]
    """Lots of misses (a cold cache) drop the moving hit rate below the threshold: then look-ups read as
    misses at once, and only 1 in BYPASS_SAMPLE reaches Redis, in the background (Redis's own miss count
    says so); hits of those probes bring the rate back up and every look-up asks again. Writes go through
    all along."""
    from hashrec.service.cache import BYPASS_SAMPLE

    m = ServiceMetrics()
    info = redis.Redis.from_url(redis_server.url)

    def redis_misses() -> int:
        return int(info.info("stats")["keyspace_misses"])

    def bypassed() -> float:
        labels = {"backend": "redis", "op": "get", "result": "bypassed"}
        return m.registry.get_sample_value("hashrec_cache_requests_total", labels) or 0.0

    async def run() -> None:
        cache = RedisCache(redis_server.url, 30, 2.0, 4, CircuitBreaker(3, 5), metrics=m, bypass_below=0.05)
        n = 0
        while cache.state()["reads"] == "all":  # a fresh cache asks Redis about every key
            n += 1
            assert await cache.get_many([f"cold-{n}"]) == [None]
            assert n < 2000, "the hit rate never fell below the threshold"
        assert n > 100 and bypassed() == 0  # the rate starts warm: a few misses do not make a cache cold
        before = redis_misses()
        for i in range(10 * BYPASS_SAMPLE):
            assert await cache.get_many([f"colder-{i}"]) == [None]  # answered without a round trip
            await asyncio.sleep(0.002)  # the loop turns (as a server's does): the probes run
        assert redis_misses() - before == 10 and bypassed() == 10 * BYPASS_SAMPLE
        # the cache warms up (writes were never bypassed); the probes find answers, which lifts the rate
        # back above the threshold within a few dozen hits
        keys = [f"warm-{i}" for i in range(800)]
        await cache.set_many([(k, b"answer") for k in keys])
        await _stored(m, len(keys))
        looked = 0
        while cache.state()["reads"] != "all":
            assert await cache.get_many([keys[looked]]) == [None]
            await asyncio.sleep(0.002)
            looked += 1
            assert looked < len(keys), "hits did not bring the reads back"
        assert await cache.get_many(keys[-3:]) == [b"answer"] * 3  # every look-up asks again
        await cache.close()

    asyncio.run(run())


def test_a_probe_that_finds_its_own_answer_is_not_a_hit(redis_server) -> None:  # type: ignore[no-untyped-def]
    """A probe may leave after its request's answer was written (the MGET queue was busy): Redis then finds
    the key, but that hit says nothing about a warm cache, so the hit rate does not rise."""
    from hashrec.service.cache import BYPASS_SAMPLE

    m = ServiceMetrics()
    info = redis.Redis.from_url(redis_server.url)

    def redis_hits() -> int:
        return int(info.info("stats")["keyspace_hits"])

    async def run() -> None:
        cache = RedisCache(redis_server.url, 30, 2.0, 4, CircuitBreaker(3, 5), metrics=m, bypass_below=0.05)
        cache.hit_rate = 0.0  # cold (how it gets there: the test above)
        cache.max_fetches = 0  # hold the MGETs: the probe waits while its request's answer is written
        keys = [f"own-{i}" for i in range(BYPASS_SAMPLE)]
        for k in keys:  # the last of these is a probe
            assert await cache.get_many([k]) == [None]
        await cache.set_many([(k, b"answer") for k in keys])
        await _stored(m, len(keys))
        hits = redis_hits()
        cache.max_fetches = 1
        for i in range(BYPASS_SAMPLE):  # the next probe sets the held one off too
            assert await cache.get_many([f"other-{i}"]) == [None]
        deadline = time.monotonic() + 10
        while redis_hits() == hits:
            assert time.monotonic() < deadline, "the held probe never reached Redis"
            await asyncio.sleep(0.01)
        assert redis_hits() == hits + 1  # Redis found the probe's own key ...
        assert cache.hit_rate == 0.0  # ... which is not counted as a warm cache
        await cache.close()

    asyncio.run(run())
