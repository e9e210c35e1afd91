"""Exact Hamming top-k with the compiled threshold-filter scan (``index/_hamming.c``), when it is built.

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


def topk(codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming top-``k`` of each query among ``codes``: (dist int32 [nq, k], idx int64 [nq, k]).

    ``codes`` uint8 [n, nb] (may be memory-mapped), ``queries`` uint8 [nq, nb]; ``k`` is clipped to n.
    Rows are sorted by (distance, item id), identical to FAISS ``IndexBinaryFlat`` with id tie-breaking.
    """
    if _hamming is None:
        raise RuntimeError("hashrec.index._hamming is not built (reinstall with a C compiler)")
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    queries = np.ascontiguousarray(queries, dtype=np.uint8)
    if codes.ndim != 2 or queries.ndim != 2 or codes.shape[1] != queries.shape[1]:
        raise ValueError(f"codes {codes.shape} and queries {queries.shape} must be 2-d with equal widths")
    n, nb = codes.shape
    nq = queries.shape[0]
    k = min(int(k), n)
    dist = np.empty((nq, max(k, 0)), np.int32)
    idx = np.empty((nq, max(k, 0)), np.int64)
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
