"""Recall-quality monitor: for a sampled fraction of live answers, the exact continuous top-k, and the
overlap of the served answer with it, as a Prometheus histogram.

Why: the service answers from a Hamming top-C recall followed by a re-rank; when codes degrade (a bad
export, a drifted model, a C set too small for the catalogue) answers stay fast and well-formed but get
worse, and nothing else in the metrics shows it. The exact answer (the same continuous embeddings, every
item scored) is what the two stages approximate, so ``|served ∩ exact| / |exact|`` is the recall of the
Hamming stage as users experience it.

Cost: one product of the user's vector with every item vector (``n_items x K`` multiply-adds, ~1 ms for
Gowalla's 41k items at 64 bits) per *sampled* answer, run off the event loop in the app's compute pool and
never awaited by the request; at most ``max_pending`` run at once, further samples are dropped (counted as
``skipped``), so the monitor can never slow the service down by more than that.

Metrics (in the app's registry):

- ``hashrec_recall_overlap`` (histogram, 0..1): overlap of each sampled answer with the exact top-k;
  alert on ``rate(..._sum) / rate(..._count)`` (see docker/alerts.yml);
- ``hashrec_quality_samples_total{result="measured|skipped|error"}``.

Configured by ``HASHREC_QUALITY_SAMPLE_RATE`` (default 0.01; 0 turns it off).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger(__name__)

_OVERLAP_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)


def exact_top_k(bundle: Any, user: str, k: int, exclude_seen: bool = True) -> list[str] | None:
    """The exact continuous top-``k`` raw item ids of a known user (None when the user is unknown).

    Every item is scored by ``<z_u, z_i>``; the user's seen items are dropped when ``exclude_seen``; order
    is score descending, then internal item id ascending (the Retriever's tie rule).
    """
    uidx = int(bundle.users.to_internal([user])[0])
    if uidx < 0:
        return None
    z_u = np.asarray(bundle.user_z[uidx], dtype=np.float32)
    item_z = bundle.item_z
    scores = (
        np.asarray(item_z @ z_u, dtype=np.float32)
        if item_z.dtype == np.float32
        else (np.asarray(item_z, dtype=np.float32) @ z_u)
    )
    if exclude_seen:
        seen = bundle.seen
        lo, hi = int(seen.indptr[uidx]), int(seen.indptr[uidx + 1])
        scores = scores.copy()
        scores[np.asarray(seen.indices[lo:hi], dtype=np.int64)] = -np.inf
    n_valid = int(np.isfinite(scores).sum())
    k = min(k, n_valid)
    if k <= 0:
        return []
    part = np.argpartition(-scores, k - 1)[:k]
    kth = scores[part].min()
    # ties at the boundary: take every item with the k-th score, then order by (score desc, id asc)
    pool = np.union1d(part, np.flatnonzero(scores == kth))
    order = np.lexsort((pool, -scores[pool]))[:k]
    return [str(bundle.items.raw[i]) for i in pool[order]]


def overlap(served: Sequence[str], exact: Sequence[str]) -> float:
    """``|served ∩ exact| / |exact|`` (1.0 when the exact list is empty: nothing could be missed)."""
    if not exact:
        return 1.0
    return len(set(served) & set(exact)) / len(exact)


class QualityMonitor:
    """Samples answers (``sample_rate``) and records their overlap with the exact top-k (see the module)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        sample_rate: float,
        executor: Executor | None = None,
        max_pending: int = 2,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        self.sample_rate = sample_rate
        self.executor = executor
        self.max_pending = max_pending
        self._rng = rng or random.Random()
        self._pending = 0
        self.overlap = Histogram(
            "hashrec_recall_overlap",
            "Overlap of sampled served answers with the exact continuous top-k (1 = identical sets)",
            buckets=_OVERLAP_BUCKETS,
            registry=registry,
        )
        self.samples = Counter(
            "hashrec_quality_samples",
            "Answers sampled by the recall-quality monitor, by result (measured, skipped = monitor busy, error)",
            ["result"],
            registry=registry,
        )

    def sampled(self) -> bool:
        """Whether this answer is one of the sampled fraction (cheap: one random draw)."""
        return self.sample_rate > 0.0 and self._rng.random() < self.sample_rate

    def measure(
        self, bundle: Any, user: str, served: Sequence[str], k: int, exclude_seen: bool
    ) -> float | None:
        """Compute and record the overlap of one answer now (blocking); None when the user is unknown."""
        exact = exact_top_k(bundle, user, k, exclude_seen)
        if exact is None:
            return None
        value = overlap(served, exact)
        self.overlap.observe(value)
        self.samples.labels("measured").inc()
        return value

    def submit(self, bundle: Any, user: str, served: Sequence[str], k: int, exclude_seen: bool) -> None:
        """Measure in the background (call from the event loop after :meth:`sampled`); never raises, never
        blocks the caller; dropped (``skipped``) when ``max_pending`` measurements are already running."""
        if self._pending >= self.max_pending:
            self.samples.labels("skipped").inc()
            return
        self._pending += 1
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.executor, self.measure, bundle, user, list(served), k, exclude_seen)
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[float | None]) -> None:
        self._pending -= 1
        if fut.cancelled():
            return
        err = fut.exception()
        if err is not None:
            self.samples.labels("error").inc()
            log.warning("recall-quality sample failed: %s: %s", type(err).__name__, err)
