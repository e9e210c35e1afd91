"""FAISS binary indexes over item codes: build, configure, save/load, search with a total tie order.

Index types (``index_type``), each with build and search parameters that are recorded in a bundle's
manifest and re-applied on load:

- ``flat``: ``IndexBinaryFlat``, exact, the default up to a few million items. The Retriever scans its
  code array with our compiled scan (index/scan.py, about 2x FAISS's search end to end:
  benchmarks/retrieval.py); searched through FAISS (``search`` below, tests and tools), it uses the
  counting search (``use_heap = False``, ``hammings_knn_mc``), which returns ties in item-id order, i.e.
  our contract (distance ascending, then item id ascending).
- ``ivf``: ``IndexBinaryIVF`` (params ``nlist``, ``nprobe``), approximate: k-means over the codes in
  Hamming space, then only ``nprobe`` lists are scanned. Its recall against the exact Hamming top-C must be
  measured on the real codes (``benchmarks/retrieval.py`` does).
- ``hnsw``: ``IndexBinaryHNSW`` (params ``M``, ``efSearch``), approximate, far more memory per item.

Item ids are the positions of the codes (internal ids 0..n-1), so no ID-map wrapper is needed.
Searching is safe from several threads at once (FAISS search is const); adding to an index is not, and
nothing here adds after build.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from hashrec.data.codes import check_bits

log = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "ivf", "hnsw")

# FAISS's counting search (hammings_knn_mc) holds (bits + 1) * k ids per query while it runs: queries are
# searched in chunks that keep those buffers under this many bytes, whatever k is.
_SEARCH_BYTES = 64 << 20


def default_params(index_type: str, n_items: int) -> dict[str, Any]:
    """Build and search parameters used when the caller gives none (recorded in the manifest)."""
    if index_type == "flat":
        return {"use_heap": False}
    if index_type == "ivf":
        # about 1 list per 1000 items, and at least 39 training points per centroid (FAISS's rule of thumb)
        nlist = max(1, min(n_items // 39, max(1, round(n_items / 1000))))
        return {"nlist": int(nlist), "nprobe": int(min(nlist, max(1, math.ceil(nlist / 16))))}
    if index_type == "hnsw":
        return {"M": 16, "efConstruction": 40, "efSearch": 128}
    raise ValueError(f"index type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")


def build_index(
    codes: np.ndarray, index_type: str = "flat", params: dict[str, Any] | None = None
) -> tuple[faiss.IndexBinary, dict[str, Any]]:
    """Build a binary index over packed item codes (uint8 [n, K/8]); returns it and the full parameters.

    ``params`` override :func:`default_params`; unknown keys raise ValueError (a typo must not be ignored).
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n, nbytes = codes.shape
    bits = check_bits(8 * nbytes)
    full = default_params(index_type, n)
    for key, value in (params or {}).items():
        if key not in full:
            raise ValueError(f"index parameter {key!r} is not one of {sorted(full)} for {index_type!r}")
        full[key] = type(full[key])(value)
    index: faiss.IndexBinary
    if index_type == "flat":
        index = faiss.IndexBinaryFlat(bits)
    elif index_type == "ivf":
        if full["nlist"] < 1 or full["nlist"] > n:
            raise ValueError(f"ivf nlist must be in [1, {n}], got {full['nlist']}")
        quantizer = faiss.IndexBinaryFlat(bits)
        # faiss's Python wrapper keeps a reference to the quantizer for the index's lifetime
        index = faiss.IndexBinaryIVF(quantizer, bits, full["nlist"])
        index.train(codes)
    else:
        index = faiss.IndexBinaryHNSW(bits, full["M"])
        index.hnsw.efConstruction = full["efConstruction"]
    index.add(codes)
    configure(index, index_type, full)
    return index, full


