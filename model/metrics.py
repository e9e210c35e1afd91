"""The LightGCN/NGCF ranking metrics (Recall@K, NDCG@K) of ranked lists, batched and vectorised.

The protocol (GUIDE.md section 3): every test user ranks *all* items, the items the user already knows
(train + validation) are masked, and the top K are scored against the user's test items.

- ``Recall@K = |top-K ∩ test(u)| / |test(u)|``;
- ``NDCG@K = DCG@K / IDCG@K`` with binary relevance, ``DCG = sum_j rel_j / log2(j + 2)`` (j from 0) and
  ``IDCG`` over ``min(|test(u)|, K)`` ideal hits: LightGCN's definition. (Some hashing papers normalise by the
  number of hits retrieved instead, which inflates NDCG; this module does not compute that variant.)

Both are averaged over users whose truth row is non-empty.

The rankings come from the Retriever (:mod:`hashrec.model.evaluate`); these functions only score them::

    m = recall_ndcg(top, truth[test_users], 20)   # {"recall": ..., "ndcg": ..., "users": ...}
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

_DISCOUNT = 1.0 / np.log2(np.arange(2, 100_002, dtype=np.float64))


def hit_matrix(top: np.ndarray, truth_csr: sp.csr_matrix) -> np.ndarray:
    """bool [n, k]: ``top[r, j]`` is among the stored items of ``truth_csr`` row r (``-1`` never hits)."""
    truth = sp.csr_matrix(truth_csr)
    n = top.shape[0]
    if truth.shape[0] != n:
        raise ValueError(f"truth has {truth.shape[0]} rows but top has {n}; rows must be aligned")
    m = np.int64(truth.shape[1])
    if not truth.has_canonical_format:
        truth = truth.copy()  # never reorder the caller's matrix in place
        truth.sum_duplicates()  # canonical: sorted indices, so the keys below are sorted
    tkeys = np.repeat(np.arange(n, dtype=np.int64), np.diff(truth.indptr)) * m + truth.indices
    qkeys = np.arange(n, dtype=np.int64)[:, None] * m + np.where(top < 0, 0, top)
    pos = np.searchsorted(tkeys, qkeys)
    pos = np.minimum(pos, max(len(tkeys) - 1, 0))
    hit = (tkeys[pos] == qkeys) if len(tkeys) else np.zeros_like(qkeys, dtype=bool)
    return hit & (top >= 0)


def recall_ndcg(top: np.ndarray, truth_csr: sp.csr_matrix, k: int) -> dict[str, float | int]:
    """Recall@k and NDCG@k (LightGCN definitions) of ranked lists against held-out items.

    Args:
        top: int [n, >= k] ranked item ids per user (``-1`` = empty slot); only the first ``k`` are used.
        truth_csr: CSR [n, n_items], row r = the held-out items of the user of ``top`` row r.
        k: cut-off.

    Returns:
        ``{"recall", "ndcg", "precision", "hit_rate", "users"}``: means over the rows with a non-empty truth
        row (``users`` = their count; all metrics 0.0 when there is none). ``precision`` = hits / k,
        ``hit_rate`` = share of users with at least one hit.
    """
    top = np.asarray(top)
    if top.ndim != 2:
        raise ValueError(f"top must be 2-D, got shape {top.shape}")
    if k < 1 or k > top.shape[1]:
        raise ValueError(f"k must be in [1, {top.shape[1]}] (columns of top), got {k}")
    hit = hit_matrix(top[:, :k], truth_csr)
    n_true = np.diff(sp.csr_matrix(truth_csr).indptr)
    keep = n_true > 0
    if not keep.any():
        return {"recall": 0.0, "ndcg": 0.0, "precision": 0.0, "hit_rate": 0.0, "users": 0}
    hit, n_true = hit[keep], n_true[keep]
    n_hit = hit.sum(axis=1)
    disc = _DISCOUNT[:k]
    dcg = hit @ disc
    idcg = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(n_true, k)]
    return {
        "recall": float(np.mean(n_hit / n_true)),
        "ndcg": float(np.mean(dcg / idcg)),
        "precision": float(np.mean(n_hit / k)),
        "hit_rate": float(np.mean(n_hit > 0)),
        "users": int(keep.sum()),
    }
