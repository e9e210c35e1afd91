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


def exact_top_k(retriever: Any, user: str, k: int, exclude_seen: bool = True) -> list[str] | None:
    """The exact top-``k`` raw item ids of a known user (None when the user is unknown):
    :meth:`hashrec.index.retriever.Retriever.exact`, every item scored by the re-rank vectors."""
    uidx = retriever.bundle.users.get(user)
    if uidx is None:
        return None
    _codes, vectors = retriever.user_rows(np.array([uidx]))
    exclude = [retriever.seen_items(uidx)] if exclude_seen else None
    _scores, top = retriever.exact(vectors, k, exclude)
    return retriever.bundle.items.to_raw(top[0][top[0] >= 0])


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
        self, retriever: Any, user: str, served: Sequence[str], k: int, exclude_seen: bool
    ) -> float | None:
        """Compute and record the overlap of one answer now (blocking); None when the user is unknown."""
        exact = exact_top_k(retriever, user, k, exclude_seen)
        if exact is None:
            return None
        value = overlap(served, exact)
        self.overlap.observe(value)
        self.samples.labels("measured").inc()
        return value

    def submit(self, retriever: Any, user: str, served: Sequence[str], k: int, exclude_seen: bool) -> None:
        """Measure in the background (call from the event loop after :meth:`sampled`); never raises, never
        blocks the caller; dropped (``skipped``) when ``max_pending`` measurements are already running."""
        if self._pending >= self.max_pending:
            self.samples.labels("skipped").inc()
            return
        self._pending += 1
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(
            self.executor, self.measure, retriever, user, list(served), k, exclude_seen
        )
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[float | None]) -> None:
        self._pending -= 1
        if fut.cancelled():
            return
        err = fut.exception()
        if err is not None:
            self.samples.labels("error").inc()
            log.warning("recall-quality sample failed: %s: %s", type(err).__name__, err)
