"""Answer cache (cache-aside): Redis with a circuit breaker, or an in-process LRU, or nothing.

Values are opaque bytes (the serialised answer); keys are built by the caller (``answer_key``) from the bundle
version and every parameter that changes the answer, so a new bundle version never reads old entries.

Failure policy: a cache is an optimisation, never a dependency. Redis errors and timeouts are counted
(``hashrec_cache_requests{result="error"}``), logged (once per breaker opening, not per request), and
answered as a miss. After ``breaker_failures`` consecutive failures the breaker opens: for
``breaker_reset_s`` no request touches Redis (``result="skipped"``), so a dead or stalled Redis costs no
timeout per request; then one trial call decides whether to close it again.

Expiry is spread out: each entry lives a TTL drawn uniformly from ``[ttl * (1 - jitter), ttl]``
(:func:`jittered_ttls`). With one fixed TTL, answers cached together (a warm-up, a traffic burst, the first
minutes after a reload) all expire together, and every one of those users misses at once: a 10-minute soak
at 70% of capacity showed two multi-second latency spikes exactly one TTL apart (docs/reliability.md).

Stored entries carry their own times (:class:`CachedAnswer`: the answer's bytes, when it was stored and when
it expires, wall clock): Redis values are the answer behind a small versioned header (:func:`pack_entry`),
so a reader knows how much of an entry's life is left without a second round trip (PTTL) per hit. That is
what refresh-ahead (``refresh.py``) needs. A value without a valid header of the current format is a miss
(``result="invalid"``), never served: keys carry the format generation (``KEY_PREFIX``), so processes of
an older release never read these values either.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, Protocol

from .metrics import ServiceMetrics


def jittered_ttls(
    ttl_s: float, jitter: float, n: int, rand: Callable[[], float] = random.random
) -> list[float]:
    """``n`` TTLs (seconds) drawn uniformly from ``[ttl_s * (1 - jitter), ttl_s]``; ``jitter`` in [0, 1)."""
    if jitter <= 0:
        return [ttl_s] * n
    return [ttl_s * (1.0 - jitter * rand()) for _ in range(n)]


log = logging.getLogger(__name__)

# v2: values are header + answer (pack_entry); v1 values were the bare answer. A new prefix, so that a
# release that predates the header (reading v1 keys) never serves a header as JSON, and v2 readers never
# meet a bare v1 value.
KEY_PREFIX = "hashrec:ans:v2"
_MAX_KEYS_PER_MGET = 512

# Header of a stored value: magic, format number, stored_at and expires_at (float64 seconds, Unix time).
# Wall-clock times because they are shared between processes and hosts (monotonic clocks are per boot).
_ENTRY_MAGIC = b"HRa"
ENTRY_FORMAT = 1
_HEADER = struct.Struct("<3sBdd")
HEADER_BYTES = _HEADER.size


class CachedAnswer(NamedTuple):
    """One cached answer: the ``items`` JSON bytes and its life (Unix seconds). A tuple subclass: cheap to
    build per Redis hit, and kept as is in the in-process LRU."""

    body: bytes
    stored_at: float
    expires_at: float

    def refresh_due(self, now: float, fraction: float) -> bool:
        """Whether ``now`` is in the last ``fraction`` of the entry's life (never when ``fraction`` <= 0)."""
        return fraction > 0 and now >= self.expires_at - fraction * (self.expires_at - self.stored_at)


def pack_entry(entry: CachedAnswer) -> bytes:
    """The value stored in Redis: header (format :data:`ENTRY_FORMAT`) + the answer's bytes."""
    return _HEADER.pack(_ENTRY_MAGIC, ENTRY_FORMAT, entry.stored_at, entry.expires_at) + entry.body


def unpack_entry(raw: bytes) -> CachedAnswer | None:
    """The entry stored by :func:`pack_entry`; None for anything else (another format number, a value
    without the header, a truncated one): the caller treats it as a miss, never as an answer."""
    if len(raw) < HEADER_BYTES:
        return None
    magic, fmt, stored_at, expires_at = _HEADER.unpack_from(raw)
    if magic != _ENTRY_MAGIC or fmt != ENTRY_FORMAT or not stored_at <= expires_at:
        return None
    return CachedAnswer(raw[HEADER_BYTES:], stored_at, expires_at)