def configure(index: faiss.IndexBinary, index_type: str, params: dict[str, Any]) -> None:
    """Apply search-time parameters (nprobe, efSearch, heap mode) to an index built or loaded."""
    if index_type == "flat":
        index.use_heap = bool(params.get("use_heap", False))  # type: ignore[attr-defined]
    elif index_type == "ivf":
        index.nprobe = int(params["nprobe"])  # type: ignore[attr-defined]
    elif index_type == "hnsw":
        index.hnsw.efSearch = int(params["efSearch"])  # type: ignore[attr-defined]


def write_index(index: faiss.IndexBinary, path: Path) -> None:
    """Write an index with FAISS's own format (``write_index_binary``)."""
    faiss.write_index_binary(index, str(path))


def read_index(
    path: Path, index_type: str, params: dict[str, Any], *, mmap: bool = True
) -> faiss.IndexBinary:
    """Read an index written by :func:`write_index` and apply its search parameters.

    A flat index is memory-mapped with ``IO_FLAG_MMAP_IFC`` (plain ``IO_FLAG_MMAP`` does not map binary
    flat codes); the other types are read into memory.
    """
    flags = faiss.IO_FLAG_MMAP_IFC if (mmap and index_type == "flat") else 0
    # read_index_binary already returns the concrete class (never re-downcast: the temporary proxy would
    # free the index it owns)
    index = faiss.read_index_binary(str(path), flags)
    configure(index, index_type, params)
    return index


def search(index: faiss.IndexBinary, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hamming top-``k`` of packed queries (uint8 [n, K/8]): (dist int32 [n, k], idx int64 [n, k]).

    ``k`` is clipped to the index size; missing slots (approximate indexes can return fewer) hold idx -1
    and distance ``K + 1``. Rows are sorted by (distance, item id), whatever order FAISS returned.
    """
    queries = np.ascontiguousarray(queries, dtype=np.uint8)
    n = queries.shape[0]
    k = min(int(k), int(index.ntotal))
    if n == 0 or k <= 0:
        return np.zeros((n, max(k, 0)), np.int32), np.zeros((n, max(k, 0)), np.int64)
    dist = np.empty((n, k), np.int32)
    idx = np.empty((n, k), np.int64)
    rows = max(1, _SEARCH_BYTES // ((index.d + 1) * k * 8))
    for s in range(0, n, rows):
        dist[s : s + rows], idx[s : s + rows] = index.search(queries[s : s + rows], k)
    missing = idx < 0
    if missing.any():
        dist[missing] = index.d + 1
    # FAISS's flat searches already return (distance, id) order; approximate ones may not break ties by id.
    key = dist.astype(np.int64) * (int(index.ntotal) + 1) + np.where(missing, int(index.ntotal), idx)
    if not np.all(key[:, 1:] >= key[:, :-1]):
        order = np.argsort(key, axis=1, kind="stable")
        dist = np.take_along_axis(dist, order, axis=1)
        idx = np.take_along_axis(idx, order, axis=1)
    return dist, idx


def recall_against_exact(approx_dist: np.ndarray, approx_idx: np.ndarray, exact_dist: np.ndarray) -> float:
    """Recall of an approximate Hamming top-C against the exact one, counting ties (faiss contrib style).

    Hamming top-C has many ties (64-bit codes take only 65 distances), so comparing id sets would punish an
    index for picking another item at the same distance: a returned item counts as correct when its
    distance is within the exact C-th distance. All arrays are [n, C] (idx -1 = nothing returned); the
    result is the mean over queries of correct / C.
    """
    if approx_dist.shape != exact_dist.shape:
        raise ValueError(f"shapes differ: {approx_dist.shape} vs {exact_dist.shape}")
    if exact_dist.size == 0:
        return 1.0
    ok = (approx_idx >= 0) & (approx_dist <= exact_dist[:, -1:])
    return float(ok.mean())


def memory_bytes(index: faiss.IndexBinary) -> int:
    """Serialized size of an index in bytes (what it costs on disk and, roughly, in memory)."""
    return int(faiss.serialize_index_binary(index).size)
