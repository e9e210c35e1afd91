"""The compiled kernels of ``index/_hamming.c``, when built: exact Hamming top-k, IVF list scan, re-rank dots.

The extension is optional (``setup.py`` builds it with ``optional=True``): :func:`available` says whether
it loaded, and :func:`topk` raises RuntimeError when it did not, so callers (the Retriever) keep FAISS's
``IndexBinaryFlat`` search as the fallback. Both give the same answer: the k nearest codes sorted by
(distance, item id). The scan releases the GIL, so threads of a pool search in parallel.

Why it is faster than FAISS's flat search: see the comment at the top of ``_hamming.c`` (a sampled
distance threshold, one vectorised filtering pass, a counting sort of the few survivors). With AVX-512
VPOPCNTDQ, 64-bit codes take the vector path; other code lengths and CPUs use a portable popcount loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

try:
    from . import _hamming
except ImportError:  # not compiled (no C compiler at install time): FAISS is used instead
    _hamming = None

# queries per call: candidate buffers are per query, so a chunk bounds the worst case (all items tied)
_CHUNK = 64


def available() -> bool:
    """Whether the compiled scan is importable."""
    return _hamming is not None


def kernel() -> str:
    """Which kernel the scan uses on this CPU (``"unavailable"`` when it is not built)."""
    return str(_hamming.kernel()) if _hamming is not None else "unavailable"


def _scan_setup(
    codes: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """Checked contiguous ``codes`` and ``queries``, ``k`` clipped to n, and empty outputs (dist, idx)."""
    if _hamming is None:
        raise RuntimeError("hashrec.index._hamming is not built (reinstall with a C compiler)")
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    queries = np.ascontiguousarray(queries, dtype=np.uint8)
    if codes.ndim != 2 or queries.ndim != 2 or codes.shape[1] != queries.shape[1]:
        raise ValueError(f"codes {codes.shape} and queries {queries.shape} must be 2-d with equal widths")
    n = codes.shape[0]
    nq = queries.shape[0]
    k = min(int(k), n)
    dist = np.empty((nq, max(k, 0)), np.int32)
    idx = np.empty((nq, max(k, 0)), np.int64)
    return codes, queries, k, dist, idx


def topk(codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming top-``k`` of each query among ``codes``: (dist int32 [nq, k], idx int64 [nq, k]).

    ``codes`` uint8 [n, nb] (may be memory-mapped), ``queries`` uint8 [nq, nb]; ``k`` is clipped to n.
    Rows are sorted by (distance, item id), identical to FAISS ``IndexBinaryFlat`` with id tie-breaking.
    """
    codes, queries, k, dist, idx = _scan_setup(codes, queries, k)
    nq, nb = queries.shape
    if nq == 0 or k <= 0:
        return dist, idx
    if nq <= _CHUNK:  # one call straight into the outputs (the common serving case: no copies)
        _hamming.topk(codes, nb, queries, k, dist, idx)
        return dist, idx
    for s in range(0, nq, _CHUNK):
        q = queries[s : s + _CHUNK]
        d = np.empty((len(q), k), np.int32)
        i = np.empty((len(q), k), np.int64)
        _hamming.topk(codes, nb, q, k, d, i)
        dist[s : s + len(q)] = d
        idx[s : s + len(q)] = i
    return dist, idx


