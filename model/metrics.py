"""Top-K ranking and the LightGCN/NGCF ranking metrics (Recall@K, NDCG@K), batched and vectorised.

The protocol (GUIDE.md section 3): every test user ranks *all* items, the items the user already knows
(train + validation) are masked, and the top K are scored against the user's test items.

- ``Recall@K = |top-K ∩ test(u)| / |test(u)|``;
- ``NDCG@K = DCG@K / IDCG@K`` with binary relevance, ``DCG = sum_j rel_j / log2(j + 2)`` (j from 0) and
  ``IDCG`` over ``min(|test(u)|, K)`` ideal hits: LightGCN's definition. (Some hashing papers normalise by the
  number of hits retrieved instead, which inflates NDCG; this module does not compute that variant.)

Both are averaged over users whose truth row is non-empty.

Ranking rule of :func:`topk_by_score`: larger inner product first, ties broken by smaller item id, so the
result is a deterministic function of the scores (and a top-K is always a prefix of a top-K' for K < K').

Example::

    top = topk_by_score(user_z, item_z, 20, mask_csr=known, users=test_users)
    m = recall_ndcg(top, truth[test_users], 20)   # {"recall": ..., "ndcg": ..., "users": ...}
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Top ``k`` columns of each row of ``scores`` (float, -inf = masked): int64 [n, k] sorted by
    (score desc, column id asc); ``k`` must be <= the number of columns.

    Masked slots (-inf) are returned as ``-1`` at the end of a row when fewer than ``k`` items remain.
    The scores array is not modified.
    """
    import torch  # torch.topk is ~20x faster than np.argpartition here (and multi-threaded)

    n, m = scores.shape
    if k < m:
        # Take k + 1: when the (k+1)-th score is strictly below the k-th, the top-k *set* is unambiguous.
        # Otherwise a tie crosses the cut and topk may have picked any of the tied items, so those rows are
        # recomputed exactly below (rare for continuous scores; common for integer ones).
        vals_t, idx_t = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k + 1, dim=1)
        vals1, idx1 = vals_t.numpy(), idx_t.numpy()
        part = idx1[:, :k].astype(np.int64)
        ambiguous = np.flatnonzero(vals1[:, k] == vals1[:, k - 1])
        if len(ambiguous):
            sub = scores[ambiguous]
            t = vals1[ambiguous, k - 1][:, None]
            above = sub > t
            need = k - above.sum(axis=1, keepdims=True)
            eq = sub == t
            # the first `need` tied items in id order complete the top k
            take = above | (eq & (np.cumsum(eq, axis=1) <= need))
            _, cols = np.nonzero(take)  # row-major: ids ascending inside each row
            part[ambiguous] = cols.reshape(len(ambiguous), k)
    else:
        part = np.broadcast_to(np.arange(m, dtype=np.int64), (n, m)).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    # order by score desc, then id asc (lexsort: last key is primary)
    order = np.lexsort((part, -vals), axis=1)
    top = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top[np.take_along_axis(vals, order, axis=1) == -np.inf] = -1
    return top


def mask_scores(scores: np.ndarray, mask_rows: sp.csr_matrix) -> np.ndarray:
    """Set ``scores[r, i] = -inf`` in place for every stored entry (r, i) of ``mask_rows``; returns ``scores``.

    ``mask_rows`` is CSR aligned with the rows of ``scores``. One scatter with the CSR's own indices: no dense
    mask, no Python loop over users.
    """
    r = np.repeat(np.arange(mask_rows.shape[0]), np.diff(mask_rows.indptr))
    scores[r, mask_rows.indices] = -np.inf
    return scores


def topk_by_score(
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    k: int,
    mask_csr: sp.csr_matrix | None = None,
    users: np.ndarray | None = None,
    batch_size: int = 2048,
) -> np.ndarray:
    """All-item top-``k`` by inner product for a set of users, masked items excluded.

    Args:
        user_vecs: float [n_users, d] user vectors.
        item_vecs: float [n_items, d] item vectors.
        k: list length (clipped to n_items).
        mask_csr: optional CSR [n_users, n_items] indexed like ``user_vecs``; its stored entries (the items a
            user already knows) are never returned.
        users: optional int row ids into ``user_vecs`` / ``mask_csr`` to rank (default: all rows, in order).
        batch_size: users per matmul (memory is ``batch_size * n_items`` float32).

    Returns:
        int64 [len(users), k]: item ids sorted by (score desc, item id asc). When a user has fewer than
        ``k`` unmasked items, the tail of the row is ``-1``.
    """
    uv = np.asarray(user_vecs, dtype=np.float32)
    iv = np.asarray(item_vecs, dtype=np.float32)
    if uv.ndim != 2 or iv.ndim != 2 or uv.shape[1] != iv.shape[1]:
        raise ValueError(f"user_vecs {uv.shape} and item_vecs {iv.shape} must be 2-D with the same width")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    m = iv.shape[0]
    rows = np.arange(uv.shape[0], dtype=np.int64) if users is None else np.asarray(users, dtype=np.int64)
    if mask_csr is not None:
        if mask_csr.shape != (uv.shape[0], m):
            raise ValueError(f"mask_csr shape {mask_csr.shape} != (n_users, n_items) = {(uv.shape[0], m)}")
        mask_csr = sp.csr_matrix(mask_csr)
    k = min(k, m)
    out = np.empty((len(rows), k), dtype=np.int64)
    for s in range(0, len(rows), batch_size):
        b = rows[s : s + batch_size]
        scores = uv[b] @ iv.T  # transposed view: BLAS handles it (faster than a contiguous copy)
        if mask_csr is not None:
            mask_scores(scores, mask_csr[b])
        out[s : s + len(b)] = topk_rows(scores, k)
    return out


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
