"""The exact Hamming top-C scan (index/_scan.c) over a FAISS flat index's codes.

The C function is built by every install (setup.py; no fallback: an install without a C compiler fails
loudly). It reads the index's own code array in place (FAISS owns it, memory-mapped for bundles), so the
FAISS file stays the one index format. Why a kernel beside FAISS at all: its end-to-end gain is measured
side by side by ``benchmarks/retrieval.py`` (docs/benchmarks.md, "Retrieval").

The scan releases the GIL, so :func:`topc` splits large batches over a thread pool when asked for several
threads.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np

from . import _scan  # the compiled module: importing it fails if the install did not build it

# below this many queries per thread, a thread pool costs more than it saves
_ROWS_PER_THREAD = 64


def use_vector_popcount(enable: bool) -> bool:
    """Run the AVX-512 VPOPCNTDQ build of the kernel's distance loop when ``enable`` and the CPU has it
    (the default, set when the library loads), else the baseline build; returns whether the vector one runs.
    Process-wide: for tests, which check both builds against brute force."""
    return _scan.use_vector_popcount(enable)


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, "hamming-scan")


def flat_codes(index: faiss.IndexBinary) -> np.ndarray:
    """The codes of an ``IndexBinaryFlat`` as a read-only uint8 [ntotal, code_size] view (no copy).

    The view lives in the index's memory: the caller keeps the index alive as long as the view. The index
    must already be the concrete class (``read_index_binary`` returns it): a downcast proxy made here would
    free the index it wraps when it goes away.
    """
    if not isinstance(index, faiss.IndexBinaryFlat):
        raise TypeError(f"expected a faiss.IndexBinaryFlat, got {type(index).__name__}")
    n, size = int(index.ntotal), int(index.code_size)
    if n == 0:
        return np.zeros((0, size), np.uint8)
    flat: Any = index  # faiss's stubs do not declare xb
    view = faiss.rev_swig_ptr(flat.xb.data(), n * size).reshape(n, size)
    view.flags.writeable = False
    return view


def exclusions_csr(exclude: Sequence[np.ndarray] | None, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-row id arrays as (indptr int64 [n + 1], ids int64), the layout the kernel reads; None = none."""
    if exclude is None:
        return None
    if len(exclude) != n:
        raise ValueError(f"exclude has {len(exclude)} rows, the query {n}")
    if n == 1:  # one user (the serving case): its row as it is
        return np.array([0, len(exclude[0])], np.int64), np.ascontiguousarray(exclude[0], dtype=np.int64)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.fromiter(map(len, exclude), np.int64, n), out=indptr[1:])
    ids = np.concatenate(exclude) if n else np.zeros(0, np.int64)
    return indptr, np.ascontiguousarray(ids, dtype=np.int64)


def topc(
    items: np.ndarray,
    queries: np.ndarray,
    c: int,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    allow: np.ndarray | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming top-``c`` (``c <= len(items)``): (dist int32 [n, c], idx int64 [n, c]).

    ``items``/``queries``: packed codes uint8, same width; ``exclude``: from :func:`exclusions_csr`;
    ``allow``: bool [n_items], only True items returned. Rows are ordered by (distance, item id); empty
    slots (fewer eligible items than c) hold distance ``bits + 1`` and id -1.
    """
    queries = np.ascontiguousarray(queries, dtype=np.uint8)
    n = len(queries)
    if queries.ndim != 2 or items.ndim != 2 or queries.shape[1] != items.shape[1]:
        raise ValueError(f"queries {queries.shape} and items {items.shape} must be 2-d, same code width")
    if not 0 <= c <= len(items):
        raise ValueError(f"c must be in [0, {len(items)}], got {c}")
    if allow is not None and allow.shape != (len(items),):
        raise ValueError(f"allow has shape {allow.shape}, expected ({len(items)},)")
    dist = np.empty((n, c), np.int32)
    idx = np.empty((n, c), np.int64)
    if n == 0:
        return dist, idx
    items = np.ascontiguousarray(items, dtype=np.uint8)
    allow_u8 = None if allow is None else np.ascontiguousarray(allow, dtype=np.uint8)
    indptr, ids = exclude if exclude is not None else (None, None)
    size = items.shape[1]

    def run(lo: int, hi: int) -> None:  # rows [lo, hi), written into dist and idx in place
        part = slice(lo, hi)
        ptr = None if indptr is None else indptr[lo : hi + 1]
        _scan.topc(items, queries[part], size, c, ptr, ids, allow_u8, dist[part], idx[part])

    parts = min(threads, max(1, n // _ROWS_PER_THREAD))
    if parts <= 1:
        _scan.topc(items, queries, size, c, indptr, ids, allow_u8, dist, idx)
    else:
        bounds = np.linspace(0, n, parts + 1).astype(int)
        for f in [_pool(parts).submit(run, int(a), int(b)) for a, b in itertools.pairwise(bounds)]:
            f.result()
    return dist, idx