def dots(item_z: np.ndarray, cand: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Re-rank scores ``<z[r], item_z[cand[r, j]]>`` (float32 [m, c]; -inf where cand < 0), gather and dot
    fused in C with the rows prefetched a few candidates ahead (the gather's cache misses dominate)."""
    if _hamming is None:
        raise RuntimeError("hashrec.index._hamming is not built (reinstall with a C compiler)")
    item_z = np.ascontiguousarray(item_z, dtype=np.float32)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    z = np.ascontiguousarray(z, dtype=np.float32)
    out = np.empty(cand.shape, np.float32)
    if cand.size:
        _hamming.dots(item_z, item_z.shape[1], cand, z, out)
    return out


def topk_excluding(
    codes: np.ndarray, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming top-``k`` of each query among the items not in ``exclude[row]`` (sorted int64 item
    ids): (dist int32 [nq, k], idx int64 [nq, k]), rows sorted by (distance, item id).

    The same answer as :func:`topk` with ``k + len(exclude[row])`` items, the excluded ones removed and the
    first ``k`` kept, without the Python-side filtering. Slots left empty (fewer than ``k`` items remain)
    hold idx -1 and distance ``8 * nb + 1``. ``k`` is clipped to n. Raises ValueError when an exclusion
    row is not sorted.
    """
    if len(exclude) != len(queries):
        raise ValueError(f"exclude has {len(exclude)} rows, queries {len(queries)}")
    codes, queries, k, dist, idx = _scan_setup(codes, queries, k)
    nq, nb = queries.shape
    if nq == 0 or k <= 0:
        return dist, idx
    if nq == 1:  # the serving case: the user's row as it is, no concatenation
        excl = np.ascontiguousarray(exclude[0], dtype=np.int64)
        indptr = np.array([0, len(excl)], np.int64)
    else:
        lens = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=nq)
        indptr = np.zeros(nq + 1, np.int64)
        np.cumsum(lens, out=indptr[1:])
        excl = (
            np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude]) if nq else np.zeros(0, np.int64)
        )
    _hamming.topk_excluding(codes, nb, queries, k, indptr, excl, dist, idx)
    return dist, idx


def rerank(
    item_z: np.ndarray, cand: np.ndarray, z: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-rank each row of candidates (int64 [m, c], -1 = empty) by ``<z[r], item_z[id]>`` and keep the top
    ``k' = min(k, c)``: (scores float32 [m, k'], idx int64 [m, k'], positions in ``cand`` int64 [m, k']).

    Order: score descending, then item id ascending; empty slots last (score -inf, idx -1), in position
    order. Scores are bit-identical to :func:`dots` (the same compiled loop).
    """
    if _hamming is None:
        raise RuntimeError("hashrec.index._hamming is not built (reinstall with a C compiler)")
    item_z = np.ascontiguousarray(item_z, dtype=np.float32)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    z = np.ascontiguousarray(z, dtype=np.float32)
    m, c = cand.shape
    k = min(int(k), c)
    scores = np.empty((m, k), np.float32)
    idx = np.empty((m, k), np.int64)
    pos = np.empty((m, k), np.int64)
    if m and k > 0:
        _hamming.rerank(item_z, item_z.shape[1], cand, z, k, scores, idx, pos)
    return scores, idx, pos


def recommend_one(
    codes: np.ndarray,
    query: np.ndarray,
    width: int,
    exclude: np.ndarray,
    item_z: np.ndarray,
    z: np.ndarray,
    k: int,
    raw_ids: list[Any],
) -> tuple[list[Any], list[float], list[int], float, float]:
    """Both stages for one user in one call: (items, scores, hamming, recall seconds, rerank seconds).

    Recall: the ``width`` nearest codes (uint8 [n, nb]) to ``query`` (uint8 [nb]) that are not in
    ``exclude`` (sorted int64 ids), as :func:`topk_excluding`; re-rank: the top ``min(k, width)`` of those
    by ``<z, item_z[id]>``, as :func:`rerank`. The answer holds ``raw_ids[id]`` of each item (fewer than
    ``k`` when fewer items remain), the float32 scores as Python floats and the Hamming distances as ints;
    the two wall times feed the stage metrics. The serving fast path: one call, Python lists out.
    """
    if _hamming is None:
        raise RuntimeError("hashrec.index._hamming is not built (reinstall with a C compiler)")
    nb = codes.shape[1]
    return _hamming.recommend_one(
        np.ascontiguousarray(codes, dtype=np.uint8),
        nb,
        np.ascontiguousarray(query, dtype=np.uint8),
        int(width),
        np.ascontiguousarray(exclude, dtype=np.int64),
        np.ascontiguousarray(item_z, dtype=np.float32),
        item_z.shape[1],
        np.ascontiguousarray(z, dtype=np.float32),
        int(k),
        raw_ids,
    )


def recommend_many(
    codes: np.ndarray,
    user_codes: np.ndarray,
    user_z: np.ndarray,
    users: np.ndarray,
    width: int,
    seen_indptr: np.ndarray,
    seen_indices: np.ndarray,
    item_z: np.ndarray,
    k: int,
    raw_ids: list[Any],
) -> tuple[list[tuple[list[Any], list[float], list[int]]], float, float]:
    """:func:`recommend_one` for several internal user ids in one call: ([(items, scores, hamming) per
    user], recall seconds, rerank seconds), the stage times summed over the users.

    Each user's query code and z are rows of ``user_codes`` / ``user_z``; its exclusions are its row of the
    CSR ``seen_indptr`` / ``seen_indices`` (sorted per row), or nothing when ``seen_indptr`` is empty.
    """
    if _hamming is None:
        raise RuntimeError("hashrec.index._hamming is not built (reinstall with a C compiler)")
    return _hamming.recommend_many(
        np.ascontiguousarray(codes, dtype=np.uint8),
        codes.shape[1],
        np.ascontiguousarray(user_codes, dtype=np.uint8),
        np.ascontiguousarray(user_z, dtype=np.float32),
        user_z.shape[1],
        np.ascontiguousarray(users, dtype=np.int64),
        int(width),
        np.ascontiguousarray(seen_indptr, dtype=np.int64),
        np.ascontiguousarray(seen_indices, dtype=np.int64),
        np.ascontiguousarray(item_z, dtype=np.float32),
        int(k),
        raw_ids,
    )


class IVFScan:
    """Search a FAISS ``IndexBinaryIVF`` with the compiled scan instead of FAISS's per-code heap.

    The inverted lists are copied once into one contiguous code array ordered by list (plus the item id of
    each row and each list's offsets). A query takes its ``nprobe`` nearest centroids from the index's own
    quantizer, then the compiled scan finds the top-k among the rows of those lists, sorted by (distance,
    item id): the same answer as ``IndexBinaryIVF.search`` with the same ``nprobe``, faster, because the
    few rows under a sampled distance threshold are the only ones that touch any bookkeeping.
    """

    def __init__(self, index: Any) -> None:
        """Copy the lists of ``index`` (an IndexBinaryIVF); reads ``index.nprobe`` at each search."""
        import faiss

        if _hamming is None:
            raise RuntimeError("hashrec.index._hamming is not built (reinstall with a C compiler)")
        self.index = index
        inv = index.invlists
        nb = int(inv.code_size)
        sizes = np.array([inv.list_size(li) for li in range(inv.nlist)], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        n = int(self.offsets[-1])
        self.codes = np.empty((n, nb), np.uint8)
        self.ids = np.empty(n, np.int64)
        for li in np.flatnonzero(sizes):
            lo, hi = self.offsets[li], self.offsets[li + 1]
            m = int(hi - lo)
            self.codes[lo:hi] = faiss.rev_swig_ptr(inv.get_codes(int(li)), m * nb).reshape(m, nb)
            self.ids[lo:hi] = faiss.rev_swig_ptr(inv.get_ids(int(li)), m)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` in the ``nprobe`` nearest lists: (dist int32 [nq, k], idx int64 [nq, k]), sorted by
        (distance, item id); slots beyond what the lists hold are (K + 1, -1)."""
        assert _hamming is not None
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        nq, nb = queries.shape
        k = min(int(k), len(self.ids))
        nprobe = min(int(self.index.nprobe), int(self.index.nlist))
        _, lists = self.index.quantizer.search(queries, nprobe)
        missing = lists < 0  # -1: fewer centroids than nprobe; scanned as an empty range
        safe = np.where(missing, 0, lists)
        starts = np.ascontiguousarray(self.offsets[safe])
        ends = np.ascontiguousarray(np.where(missing, starts, self.offsets[safe + 1]))
        dist = np.empty((nq, k), np.int32)
        idx = np.empty((nq, k), np.int64)
        if nq and k > 0:
            _hamming.topk_ranges(self.codes, nb, self.ids, queries, k, starts, ends, nprobe, dist, idx)
        return dist, idx
