"""Micro-batching of concurrent model calls: requests that arrive together share one Retriever call.

Why: a single-user Retriever call pays a fixed cost (Python and numpy per-call overhead) on top of the
per-user search; under load, grouping the users of concurrent requests into one call amortises that fixed
cost. No timer is involved ("natural" batching): requests queue during one turn of the event loop and the
queue is flushed at the next turn (``call_soon``), so a lone request waits for nothing but the requests that
arrived with it.

Where a batch runs: batches of at most ``inline_users`` users are computed **on the event loop thread**
itself. Such a call costs well under a millisecond of CPU (the compiled scan and re-rank), less than what a
hand-off to a worker thread costs: the executor queue, a thread wake-up, ``call_soon_threadsafe`` back, and,
worst, the GIL: a worker that wants the GIL while the loop is busy waits up to the 5 ms switch interval,
which was the uncached route's tail latency (and about half of its CPU per request, measured with py-spy and
``/proc/<pid>/stat``). Larger batches (a big ``POST /recommend``) go to the compute threads, at most
``max_inflight`` at a time, so they never stall the loop; while those slots are busy, further large batches
queue up and leave together.

Batches only merge calls with the same snapshot (bundle version) and the same parameters, so a batch never
mixes versions, and each request still gets exactly the answer the Retriever gives for its user.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

log = logging.getLogger(__name__)

BatchKey = tuple[int, int, int, bool]


class MicroBatcher:
    """Queues per (snapshot, k, C, exclude_seen); small batches run inline, large ones in ``executor``
    (at most ``max_inflight`` at a time).

    Lives on the event loop thread (no locks). ``inline_users = 0`` sends every call to the executor.
    """

    def __init__(
        self,
        executor: Executor,
        max_inflight: int,
        max_batch: int = 64,
        observe: Callable[[float, int], None] | None = None,
        inline_users: int = 0,
    ) -> None:
        self.executor = executor
        self.max_inflight = max(1, max_inflight)
        self.max_batch = max(1, max_batch)
        self.inline_users = max(0, inline_users)
        self.observe = observe  # (seconds, batch size) per call, for metrics
        self._queues: OrderedDict[BatchKey, tuple[Any, list[tuple[str, asyncio.Future[Any]]]]] = OrderedDict()
        self._inflight = 0
        self._flush_scheduled = False

    def submit(
        self, snap: Any, users: list[str], k: int, candidates: int, exclude_seen: bool
    ) -> list[asyncio.Future[Any]]:
        """Queue users; one future per user resolves to the Retriever's ``Recommendation`` (None = unknown).

        Plain futures, not tasks: awaiting them in order costs nothing extra (``asyncio.gather`` would wrap
        each in a task).
        """
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Any]] = [loop.create_future() for _ in users]
        key: BatchKey = (id(snap), k, candidates, exclude_seen)
        entry = self._queues.get(key)
        if entry is None:
            # the snapshot object rides along with its queue: it stays alive until the batch is answered
            entry = (snap, [])
            self._queues[key] = entry
        entry[1].extend(zip(users, futs, strict=True))
        # flush at the next turn of the loop: the requests handled in this turn join the same batch
        self._schedule_flush(loop)
        return futs

    async def recommend(self, snap: Any, user: str, k: int, candidates: int, exclude_seen: bool) -> Any:
        """The Retriever's ``Recommendation`` (or None for an unknown user) for one user, batched."""
        (fut,) = self.submit(snap, [user], k, candidates, exclude_seen)
        return await fut

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the queued small batches now (inline), then hand large ones to free compute slots."""
        self._flush_scheduled = False
        if self.inline_users:
            for key in [
                key for key, (_s, waiting) in self._queues.items() if len(waiting) <= self.inline_users
            ]:
                snap, batch = self._queues.pop(key)
                self._run_inline(snap, key, batch)
        self._dispatch(loop)

    def _run_inline(self, snap: Any, key: BatchKey, batch: list[tuple[str, asyncio.Future[Any]]]) -> None:
        _, k, c, excl = key
        t0 = time.perf_counter()
        recs: list[Any] | None = None
        error: BaseException | None = None
        try:
            recs = snap.retriever.recommend([u for u, _f in batch], k, c, exclude_seen=excl)
        except Exception as err:  # handed to every waiting request, as an executor call's error would be
            error = err
        if self.observe is not None:
            self.observe(time.perf_counter() - t0, len(batch))
        self._resolve(batch, recs, error)

    @staticmethod
    def _resolve(
        batch: list[tuple[str, asyncio.Future[Any]]], recs: list[Any] | None, err: BaseException | None
    ) -> None:
        if err is not None or recs is None:
            for _u, fut in batch:
                if not fut.done():  # a client may have gone away meanwhile
                    fut.set_exception(err if err is not None else RuntimeError("no result"))
            return
        for (_u, fut), rec in zip(batch, recs, strict=True):
            if not fut.done():
                fut.set_result(rec)

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush, loop)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand the queued large batches to free compute slots (small ones wait for :meth:`_flush`)."""
        while self._inflight < self.max_inflight:
            key = next((key for key, (_s, w) in self._queues.items() if len(w) > self.inline_users), None)
            if key is None:
                return
            snap, waiting = self._queues[key]
            batch, rest = waiting[: self.max_batch], waiting[self.max_batch :]
            if rest:
                self._queues[key] = (snap, rest)
                self._queues.move_to_end(key)  # round-robin between parameter sets
                if len(rest) <= self.inline_users:
                    self._schedule_flush(loop)
            else:
                del self._queues[key]
            _, k, c, excl = key
            users = [u for u, _f in batch]
            self._inflight += 1
            t0 = time.perf_counter()
            call = functools.partial(snap.retriever.recommend, users, k, c, exclude_seen=excl)
            cf = loop.run_in_executor(self.executor, call)
            cf.add_done_callback(functools.partial(self._done, batch=batch, t0=t0, loop=loop))

    def _done(
        self,
        f: asyncio.Future[Any],
        batch: list[tuple[str, asyncio.Future[Any]]],
        t0: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._inflight -= 1
        if self.observe is not None:
            self.observe(time.perf_counter() - t0, len(batch))
        err = f.exception() if not f.cancelled() else asyncio.CancelledError()
        self._resolve(batch, None if err is not None else f.result(), err)
        self._dispatch(loop)