def stamp_entries(
    items: Sequence[tuple[str, bytes]], ttl_s: float, jitter: float, now: float
) -> list[tuple[str, CachedAnswer]]:
    """``items`` as entries stored ``now``, each with its own TTL from :func:`jittered_ttls`."""
    ttls = jittered_ttls(ttl_s, jitter, len(items))
    return [(key, CachedAnswer(body, now, now + ttl)) for (key, body), ttl in zip(items, ttls, strict=True)]


def answer_key(version: str, user: str, k: int, candidates: int, exclude_seen: bool) -> str:
    """The cache key of one user's answer: bundle version + every parameter that changes the answer."""
    return f"{KEY_PREFIX}:{version}:{k}:{candidates}:{int(exclude_seen)}:{user}"


class AnswerCache(Protocol):
    """What the service needs from a cache."""

    backend: str

    async def get_many(self, keys: Sequence[str]) -> list[CachedAnswer | None]:
        """Entries for ``keys`` (None = miss or error); never raises."""
        ...

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store answers, each with a TTL drawn by :func:`jittered_ttls`; never raises."""
        ...

    async def clear(self) -> None:
        """Drop local entries (a reload calls this; Redis entries of old versions simply expire)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    def state(self) -> dict[str, object]:
        """A small JSON-able description for /healthz."""
        ...


