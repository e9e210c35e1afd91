"""Baselines a user could pick instead of training HashGNN, computed by our own code on the same split.

- **popularity**: rank every item by its number of known (train + validation) interactions;
- **item-item filter** (training-free): ``scores = R~ R~^T R~`` with ``R~ = D_u^{-1/2} R D_i^{-1/2}``, R the
  known interaction matrix and D_u, D_i the user and item degrees. It is the two-hop linear filter behind
  LightGCN-style propagation, with no parameter to learn;
- **truncated SVD** of ``R~`` (optional), in the form of GF-CF's "ideal low-pass filter" (Shen et al., 2021):
  ``scores = R~_u V_d V_d^T D_i^{1/2}``, the user's normalised row projected onto the top-d right singular
  vectors, then scaled back by the item degrees (without that scaling the projection under-ranks popular
  items, which costs recall).

All rankings mask the known items and break ties by smaller item id (:func:`topk_rows`).
The item-item filter is batched over users with sparse products (``(R~_b R~^T) R~``), never materialising the
dense item-item matrix (41k x 41k floats on Gowalla would be 6.7 GB).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from .metrics import hit_matrix

log = logging.getLogger(__name__)


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


def normalized_interactions(r: sp.spmatrix) -> sp.csr_matrix:
    """``D_u^{-1/2} R D_i^{-1/2}`` as float32 CSR (binary R; users or items of degree 0 keep zero rows)."""
    r = sp.csr_matrix(r, dtype=np.float32)
    r = r.copy()
    r.data[:] = 1.0
    du = np.asarray(r.sum(axis=1)).ravel()
    di = np.asarray(r.sum(axis=0)).ravel()
    # degree 0 would divide by zero; those rows/columns are empty anyway, so any finite factor works
    fu = np.where(du > 0, 1.0 / np.sqrt(np.maximum(du, 1)), 0.0).astype(np.float32)
    fi = np.where(di > 0, 1.0 / np.sqrt(np.maximum(di, 1)), 0.0).astype(np.float32)
    out = sp.csr_matrix(sp.diags(fu) @ r @ sp.diags(fi), dtype=np.float32)
    out.sort_indices()
    return out


def popularity_topk(known: sp.csr_matrix, k: int, users: np.ndarray | None = None) -> np.ndarray:
    """Most popular items (by known-interaction count, ties by smaller item id) the user does not know.

    Returns int64 [len(users), k]; ``-1`` fills the tail when a user knows all but fewer than ``k`` items.
    """
    known = sp.csr_matrix(known)
    known.eliminate_zeros()
    n, m = known.shape
    rows = np.arange(n, dtype=np.int64) if users is None else np.asarray(users, dtype=np.int64)
    pop = np.diff(known.tocsc().indptr)
    order = np.lexsort((np.arange(m), -pop))
    k = min(k, m)
    # The ranking is the same for everyone, so a user's top-k lies in the global top (k + their degree):
    # check that prefix against the user's known items instead of scoring all items for every user.
    sub = known[rows]
    width = int(min(m, k + (np.diff(sub.indptr).max() if len(rows) else 0)))
    cand = np.broadcast_to(order[:width], (len(rows), width))
    seen = hit_matrix(cand, sub)
    first = np.argsort(seen, axis=1, kind="stable")[:, :k]  # unseen first, in popularity order
    top = np.take_along_axis(cand, first, axis=1).astype(np.int64)
    top[np.take_along_axis(seen, first, axis=1)] = -1
    return top


def item_filter_topk(
    known: sp.csr_matrix,
    k: int,
    users: np.ndarray | None = None,
    batch_size: int = 1024,
    progress: bool = True,
) -> np.ndarray:
    """Top-``k`` of the training-free item-item filter ``R~ R~^T R~`` (known items masked).

    Args:
        known: CSR [n_users, n_items] of known interactions (the matrix R, also the mask).
        k: list length.
        users: rows to rank (default: all).
        batch_size: users per sparse product (memory ~ ``batch_size * n_items`` float32).
        progress: show a tqdm bar on stderr.

    Returns:
        int64 [len(users), k] sorted by (score desc, item id asc).
    """
    known = sp.csr_matrix(known)
    rn = normalized_interactions(known)
    rnt = rn.T.tocsr()
    rows = np.arange(known.shape[0], dtype=np.int64) if users is None else np.asarray(users, np.int64)
    k = min(k, known.shape[1])
    out = np.empty((len(rows), k), dtype=np.int64)
    starts = range(0, len(rows), batch_size)
    for s in tqdm(starts, desc="item-item filter", unit="batch", disable=not progress, leave=False):
        b = rows[s : s + batch_size]
        # (R~_b R~^T) is a sparse user-user block; multiplying it by R~ gives the batch's item scores
        uu = rn[b] @ rnt
        scores = (uu @ rn).toarray().astype(np.float32, copy=False)
        mask_scores(scores, known[b])
        out[s : s + len(b)] = topk_rows(scores, k)
    return out


def svd_embeddings(known: sp.csr_matrix, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Truncated SVD of ``R~``: (users ``R~ V`` float32 [n_users, dim], items ``D_i^{1/2} V`` [n_items, dim]).

    Inner products of these give ``R~_u V V^T D_i^{1/2}`` (see the module docstring); ``V`` holds the top
    ``dim`` right singular vectors of ``R~``. ``dim`` must be in (0, min(n_users, n_items)).
    """
    from scipy.sparse.linalg import svds

    rn = normalized_interactions(known)
    if not 0 < dim < min(rn.shape):
        raise ValueError(f"dim must be in (0, {min(rn.shape)}), got {dim}")
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(min(rn.shape)).astype(np.float64)
    _u, s, vt = svds(rn.astype(np.float64), k=dim, v0=v0, random_state=seed)
    order = np.argsort(-s)
    v = np.ascontiguousarray(vt[order].T, dtype=np.float32)
    di = np.asarray((sp.csr_matrix(known) != 0).sum(axis=0), dtype=np.float32).ravel()
    return np.asarray(rn @ v, dtype=np.float32), np.ascontiguousarray(v * np.sqrt(di)[:, None])
