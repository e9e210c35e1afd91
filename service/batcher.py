"""Micro-batching of concurrent model calls: requests that arrive together share one Retriever call.

Why: a single-user Retriever call pays a fixed cost (Python and numpy per-call overhead, a thread hand-off,
GIL switches) on top of the per-user search; under load, grouping the users of concurrent requests into
one call amortises that fixed cost. No timer is involved ("natural" batching): when a compute slot is free,
whatever is queued goes at once (a lone request is never delayed); while all slots are busy, arrivals queue
up and leave together as the next batch. So latency at low load is a single call's, and throughput at high
load is the batched one's.

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
    """Queues per (snapshot, k, C, exclude_seen); at most ``max_inflight`` Retriever calls at a time.

    Lives on the event loop thread (no locks); the Retriever calls run in ``executor``.
    """

    def __init__(
        self,
        executor: Executor,
        max_inflight: int,
        max_batch: int = 64,
        observe: Callable[[float, int], None] | None = None,
    ) -> None:
        self.executor = executor
        self.max_inflight = max(1, max_inflight)
        self.max_batch = max(1, max_batch)
        self.observe = observe  # (seconds, batch size) per call, for metrics
        self._queues: OrderedDict[BatchKey, tuple[Any, list[tuple[str, asyncio.Future[Any]]]]] = OrderedDict()
        self._inflight = 0

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
        self._dispatch(loop)
        return futs

    async def recommend(self, snap: Any, user: str, k: int, candidates: int, exclude_seen: bool) -> Any:
        """The Retriever's ``Recommendation`` (or None for an unknown user) for one user, batched."""
        (fut,) = self.submit(snap, [user], k, candidates, exclude_seen)
        return await fut

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._inflight < self.max_inflight and self._queues:
            key, (snap, waiting) = next(iter(self._queues.items()))
            batch, rest = waiting[: self.max_batch], waiting[self.max_batch :]
            if rest:
                self._queues[key] = (snap, rest)
                self._queues.move_to_end(key)  # round-robin between parameter sets
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
        if err is not None:
            for _u, fut in batch:
                if not fut.done():  # a client may have gone away meanwhile
                    fut.set_exception(err)
        else:
            for (_u, fut), rec in zip(batch, f.result(), strict=True):
                if not fut.done():
                    fut.set_result(rec)
        self._dispatch(loop)