class NullCache:
    """No caching (``HASHREC_CACHE=none``): every look-up misses, nothing is counted."""

    backend = "none"

    async def get_many(self, keys: Sequence[str]) -> list[CachedAnswer | None]:
        """All misses."""
        return [None] * len(keys)

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Nothing to do."""

    async def clear(self) -> None:
        """Nothing to do."""

    async def close(self) -> None:
        """Nothing to do."""

    def state(self) -> dict[str, object]:
        """Backend name only."""
        return {"backend": self.backend}


class LruCache:
    """In-process LRU with a TTL (the embedded default when no Redis URL is configured, and the near cache in
    front of Redis).

    Lives on the event loop thread only, so it needs no lock. Memory is bounded by ``max_entries``.
    ``clock`` is wall-clock seconds (entries' times are Unix times, shared with Redis values).
    """

    backend = "memory"

    def __init__(
        self,
        max_entries: int,
        ttl_s: float,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.time,
        ttl_jitter: float = 0.0,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.ttl_jitter = ttl_jitter
        self._data: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._metrics = metrics
        self.clock = clock

    def _count(self, op: str, result: str, n: int = 1) -> None:
        if self._metrics is not None and n:
            self._metrics.cache.labels(self.backend, op, result).inc(n)

    async def get_many(self, keys: Sequence[str]) -> list[CachedAnswer | None]:
        """Fresh entries move to the most-recent end; expired ones are dropped and miss."""
        now = self.clock()
        out: list[CachedAnswer | None] = []
        for key in keys:
            entry = self._data.get(key)
            if entry is None or entry.expires_at < now:
                if entry is not None:
                    del self._data[key]
                out.append(None)
            else:
                self._data.move_to_end(key)
                out.append(entry)
        hits = sum(v is not None for v in out)
        self._count("get", "hit", hits)
        self._count("get", "miss", len(out) - hits)
        return out

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Insert or replace, each with a jittered TTL from now."""
        self.put_entries(stamp_entries(items, self.ttl_s, self.ttl_jitter, self.clock()))

    def put_entries(self, entries: Sequence[tuple[str, CachedAnswer]]) -> None:
        """Insert or replace entries that carry their own times (an entry found in Redis keeps its expiry
        here: both levels then expire, and become due for a refresh, together); evicts least recently used
        entries beyond ``max_entries``."""
        for key, entry in entries:
            self._data[key] = entry
            self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
        self._count("set", "ok", len(entries))

    async def clear(self) -> None:
        """Drop everything (old-version entries would never be read again: free the memory now)."""
        self._data.clear()

    async def close(self) -> None:
        """Nothing to release."""

    def __len__(self) -> int:
        return len(self._data)

    def state(self) -> dict[str, object]:
        """Backend, entries, capacity."""
        return {"backend": self.backend, "entries": len(self._data), "max_entries": self.max_entries}


class CircuitBreaker:
    """Consecutive-failure breaker: closed -> open (after ``failures``) -> half-open (one trial) -> closed.

    Single-threaded (event loop) use; ``clock`` is injectable for tests.
    """

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures_to_open = failures
        self.reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        """Current state (``half_open`` = the reset time has passed and a trial call may go through)."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether a call may go to the backend now. In half-open state only one trial at a time."""
        st = self.state
        if st == "closed":
            return True
        if st == "half_open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def success(self) -> None:
        """A call succeeded: close the breaker."""
        if self._opened_at is not None:
            log.info("cache breaker closed: backend answers again")
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def release(self) -> None:
        """A call was abandoned (its request was cancelled) before it could tell: let another one try.

        Without this, a half-open trial whose request is cancelled would hold the trial slot forever and the
        breaker would never close again.
        """
        self._trial_in_flight = False

    def failure(self) -> bool:
        """A call failed; returns True when this failure opened (or re-opened) the breaker."""
        self._failures += 1
        was_trial = self._trial_in_flight
        self._trial_in_flight = False
        if was_trial or (self._opened_at is None and self._failures >= self.failures_to_open):
            self._opened_at = self._clock()
            return True
        return False


class RedisCache:
    """Cache-aside in Redis (``redis.asyncio``, a bounded connection pool, short timeouts, no retries).

    Retries are disabled on purpose: a retry multiplies the time a request waits on a failing Redis, and the
    breaker, not the client, decides when to try again.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: float,
        timeout_s: float,
        pool_size: int,
        breaker: CircuitBreaker,
        metrics: ServiceMetrics | None = None,
        ttl_jitter: float = 0.0,
    ) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.ttl_s = ttl_s
        self.ttl_jitter = ttl_jitter
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.timeout_s = timeout_s
        self.breaker = breaker
        self._metrics = metrics
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = Redis(connection_pool=self._pool)
        self._last_error: str | None = None
        self.max_fetches = max(1, min(4, pool_size))
        self._waiting: deque[tuple[list[str], asyncio.Future[list[CachedAnswer | None]]]] = deque()
        self._fetching = 0
        self.max_writes = max(1, min(2, pool_size))
        self._writes: deque[tuple[list[tuple[str, CachedAnswer]], asyncio.Future[None]]] = deque()
        self._writing = 0
        self._queued_writes = 0
        self.max_queued_writes = 10_000
        self._tasks: set[asyncio.Task[None]] = set()

    def _count(self, op: str, result: str, n: int = 1) -> None:
        if self._metrics is not None and n:
            self._metrics.cache.labels(self.backend, op, result).inc(n)

    def _on_failure(self, op: str, n: int, err: BaseException) -> None:
        self._count(op, "error", n)
        self._last_error = f"{type(err).__name__}: {err}"
        if self.breaker.failure():
            log.warning(
                "cache breaker opened after Redis %s failed: %s; answering from the model for %.1f s",
                op,
                self._last_error,
                self.breaker.reset_s,
            )
            if self._metrics is not None:
                self._metrics.breaker_open.set(1)
        else:
            log.debug("Redis %s failed: %s", op, self._last_error)

    def _on_success(self) -> None:
        if self.breaker.state != "closed" and self._metrics is not None:
            self._metrics.breaker_open.set(0)
        self.breaker.success()

    async def get_many(self, keys: Sequence[str]) -> list[CachedAnswer | None]:
        """Entries for ``keys``; a failure or an open breaker reads as all misses, and so does a value that
        is not a valid entry of the current format (counted as ``result="invalid"``).

        Look-ups of concurrent requests are coalesced: while ``max_fetches`` MGETs are in flight, new
        look-ups queue and go together in the next MGET (one round trip and one client call for many
        requests; the Python client's per-call cost, not Redis, limits a cached service otherwise).
        """
        if not keys:
            return []
        if self.breaker.state == "open":
            self._count("get", "skipped", len(keys))
            return [None] * len(keys)
        fut: asyncio.Future[list[CachedAnswer | None]] = asyncio.get_running_loop().create_future()
        self._waiting.append((list(keys), fut))
        self._kick()
        # a cancelled request cancels only its own wait: the MGET it joined completes for the others
        return await fut

    def _kick(self) -> None:
        while self._fetching < self.max_fetches and self._waiting:
            batch: list[tuple[list[str], asyncio.Future[list[CachedAnswer | None]]]] = []
            n = 0
            while self._waiting and (not batch or n + len(self._waiting[0][0]) <= _MAX_KEYS_PER_MGET):
                item = self._waiting.popleft()
                batch.append(item)
                n += len(item[0])
            self._fetching += 1
            task = asyncio.get_running_loop().create_task(self._fetch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fetch(self, batch: list[tuple[list[str], asyncio.Future[list[CachedAnswer | None]]]]) -> None:
        keys = [k for ks, _f in batch for k in ks]
        values: list[CachedAnswer | None] = [None] * len(keys)
        try:
            if not self.breaker.allow():
                self._count("get", "skipped", len(keys))
                return
            try:
                # wait_for bounds the whole call (pool wait + connect + reply) even if a socket timeout misfires
                raw = await asyncio.wait_for(self._redis.mget(keys), timeout=self.timeout_s * 2)
            except asyncio.CancelledError:
                self.breaker.release()  # shutting down: the trial (if this was one) never finished
                raise
            except Exception as err:  # any Redis/OS/timeout error is a cache failure, never the request's
                self._on_failure("get", len(keys), err)
                return
            self._on_success()
            found = sum(isinstance(v, bytes) for v in raw)
            values = [unpack_entry(v) if isinstance(v, bytes) else None for v in raw]
            hits = sum(v is not None for v in values)
            self._count("get", "hit", hits)
            self._count("get", "invalid", found - hits)
            self._count("get", "miss", len(keys) - found)
        finally:
            pos = 0
            for ks, fut in batch:  # every waiting request gets an answer, whatever happened above
                if not fut.done():
                    fut.set_result(values[pos : pos + len(ks)])
                pos += len(ks)
            self._fetching -= 1
            self._kick()

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store answers, each with a jittered TTL from now (see :meth:`put_entries`)."""
        await self.put_entries(stamp_entries(items, self.ttl_s, self.ttl_jitter, time.time()))

    async def put_entries(self, entries: Sequence[tuple[str, CachedAnswer]], wait: bool = True) -> None:
        """SET PX (the time left until each entry's ``expires_at``); failures are counted, not raised.

        Writes of concurrent requests are coalesced like look-ups: at most ``max_writes`` pipelines are in
        flight and the writes queued meanwhile leave together in the next one. Without this every miss took
        a pooled connection of its own: in an expiry wave they exhausted the pool, waits for a connection
        timed out, and the breaker opened.

        ``wait=False`` returns once the entries are queued (the near cache calls it so: it already holds
        the entry, so nobody in this process needs Redis to have it); at most ``max_queued_writes`` entries
        wait, further ones are dropped and counted as ``skipped``.
        """
        if not entries:
            return
        if self.breaker.state == "open" or (not wait and self._queued_writes >= self.max_queued_writes):
            self._count("set", "skipped", len(entries))
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.append((list(entries), fut))
        self._queued_writes += len(entries)
        self._kick_writes()
        if wait:
            await fut  # a cancelled request cancels only its own wait: the pipeline completes for the others

    def _kick_writes(self) -> None:
        while self._writing < self.max_writes and self._writes:
            batch: list[tuple[list[tuple[str, CachedAnswer]], asyncio.Future[None]]] = []
            n = 0
            while self._writes and (not batch or n + len(self._writes[0][0]) <= _MAX_KEYS_PER_MGET):
                item = self._writes.popleft()
                batch.append(item)
                n += len(item[0])
            self._queued_writes -= n
            self._writing += 1
            task = asyncio.get_running_loop().create_task(self._write(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: list[tuple[list[tuple[str, CachedAnswer]], asyncio.Future[None]]]) -> None:
        entries = [e for es, _f in batch for e in es]
        try:
            if not self.breaker.allow():
                self._count("set", "skipped", len(entries))
                return
            try:
                pipe = self._redis.pipeline(transaction=False)
                now = time.time()
                for key, entry in entries:
                    pipe.set(key, pack_entry(entry), px=max(1, int((entry.expires_at - now) * 1000)))
                await asyncio.wait_for(pipe.execute(), timeout=self.timeout_s * 2)
            except asyncio.CancelledError:
                self.breaker.release()
                raise
            except Exception as err:
                self._on_failure("set", len(entries), err)
                return
            self._on_success()
            self._count("set", "ok", len(entries))
        finally:
            for _es, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            self._writing -= 1
            self._kick_writes()

    async def clear(self) -> None:
        """Nothing local to drop: keys carry the version, old ones expire by TTL."""

    async def ping(self) -> bool:
        """Whether Redis answers now (for /healthz; bypasses the breaker, never raises)."""
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), timeout=self.timeout_s * 2))
        except Exception:
            return False

    async def close(self) -> None:
        """Answer queued look-ups as misses, drop queued writes, stop in-flight calls, close the pool."""
        while self._waiting:
            keys, fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result([None] * len(keys))
        while self._writes:
            _entries, wfut = self._writes.popleft()
            if not wfut.done():
                wfut.set_result(None)
        self._queued_writes = 0
        for task in list(self._tasks):
            task.cancel()
        try:
            await self._redis.aclose()
            await self._pool.disconnect()
        except Exception as err:
            log.debug("closing Redis pool: %s", err)

    def state(self) -> dict[str, object]:
        """Backend, breaker state, last error."""
        return {"backend": self.backend, "breaker": self.breaker.state, "last_error": self._last_error}


