"""The service process's runtime: native thread counts, the start-up heap freeze, and the latency sources
that per-request metrics cannot name (garbage-collector pauses and event loop lag).

Why: a request's latency histogram says *that* answers were slow, not *why*. Two causes stop every request
at once in a single-threaded asyncio server, and both are invisible from inside a request:

- **cyclic GC pauses**: a collection runs on whatever thread allocated the object that triggered it (the
  event loop, most of the time) and holds the GIL until it is done; a generation-2 collection walks every
  tracked object in the process (``gc.callbacks`` gives its start and stop);
- **event loop lag**: any callback that runs long (a GC pause, an inline model batch, a slow handler)
  delays every other ready callback; a ticker that asks to wake every ``interval_s`` measures how late it
  actually wakes.

Metrics (in the app's registry; both cost a few microseconds per event):

- ``hashrec_gc_pause_seconds{generation}`` (histogram): wall time of each collection;
- ``hashrec_event_loop_lag_seconds`` (histogram): how late each ticker wake-up was.

What they showed (docs/reliability.md): the service's hits allocate no GC-tracked containers at all, but
each cache miss allocates some 75 (answer lists, futures, the Redis write), so expiry waves are what
ran the collector, and a generation-2 collection walked the ~80,000 objects created at start-up (modules,
classes, FastAPI and pydantic structures) for 30-80 ms, holding the GIL: every request in flight waited.
:func:`freeze_startup_heap` moves those objects out of the collector's sight once start-up is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

log = logging.getLogger(__name__)

_PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def limit_native_threads(threads: int = 1) -> None:
    """Give each model call ``threads`` OpenMP/BLAS threads: concurrency comes from requests, not calls.

    Without this FAISS and BLAS each start one thread per core *per call*, and a few concurrent requests
    oversubscribe the cores (latency spikes, no throughput gain). Environment variables cover libraries
    loaded later and worker processes; the runtime calls cover those already loaded (numpy's BLAS is loaded
    before this runs, so only threadpoolctl reaches it).
    """
    import os
    import sys

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(threads)
    if "torch" in sys.modules:  # never import torch just to configure it (it costs a second at start-up)
        sys.modules["torch"].set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")


def install_drain(on_term: Callable[[], None], drain_s: float) -> Callable[[], None]:
    """On SIGTERM, call ``on_term()`` at once (readiness turns 503), then after ``drain_s`` hand the signal
    to the handler that was installed before (uvicorn's graceful shutdown: stop accepting, finish
    in-flight requests, run the lifespan's end). Returns a function that puts the previous handler back.

    A load balancer that polls /readyz stops sending traffic during the drain; requests that still arrive
    are served. Only the main thread may set signal handlers: elsewhere (an in-process test client) this
    does nothing.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def handler(sig: int, frame: Any) -> None:
        on_term()
        if callable(previous):
            loop.call_soon_threadsafe(loop.call_later, drain_s, previous, sig, frame)

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def freeze_startup_heap() -> int:
    """Collect once, then move every object alive now to the collector's permanent generation
    (``gc.freeze``); returns how many objects were frozen.

    Kept for a measured gain: closed-loop p99 11 ms with it, 34 ms without, paced p99 x2.2 (docs/service.md,
    bypass table).

    Why: objects that live as long as the process (imported modules, the app, the loaded bundle) never
    become garbage, yet every generation-2 collection walks them all. Frozen objects are skipped by every
    later collection, so a collection costs what the objects created since start-up cost. Reference counting
    still frees frozen objects that drop their last reference (a reloaded bundle's old snapshot, which has
    no cycles: tests/service/test_reload.py checks it is freed); only garbage *cycles* among frozen objects
    would stay, and nothing frozen here is expected to form one later.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauseMonitor:
    """Times every cyclic-GC collection of the process into ``hashrec_gc_pause_seconds{generation}``.

    ``install()`` appends a callback to ``gc.callbacks`` (process-wide); ``uninstall()`` removes it. Safe
    with several instances (each records into its own registry). Collections can start on any thread, but
    the GIL is held for a whole collection, so start and stop of one collection never interleave with
    another's: one pending start time is enough.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pauses = Histogram(
            "hashrec_gc_pause_seconds",
            "Wall time of each cyclic garbage-collector collection, by generation (the GIL is held "
            "throughout: every request waits)",
            ["generation"],
            buckets=_PAUSE_BUCKETS,
            registry=registry,
        )
        self._children = {g: self.pauses.labels(str(g)) for g in range(3)}
        self._started: float | None = None
        self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:  # installed mid-collection
            return
        elapsed = time.perf_counter() - self._started
        self._started = None
        child = self._children.get(int(info.get("generation", 2)))
        if child is not None:
            child.observe(elapsed)

    def install(self) -> None:
        """Start timing collections (idempotent)."""
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        """Stop timing collections (idempotent)."""
        if self._installed:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self._callback)
            self._installed = False


class LoopLagMonitor:
    """A ticker on the event loop: sleeps ``interval_s`` and records how much later than asked it woke up
    (``hashrec_event_loop_lag_seconds``). Lag above a few milliseconds means something held the loop."""

    def __init__(self, registry: CollectorRegistry, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.lag = Histogram(
            "hashrec_event_loop_lag_seconds",
            f"How late a ticker that sleeps {interval_s:g} s wakes up on the event loop (time the loop "
            "spent on other callbacks, GC pauses included, beyond the sleep)",
            buckets=_PAUSE_BUCKETS,
            registry=registry,
        )
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        observe = self.lag.observe
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            observe(max(0.0, time.perf_counter() - t0 - self.interval_s))

    def start(self) -> None:
        """Start the ticker on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hashrec-loop-lag")

    async def stop(self) -> None:
        """Cancel the ticker and wait for it to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
