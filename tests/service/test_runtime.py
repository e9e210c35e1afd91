"""GC pause and event-loop lag metrics, and freezing the start-up heap."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import ServerProcess
from prometheus_client import CollectorRegistry

from hashrec.service.runtime_metrics import GcPauseMonitor, LoopLagMonitor, freeze_startup_heap
from hashrec.service.state import load_snapshot


@pytest.fixture()
def unfrozen() -> Iterator[None]:
    """Leave the test process's collector as it was (a test that freezes must unfreeze)."""
    yield
    gc.unfreeze()


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
        time.sleep(0.3)  # a callback that holds the loop
        await asyncio.sleep(0.05)
        await mon.stop()

    asyncio.run(run())
    total = reg.get_sample_value("hashrec_event_loop_lag_seconds_count") or 0
    under_250ms = reg.get_sample_value("hashrec_event_loop_lag_seconds_bucket", {"le": "0.25"}) or 0
    assert total >= 3
    assert total - under_250ms == 1  # exactly the one late wake-up


def test_frozen_snapshot_is_still_freed_when_dropped(bundles: Path, unfrozen: None) -> None:
    """The start-up bundle is frozen with everything else; a reload drops it, and reference counting alone
    must free it (a frozen garbage cycle would never be collected: a leaked bundle per reload)."""
    snap = load_snapshot(bundles)
    ref = weakref.ref(snap.bundle)
    retriever_ref = weakref.ref(snap.retriever)
    assert freeze_startup_heap() > 0
    del snap
    assert ref() is None and retriever_ref() is None


def test_served_metrics_include_gc_and_loop_lag(bundles: Path, tmp_path: Path) -> None:
    with ServerProcess(bundles, tmp_path / "server.log").start() as srv:
        time.sleep(0.3)
        text = httpx.get(f"{srv.url}/metrics").text
        log = srv.log_path.read_text()
    assert "hashrec_event_loop_lag_seconds_count" in text
    assert 'hashrec_gc_pause_seconds_count{generation="2"}' in text
    assert "start-up heap frozen" in log