class TieredCache:
    """A small in-process LRU ("near cache") in front of Redis.

    Safe without invalidation: a key names the bundle version and every parameter, and the answer for a key
    never changes, so an entry can only be evicted, never stale. Both levels hold the same entry with the
    same expiry (an entry read from Redis keeps its times in the near cache). Hot keys are then answered without a
    network round trip; Redis still shares answers between processes and replicas and survives restarts.
    """

    backend = "redis"

    def __init__(self, near: LruCache, far: RedisCache) -> None:
        self.near = near
        self.far = far

    async def get_many(self, keys: Sequence[str]) -> list[CachedAnswer | None]:
        """Near hits first; the misses from Redis (which then also fill the near cache)."""
        out = await self.near.get_many(keys)
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            far = await self.far.get_many([keys[i] for i in missing])
            found: list[tuple[str, CachedAnswer]] = []
            for i, v in zip(missing, far, strict=True):
                if v is not None:
                    out[i] = v
                    found.append((keys[i], v))
            if found:
                self.near.put_entries(found)
        return out

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Write to both levels, the same entry (one TTL draw) in each; returns once the near cache has it.

        The Redis write is queued, not awaited: this process reads its own write from the near cache, and a
        miss's answer (or a background refresh's slot) need not wait a Redis round trip for a copy that
        only other processes will read.
        """
        entries = stamp_entries(items, self.near.ttl_s, self.near.ttl_jitter, self.near.clock())
        self.near.put_entries(entries)
        await self.far.put_entries(entries, wait=False)

    async def clear(self) -> None:
        """Drop the near entries (free memory on reload); Redis entries of old versions expire."""
        await self.near.clear()

    async def ping(self) -> bool:
        """Whether Redis answers now."""
        return await self.far.ping()

    async def close(self) -> None:
        """Close the Redis pool."""
        await self.far.close()

    def state(self) -> dict[str, object]:
        """Redis state plus the near cache's size."""
        return {**self.far.state(), "near": self.near.state()}


