"""Micro-batching of concurrent model calls: requests that arrive together share one Retriever call.

Kept for a measured gain (docs/service.md, bypass table): against one executor call per request,
uncached req/s x1.28-1.49 and p99 x1.31-1.42; running the small batches inline on the event loop, rather
than always in the thread pool, gave p99 x1.36-1.54 at the same throughput (noisy: one pair in each run
went the other way).

How: no timer ("natural" batching). Requests queue during one turn of the event loop and the queue is
flushed at the next turn (``call_soon``), so a lone request waits for nothing but the requests that arrived
with it. Batches of at most ``inline_users`` users are computed on the event loop thread itself (cheaper
than a hand-off for sub-millisecond calls: the executor queue, a thread wake-up, and the GIL); larger
batches go to the compute threads, at most ``max_inflight`` at a time, so they never stall the loop.

Batches only merge calls with the same snapshot (bundle version), parameters and filters, so a batch never
mixes versions and each request gets exactly the answer the Retriever gives for its user. An entry whose
deadline has passed when its batch runs is not computed (its future gets :class:`DeadlineExceeded`), and
one whose request was cancelled is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class DeadlineExceeded(Exception):  # noqa: N818 (reads as what happened)
    """The request's deadline passed before its model call ran: it is answered 503, not computed."""


@dataclass(frozen=True)
class Filters:
    """Item filters of a request, resolved against one bundle: sorted internal ids to leave out of every
    answer, and (or None) the only ones allowed; ``unknown`` raw ids were ignored; ``digest`` keys them."""

    exclude: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    include: np.ndarray | None = None
    unknown: int = 0
    digest: str = ""


NO_FILTERS = Filters()
BatchKey = tuple[int, int, int, bool, str]
Entry = tuple[str, "asyncio.Future[Any]", float]  # user, future, deadline (time.monotonic())


class MicroBatcher:
    """Queues per (snapshot, k, C, exclude_seen, filters); small batches run inline, large ones in
    ``executor`` (at most ``max_inflight`` at a time). Lives on the event loop thread (no locks)."""

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
        self._queues: OrderedDict[BatchKey, tuple[Any, Filters, list[Entry]]] = OrderedDict()
        self._inflight = 0
        self._flush_scheduled = False

    def submit(
        self,
        snap: Any,
        users: list[str],
        k: int,
        candidates: int,
        exclude_seen: bool,
        filters: Filters = NO_FILTERS,
        deadline: float = math.inf,
    ) -> list[asyncio.Future[Any]]:
        """Queue users; one future per user resolves to the Retriever's ``Recommendation`` (None = unknown)."""
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Any]] = [loop.create_future() for _ in users]
        key: BatchKey = (id(snap), k, candidates, exclude_seen, filters.digest)
        entry = self._queues.get(key)
        if entry is None:
            # the snapshot rides along with its queue: it stays alive until the batch is answered
            entry = (snap, filters, [])
            self._queues[key] = entry
        entry[2].extend((u, f, deadline) for u, f in zip(users, futs, strict=True))
        self._schedule_flush(loop)
        return futs

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the queued small batches now (inline), then hand large ones to free compute slots."""
        self._flush_scheduled = False
        if self.inline_users:
            for key in [k for k, (_s, _f, w) in self._queues.items() if len(w) <= self.inline_users]:
                snap, filters, batch = self._queues.pop(key)
                batch = _live(batch)
                if batch:
                    self._run_inline(snap, key, filters, batch)
        self._dispatch(loop)

    def _run_inline(self, snap: Any, key: BatchKey, filters: Filters, batch: list[Entry]) -> None:
        t0 = time.perf_counter()
        recs: list[Any] | None = None
        error: BaseException | None = None
        try:
            recs = _call(snap, key, filters, [u for u, _f, _d in batch])
        except Exception as err:  # handed to every waiting request, as an executor call's error would be
            error = err
        if self.observe is not None:
            self.observe(time.perf_counter() - t0, len(batch))
        _resolve(batch, recs, error)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand the queued large batches to free compute slots (small ones wait for :meth:`_flush`)."""
        while self._inflight < self.max_inflight:
            key = next((k for k, (_s, _f, w) in self._queues.items() if len(w) > self.inline_users), None)
            if key is None:
                return
            snap, filters, waiting = self._queues[key]
            batch, rest = _live(waiting[: self.max_batch]), waiting[self.max_batch :]
            if rest:
                self._queues[key] = (snap, filters, rest)
                self._queues.move_to_end(key)  # round-robin between parameter sets
                if len(rest) <= self.inline_users:
                    self._schedule_flush(loop)
            else:
                del self._queues[key]
            if not batch:
                continue
            self._inflight += 1
            call = functools.partial(_call, snap, key, filters, [u for u, _f, _d in batch])
            cf = loop.run_in_executor(self.executor, call)
            cf.add_done_callback(
                functools.partial(self._done, batch=batch, t0=time.perf_counter(), loop=loop)
            )

    def _done(
        self, f: asyncio.Future[Any], batch: list[Entry], t0: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._inflight -= 1
        if self.observe is not None:
            self.observe(time.perf_counter() - t0, len(batch))
        err = f.exception() if not f.cancelled() else asyncio.CancelledError()
        _resolve(batch, None if err is not None else f.result(), err)
        self._dispatch(loop)


def _call(snap: Any, key: BatchKey, filters: Filters, users: list[str]) -> list[Any]:
    _, k, c, exclude_seen, _digest = key
    return snap.retriever.recommend(
        users, k, c, exclude_seen=exclude_seen, exclude_items=filters.exclude, include_items=filters.include
    )


def _live(batch: list[Entry]) -> list[Entry]:
    """The entries still worth computing: not cancelled (the request went away), deadline not passed
    (those get DeadlineExceeded now)."""
    now = time.monotonic()
    live = []
    for user, fut, deadline in batch:
        if fut.done():
            continue
        if now > deadline:
            fut.set_exception(DeadlineExceeded(f"the request waited past its deadline for user {user!r}"))
            continue
        live.append((user, fut, deadline))
    return live


def _resolve(batch: list[Entry], recs: list[Any] | None, err: BaseException | None) -> None:
    if err is not None or recs is None:
        for _u, fut, _d in batch:
            if not fut.done():  # a client may have gone away meanwhile
                fut.set_exception(err if err is not None else RuntimeError("no result"))
        return
    for (_u, fut, _d), rec in zip(batch, recs, strict=True):
        if not fut.done():
            fut.set_result(rec)
