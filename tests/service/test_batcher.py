"""MicroBatcher: requests of one loop turn share a Retriever call; small batches run on the loop thread,
large ones in the compute pool; answers are the Retriever's own; errors reach every waiting request."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hashrec.index.retriever import Retriever
from hashrec.service.batcher import MicroBatcher


class CountingPool(ThreadPoolExecutor):
    """A thread pool that counts the calls handed to it."""

    def __init__(self) -> None:
        super().__init__(2)
        self.calls = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def retriever() -> Retriever:
    rng = np.random.default_rng(0)
    user_z = np.tanh(rng.standard_normal((50, 32))).astype(np.float32)
    item_z = np.tanh(rng.standard_normal((300, 32))).astype(np.float32)
    return Retriever.from_arrays(user_z, item_z)


def _run(retriever: Retriever, inline_users: int, users: list[str], k: int = 5) -> tuple[list[Any], Any]:
    """Submit every user as its own request within one loop turn; returns (answers or errors, stats)."""
    pool = CountingPool()
    sizes: list[int] = []
    threads: set[int] = set()

    def observe(seconds: float, size: int) -> None:
        sizes.append(size)

    snap = SimpleNamespace(retriever=retriever)
    real = retriever.recommend

    async def go() -> list[Any]:
        batcher = MicroBatcher(pool, max_inflight=2, observe=observe, inline_users=inline_users)
        futs = [batcher.submit(snap, [u], k, 20, True)[0] for u in users]
        return await asyncio.gather(*futs, return_exceptions=True)

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.add(threading.get_ident())
        return real(*args, **kwargs)

    snap.retriever = SimpleNamespace(recommend=recording)
    try:
        loop_thread = threading.get_ident()
        out = asyncio.run(go())
    finally:
        pool.shutdown()
    return out, SimpleNamespace(
        pool_calls=pool.calls, sizes=sizes, on_loop_thread=threads == {loop_thread}, threads=threads
    )


def test_small_batches_run_inline_as_one_call_with_the_retrievers_answers(retriever: Retriever) -> None:
    users = ["3", "7", "11"]
    out, st = _run(retriever, inline_users=16, users=users)
    assert st.pool_calls == 0 and st.on_loop_thread and st.sizes == [3]
    for user, rec in zip(users, out, strict=True):
        (expected,) = retriever.recommend([user], 5, 20)
        assert rec == expected


def test_large_batches_and_inline_off_use_the_pool(retriever: Retriever) -> None:
    users = [str(u) for u in range(6)]
    for inline_users in (2, 0):
        out, st = _run(retriever, inline_users=inline_users, users=users)
        assert st.pool_calls == 1 and not st.on_loop_thread and st.sizes == [6]
        assert out == retriever.recommend(users, 5, 20)


def test_an_error_reaches_every_request_of_the_batch(retriever: Retriever) -> None:
    for inline_users in (16, 0):
        out, _st = _run(retriever, inline_users=inline_users, users=["1", "2"], k=0)
        assert all(isinstance(e, ValueError) and "k must be" in str(e) for e in out)