def make_cache(
    backend: str,
    *,
    redis_url: str | None,
    ttl_s: float,
    max_entries: int,
    timeout_s: float,
    pool_size: int,
    breaker_failures: int,
    breaker_reset_s: float,
    near_entries: int = 0,
    metrics: ServiceMetrics | None = None,
    ttl_jitter: float = 0.0,
) -> AnswerCache:
    """Build the configured cache (``redis``, ``memory`` or ``none``); ``near_entries`` > 0 puts an
    in-process LRU of that size in front of Redis; ``ttl_jitter``: see :func:`jittered_ttls`."""
    if backend == "redis":
        if not redis_url:
            raise ValueError("redis cache needs a redis_url")
        breaker = CircuitBreaker(breaker_failures, breaker_reset_s)
        far = RedisCache(redis_url, ttl_s, timeout_s, pool_size, breaker, metrics, ttl_jitter=ttl_jitter)
        if near_entries > 0:
            return TieredCache(LruCache(near_entries, ttl_s, metrics, ttl_jitter=ttl_jitter), far)
        return far
    if backend == "memory":
        return LruCache(max_entries, ttl_s, metrics, ttl_jitter=ttl_jitter)
    if backend == "none":
        return NullCache()
    raise ValueError(f"unknown cache backend {backend!r}")
