"""Quality of approximate retrieval against exact search (first-class helpers, used by tests and benchmarks).

Hamming top-C has many ties (64-bit codes take only 65 distances), so comparing id sets would punish an
index for picking a different item at the same distance. :func:`hamming_recall` counts a returned item as
correct when its distance is within the exact C-th distance ("recall counting ties").
"""

from __future__ import annotations

import numpy as np


def hamming_recall(approx_dist: np.ndarray, approx_idx: np.ndarray, exact_dist: np.ndarray) -> float:
    """Mean over queries of |returned items with distance <= exact C-th distance| / C.

    Args:
        approx_dist, approx_idx: [n, C] from the approximate index (idx -1 = nothing returned).
        exact_dist: [n, C] exact Hamming top-C distances (sorted ascending).
    """
    if approx_dist.shape != exact_dist.shape:
        raise ValueError(f"shapes differ: {approx_dist.shape} vs {exact_dist.shape}")
    if exact_dist.size == 0:
        return 1.0
    kth = exact_dist[:, -1:]
    ok = (approx_idx >= 0) & (approx_dist <= kth)
    return float(ok.mean())


def overlap_at_k(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of |a_r ∩ b_r| / k for two [n, k] id arrays (-1 entries never match)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 1.0
    hits = [np.intersect1d(x[x >= 0], y[y >= 0]).size for x, y in zip(a, b, strict=True)]
    return float(np.mean(hits) / a.shape[1])
