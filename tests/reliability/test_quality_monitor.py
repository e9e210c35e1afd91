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
from prometheus_client import CollectorRegistry

from hashrec.index.bundle import load_bundle, resolve_bundle_dir
from hashrec.index.retriever import Retriever
from hashrec.service.quality_monitor import QualityMonitor, exact_top_k, overlap


@pytest.fixture(scope="module")
def bundle(bundles: Path):  # type: ignore[no-untyped-def]
    return load_bundle(resolve_bundle_dir(bundles))


def test_exact_top_k_is_the_retriever_with_every_item_as_a_candidate(bundle) -> None:  # type: ignore[no-untyped-def]
    r = Retriever(bundle)
    users = [str(u) for u in bundle.users.raw[:60]]
    for exclude in (True, False):
        full = r.recommend(users, 10, bundle.n_items, exclude_seen=exclude)
        for u, rec in zip(users, full, strict=True):
            assert rec is not None
            assert exact_top_k(bundle, u, 10, exclude) == rec.items, u


def test_exact_top_k_excludes_seen_items_and_handles_unknown_users(bundle) -> None:  # type: ignore[no-untyped-def]
    u = str(bundle.users.raw[5])
    seen = {
        str(bundle.items.raw[i]) for i in bundle.seen.indices[bundle.seen.indptr[5] : bundle.seen.indptr[6]]
    }
    assert seen  # the synthetic users have interactions
    top = exact_top_k(bundle, u, bundle.n_items, exclude_seen=True)
    assert top is not None and not (set(top) & seen) and len(top) == bundle.n_items - len(seen)
    assert exact_top_k(bundle, "no-such-user", 5) is None


def test_overlap() -> None:
    assert overlap(["a", "b", "c", "d"], ["a", "b", "x", "y"]) == 0.5
    assert overlap(["a"], []) == 1.0
    assert overlap([], ["a"]) == 0.0


def _value(reg: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    v = reg.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


def test_measure_records_the_overlap_of_small_and_full_recall(bundle) -> None:  # type: ignore[no-untyped-def]
    reg = CollectorRegistry()
    mon = QualityMonitor(reg, sample_rate=1.0)
    r = Retriever(bundle)
    users = [str(u) for u in bundle.users.raw[:50]]
    small = r.recommend(users, 20, 20)  # C = k: Hamming order only, the re-rank cannot repair recall
    values = [mon.measure(bundle, u, rec.items, 20, True) for u, rec in zip(users, small, strict=True)]
    assert _value(reg, "hashrec_recall_overlap_count") == 50
    assert 0.0 < np.mean(values) < 1.0  # random codes: Hamming recall misses part of the exact top-20
    full = r.recommend(users, 20, bundle.n_items)
    for u, rec in zip(users, full, strict=True):
        assert mon.measure(bundle, u, rec.items, 20, True) == 1.0
    assert _value(reg, "hashrec_quality_samples_total", {"result": "measured"}) == 100


def test_sampling_rate() -> None:
    mon = QualityMonitor(CollectorRegistry(), sample_rate=0.1, rng=random.Random(3))
    hits = sum(mon.sampled() for _ in range(20_000))
    assert 1700 < hits < 2300
    off = QualityMonitor(CollectorRegistry(), sample_rate=0.0)
    assert not any(off.sampled() for _ in range(1000))
    with pytest.raises(ValueError, match="sample_rate"):
        QualityMonitor(CollectorRegistry(), sample_rate=1.5)


def test_submit_runs_in_the_background_and_is_bounded(bundle) -> None:  # type: ignore[no-untyped-def]
    reg = CollectorRegistry()
    gate = threading.Event()
    pool = ThreadPoolExecutor(4)
    mon = QualityMonitor(reg, sample_rate=1.0, executor=pool, max_pending=2)
    real = mon.measure

    def slow(*args):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return real(*args)

    mon.measure = slow  # type: ignore[method-assign]
    u = str(bundle.users.raw[0])

    async def go() -> None:
        for _ in range(5):
            mon.submit(bundle, u, [], 5, True)  # returns at once
        assert _value(reg, "hashrec_quality_samples_total", {"result": "skipped"}) == 3
        gate.set()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if _value(reg, "hashrec_recall_overlap_count") == 2:
                break

    asyncio.run(go())
    pool.shutdown()
    assert _value(reg, "hashrec_recall_overlap_count") == 2
    assert _value(reg, "hashrec_recall_overlap_sum") == 0.0  # an empty served list overlaps nothing


def test_live_server_exports_the_overlap_of_sampled_answers(
    bundles: Path,
    start_server,
    synth_dataset,  # type: ignore[no-untyped-def]
) -> None:
    """HASHREC_QUALITY_SAMPLE_RATE=1: every model answer is measured; with C = every item the served
    answer is the exact one (overlap 1), with C = k it is not (random codes)."""
    import httpx

    srv = start_server(bundles, env={"HASHREC_QUALITY_SAMPLE_RATE": "1", "HASHREC_CACHE": "none"})
    users = [str(u) for u in synth_dataset.users.raw[:30]]
    n_items = synth_dataset.n_items

    def wait_for_count(c: httpx.Client, count: int) -> str:
        # The monitor measures in the background and drops samples while `max_pending` are running (by
        # design: it never slows answers down). Answers come back faster than a measurement finishes, so
        # wait for each one: then every answer is measured and the counts below are exact.
        text = ""
        for _ in range(200):
            text = c.get("/metrics").text
            if f"hashrec_recall_overlap_count {count}.0" in text:
                break
            time.sleep(0.01)
        return text

    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for i, u in enumerate(users, 1):
            assert c.get(f"/recommend/{u}", params={"k": 10, "candidates": n_items}).status_code == 200
            text = wait_for_count(c, i)
        assert "hashrec_recall_overlap_count 30.0" in text and "hashrec_recall_overlap_sum 30.0" in text
        for i, u in enumerate(users, 31):
            assert c.get(f"/recommend/{u}", params={"k": 10, "candidates": 10}).status_code == 200
            text = wait_for_count(c, i)
    assert 'hashrec_quality_samples_total{result="skipped"}' not in text
    count = float(text.split("hashrec_recall_overlap_count ")[1].split()[0])
    total = float(text.split("hashrec_recall_overlap_sum ")[1].split()[0])
    assert count == 60.0 and 30.0 < total < 60.0  # the C = k answers miss part of the exact top-10


def test_sampling_off_measures_nothing(bundles: Path, start_server, synth_dataset) -> None:  # type: ignore[no-untyped-def]
    import httpx

    srv = start_server(bundles, env={"HASHREC_QUALITY_SAMPLE_RATE": "0", "HASHREC_CACHE": "none"})
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for u in synth_dataset.users.raw[:20]:
            c.get(f"/recommend/{u}")
        assert "hashrec_recall_overlap_count 0.0" in c.get("/metrics").text
