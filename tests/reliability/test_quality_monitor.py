"""The recall-quality monitor: exact top-k, overlap, sampling, bounded background work."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from support import app_client

from hashrec.data import Dataset
from hashrec.index.bundle import load_bundle
from hashrec.index.retriever import Retriever
from hashrec.service.quality_monitor import QualityMonitor, exact_top_k, overlap


@pytest.fixture(scope="module")
def retriever(bundles: Path) -> Retriever:
    return Retriever(load_bundle(bundles))


def test_exact_top_k_is_the_retriever_with_every_item_as_a_candidate(retriever: Retriever) -> None:
    bundle = retriever.bundle
    users = [str(u) for u in bundle.users.raw[:60]]
    for exclude in (True, False):
        full = retriever.recommend(users, 10, bundle.n_items, exclude_seen=exclude)
        for u, rec in zip(users, full, strict=True):
            assert rec is not None
            assert exact_top_k(retriever, u, 10, exclude) == rec.items, u


def test_exact_top_k_excludes_seen_items_and_handles_unknown_users(retriever: Retriever) -> None:
    bundle = retriever.bundle
    u = str(bundle.users.raw[5])
    seen = {str(bundle.items.raw[i]) for i in retriever.seen_items(5)}
    assert seen  # the synthetic users have interactions
    top = exact_top_k(retriever, u, bundle.n_items, exclude_seen=True)
    assert top is not None and not (set(top) & seen) and len(top) == bundle.n_items - len(seen)
    assert exact_top_k(retriever, "no-such-user", 5) is None


def test_overlap() -> None:
    assert overlap(["a", "b", "c", "d"], ["a", "b", "x", "y"]) == 0.5
    assert overlap(["a"], []) == 1.0
    assert overlap([], ["a"]) == 0.0


def _value(reg: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    v = reg.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


def test_measure_records_the_overlap_of_small_and_full_recall(retriever: Retriever) -> None:
    reg = CollectorRegistry()
    mon = QualityMonitor(reg, sample_rate=1.0)
    r, bundle = retriever, retriever.bundle
    users = [str(u) for u in bundle.users.raw[:50]]
    small = r.recommend(users, 20, 20)  # C = k: Hamming order only, the re-rank cannot repair recall
    values = [mon.measure(r, u, rec.items, 20, True) for u, rec in zip(users, small, strict=True)]
    assert _value(reg, "hashrec_recall_overlap_count") == 50
    assert 0.0 < np.mean(values) < 1.0  # random codes: Hamming recall misses part of the exact top-20
    full = r.recommend(users, 20, bundle.n_items)
    for u, rec in zip(users, full, strict=True):
        assert mon.measure(r, u, rec.items, 20, True) == 1.0
    assert _value(reg, "hashrec_quality_samples_total", {"result": "measured"}) == 100


def test_sampling_rate() -> None:
    mon = QualityMonitor(CollectorRegistry(), sample_rate=0.1, rng=random.Random(3))
    hits = sum(mon.sampled() for _ in range(20_000))
    assert 1700 < hits < 2300
    off = QualityMonitor(CollectorRegistry(), sample_rate=0.0)
    assert not any(off.sampled() for _ in range(1000))
    with pytest.raises(ValueError, match="sample_rate"):
        QualityMonitor(CollectorRegistry(), sample_rate=1.5)


def test_submit_runs_in_the_background_and_is_bounded(retriever: Retriever) -> None:
    reg = CollectorRegistry()
    gate = threading.Event()
    pool = ThreadPoolExecutor(4)
    mon = QualityMonitor(reg, sample_rate=1.0, executor=pool, max_pending=2)
    real = mon.measure

    def slow(*args):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return real(*args)

    mon.measure = slow  # type: ignore[method-assign]
    u = str(retriever.bundle.users.raw[0])

    async def go() -> None:
        for _ in range(5):
            mon.submit(retriever, u, [], 5, True)  # returns at once
        assert _value(reg, "hashrec_quality_samples_total", {"result": "skipped"}) == 3
        gate.set()
        deadline = time.monotonic() + 30
        while _value(reg, "hashrec_recall_overlap_count") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    asyncio.run(go())
    pool.shutdown()
    assert _value(reg, "hashrec_recall_overlap_count") == 2
    assert _value(reg, "hashrec_recall_overlap_sum") == 0.0  # an empty served list overlaps nothing


def _wait_for_count(c: TestClient, count: int) -> str:
    """/metrics once ``count`` answers were measured. The monitor measures in the background and drops
    samples while ``max_pending`` are running (by design: it never slows answers down); answers come back
    faster than a measurement finishes, so the tests wait for each one: every answer is then measured and
    the counts are exact."""
    deadline = time.monotonic() + 30
    while f"hashrec_recall_overlap_count {count}.0" not in (text := c.get("/metrics").text):
        assert time.monotonic() < deadline, f"{count} measurements never showed"
        time.sleep(0.01)
    return text


def test_served_answers_are_measured(bundles: Path, synth_dataset: Dataset) -> None:
    """quality_sample_rate = 1: every model answer is measured; with C = every item the served answer is
    the exact one (overlap 1), with C = k it is not (random codes)."""
    users = [str(u) for u in synth_dataset.users.raw[:30]]
    n_items = synth_dataset.n_items
    with app_client(bundles, quality_sample_rate=1.0, cache="none") as c:
        for i, u in enumerate(users, 1):
            assert c.get(f"/recommend/{u}", params={"k": 10, "candidates": n_items}).status_code == 200
            text = _wait_for_count(c, i)
        assert "hashrec_recall_overlap_count 30.0" in text and "hashrec_recall_overlap_sum 30.0" in text
        for i, u in enumerate(users, 31):
            assert c.get(f"/recommend/{u}", params={"k": 10, "candidates": 10}).status_code == 200
            text = _wait_for_count(c, i)
    assert 'hashrec_quality_samples_total{result="skipped"}' not in text
    count = float(text.split("hashrec_recall_overlap_count ")[1].split()[0])
    total = float(text.split("hashrec_recall_overlap_sum ")[1].split()[0])
    assert count == 60.0 and 30.0 < total < 60.0  # the C = k answers miss part of the exact top-10


def test_sampling_off_measures_nothing(bundles: Path, synth_dataset: Dataset) -> None:
    with app_client(bundles, quality_sample_rate=0.0, cache="none") as c:
        for u in synth_dataset.users.raw[:20]:
            assert c.get(f"/recommend/{u}").status_code == 200
        assert "hashrec_recall_overlap_count 0.0" in c.get("/metrics").text
