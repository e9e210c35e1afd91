"""The service's runtime (service/runtime.py): native thread limits, GC pause and event-loop lag metrics,
and the start-up heap freeze of the app's lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support import app_client

from hashrec.service.runtime import GcPauseMonitor, LoopLagMonitor, limit_native_threads


@pytest.fixture()
def unfrozen() -> Iterator[None]:
    """Leave the test process's collector as it was (a test that freezes must unfreeze)."""
    yield
    gc.unfreeze()


def test_native_thread_limits_cover_an_already_loaded_blas() -> None:
    import numpy as np
    from threadpoolctl import threadpool_info

    np.ones((4, 4)) @ np.ones(4)  # BLAS loaded and initialised before the limit, as in `hashrec serve`
    limit_native_threads(1)
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    assert blas and all(i["num_threads"] == 1 for i in blas)


def test_gc_pauses_are_timed_per_generation() -> None:
    reg = CollectorRegistry()
    mon = GcPauseMonitor(reg)
    mon.install()
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        mon.uninstall()
    gc.collect(2)  # after uninstall: not counted
    n2 = reg.get_sample_value("hashrec_gc_pause_seconds_count", {"generation": "2"})
    n0 = reg.get_sample_value("hashrec_gc_pause_seconds_count", {"generation": "0"})
    assert n2 == 1 and n0 is not None and n0 >= 1
    assert (reg.get_sample_value("hashrec_gc_pause_seconds_sum", {"generation": "2"}) or 0) > 0
    assert mon._callback not in gc.callbacks


def test_loop_lag_shows_a_blocked_loop() -> None:
    reg = CollectorRegistry()
    mon = LoopLagMonitor(reg, interval_s=0.01)

    async def run() -> None:
        mon.start()
        await asyncio.sleep(0.05)
        time.sleep(0.6)  # a callback that holds the loop
        await asyncio.sleep(0.05)
        await mon.stop()

    asyncio.run(run())
    total = reg.get_sample_value("hashrec_event_loop_lag_seconds_count") or 0
    under_half_s = reg.get_sample_value("hashrec_event_loop_lag_seconds_bucket", {"le": "0.5"}) or 0
    assert total >= 3
    # the held loop is one wake-up at least 0.5 s late (a busy machine may add small lags, not this one)
    assert total - under_half_s >= 1
    assert (reg.get_sample_value("hashrec_event_loop_lag_seconds_sum") or 0) >= 0.5


def test_served_metrics_include_gc_and_loop_lag(
    bundles: Path, unfrozen: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hashrec.service")
    with app_client(bundles, gc_freeze=True) as c:
        assert gc.get_freeze_count() > 0
        gc.collect(2)  # at least one generation-2 collection while the monitor is installed
        deadline = time.monotonic() + 30  # the ticker wakes every 50 ms: wait for its first report
        while "hashrec_event_loop_lag_seconds_count 0.0" in (text := c.get("/metrics").text):
            assert time.monotonic() < deadline, "the loop-lag ticker never reported"
            time.sleep(0.05)
    assert "hashrec_event_loop_lag_seconds_count" in text
    assert 'hashrec_gc_pause_seconds_count{generation="2"}' in text
    assert "start-up heap frozen" in caplog.text
