"""Refresh-ahead: recompute a cached answer in the background during the last part of its life.

Why: with cache-aside alone, an entry that expires makes its next request a miss; entries cached together
(a warm-up, the minutes after a reload) expire together, and a wave of misses lands on the model at once,
which lifted the soak's p99 from ~10 ms to 40-80 ms once per TTL (docs/reliability.md). With refresh-ahead,
a hit on an entry in the last ``fraction`` of its life is still served from the cache, and the answer is
recomputed once in the background and stored again with a fresh (jittered) TTL in every cache level: a key
that keeps being asked for never expires, and the recomputations happen one by one, as hits find them due,
instead of as a wave of misses.

Contract of :meth:`RefreshAhead.schedule`:

- it never blocks and never raises: the request that found the entry due is answered from the cache
  whatever happens to the refresh;
- one refresh per key at a time (``in flight`` keys are skipped), at most ``max_concurrent`` at once
  (further due keys are skipped, counted as ``busy``: a later hit finds them due again, or they expire);
- a failed refresh is counted (``result="error"``) and logged (a warning at most every 10 s, the rest at
  debug level), and the entry lives on until it expires.

Deduplication is per process: replicas that share a Redis may each refresh a hot key once per TTL.

Metrics: ``hashrec_cache_refreshes_total{result="refreshed|error|busy|superseded"}`` (``superseded``: the
bundle changed before the refresh ran, so its answer would never be read) and the gauge
``hashrec_cache_refreshes_in_flight``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

RESULTS = ("refreshed", "error", "busy", "superseded")
LOG_EVERY_S = 10.0


class SupersededError(Exception):
    """Raised by a refresh that found nothing worth doing (its bundle version is no longer served)."""


class RefreshAhead:
    """Schedules background refreshes of cache keys; lives on the event loop thread (no locks)."""

    def __init__(
        self, fraction: float, max_concurrent: int, registry: CollectorRegistry | None = None
    ) -> None:
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.fraction = fraction
        self.max_concurrent = max_concurrent
        self._in_flight: set[str] = set()
        self._last_warning = float("-inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: dict[str, Counter] = {}
        self._gauge: Gauge | None = None
        if registry is not None:
            counter = Counter(
                "hashrec_cache_refreshes",
                "Background refreshes of cached answers found in the last part of their TTL, by result",
                ["result"],
                registry=registry,
            )
            self._results = {r: counter.labels(r) for r in RESULTS}
            self._gauge = Gauge(
                "hashrec_cache_refreshes_in_flight", "Background refreshes running now", registry=registry
            )

    @property
    def enabled(self) -> bool:
        """Whether refresh-ahead is on (``fraction`` > 0)."""
        return self.fraction > 0

    def in_flight(self, key: str) -> bool:
        """Whether a refresh of ``key`` is running now."""
        return key in self._in_flight

    def _count(self, result: str) -> None:
        child = self._results.get(result)
        if child is not None:
            child.inc()

    def schedule(self, key: str, refresh: Callable[[], Awaitable[None]]) -> bool:
        """Start ``refresh()`` for ``key`` in the background unless one is already running for it or
        ``max_concurrent`` are; returns whether it was started. Never raises (see the module docstring)."""
        if key in self._in_flight:
            return False
        if len(self._in_flight) >= self.max_concurrent:
            self._count("busy")
            return False
        try:
            task = asyncio.get_running_loop().create_task(self._run(key, refresh))
        except Exception:  # no running loop (shutting down): the entry simply expires
            log.debug("refresh of a cache entry not started", exc_info=True)
            return False
        self._in_flight.add(key)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._gauge is not None:
            self._gauge.set(len(self._in_flight))
        return True

    async def _run(self, key: str, refresh: Callable[[], Awaitable[None]]) -> None:
        try:
            await refresh()
        except SupersededError:
            self._count("superseded")
        except asyncio.CancelledError:
            raise  # shutdown (see close)
        except Exception as err:  # a refresh is an optimisation: its failure is counted, never propagated
            self._count("error")
            # at most one warning per LOG_EVERY_S: a broken model would otherwise log once per due hit
            now = time.monotonic()
            level = logging.WARNING if now - self._last_warning >= LOG_EVERY_S else logging.DEBUG
            if level == logging.WARNING:
                self._last_warning = now
            log.log(level, "background refresh of a cached answer failed: %s: %s", type(err).__name__, err)
        else:
            self._count("refreshed")
        finally:
            self._in_flight.discard(key)
            if self._gauge is not None:
                self._gauge.set(len(self._in_flight))

    async def close(self) -> None:
        """Cancel running refreshes and wait for them (shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
