"""The two-stage Retriever: Hamming top-C recall over a FAISS binary index, then continuous re-rank.

One code path for the service, batch export and ``hashrec evaluate``::

    bundle = load_bundle("bundles/")             # or Retriever.from_arrays(user_z, item_z, seen) in memory
    r = Retriever(bundle, threads=1)
    r.recommend(["u1", "u2"], k=20, candidates=1000)  # -> [Recommendation | None, ...]

Semantics (the contract the tests check against a brute-force numpy reference):

1. **Recall**: the ``C`` items nearest to the user's code in Hamming distance, ties broken by smaller item
   id, among the items that are not excluded. Excluded = the user's seen items (``exclude_seen``), the
   ``deny`` list, anything outside a given ``allow`` list, and (for vectors) the caller's ``exclude``
   arrays. The index is asked for ``C + |excluded|`` items and the excluded ones removed, so exclusion
   never leaves fewer than ``C`` candidates while enough items remain (exact with the flat index; an
   approximate index returns what it finds). With an ``allow`` list the recall scans only the allowed
   items' codes (exact, numpy popcount), which is cheap when the list is short.
2. **Re-rank**: candidates are scored by ``<z_u, z_i>`` (one gather of the candidates' rows and a batched
   product) and the top ``k`` returned, score descending then item id ascending.
3. ``candidates`` below ``k`` is raised to ``k``. When fewer than ``k`` items are left after exclusion,
   the recommendation holds what is left (possibly nothing): lists are never padded.

Kernels: when the optional C extension is built (:mod:`.fastscan`), flat bundles are searched by its exact
scan (identical answers to FAISS's IndexBinaryFlat, ~2-3x faster), IVF bundles by its scan of the probed
lists, and re-rank scores come from its fused gather + dot; otherwise FAISS and numpy do the same work.

Threads: FAISS's OpenMP thread count is a per-thread setting, so every search call sets it to
``threads`` in the calling thread (worker threads of a pool would otherwise use all cores, and OpenMP
workers spinning against other work slow a 1 ms query down a hundredfold). The compiled kernels are
single-threaded and release the GIL; the numpy re-rank uses einsum's own loops, not BLAS; the only BLAS
call is fold-in's small [n, d] x [d, K] product. torch is never imported here. Concurrent calls from
several threads are safe: nothing is mutated after construction.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from hashrec.model.data import IdMap

from . import binary_index, fastscan
from .bundle import Bundle, FoldIn
from .codes import check_bits, pack

log = logging.getLogger(__name__)

# rows per FAISS/numpy chunk: bounds memory of over-fetching and of subset scans
_ROW_CHUNK = 32
_NO_ITEMS = np.zeros(0, np.int64)
_SUBSET_BYTES = 1 << 26


class FoldInUnavailable(Exception):  # noqa: N818 (name fixed by the API contract)
    """The bundle cannot encode unseen users; ``str()`` says why (the caller falls back to popularity)."""


@dataclass
class Recommendation:
    """Top items for one user: raw item ids, re-rank scores and Hamming distances, best first.

    ``user`` is the raw user id (None for users given by vectors). ``hamming`` is -1 for items that did
    not come from Hamming recall (the popularity fallback, where ``scores`` are interaction counts).
    """

    user: str | None
    items: list[str]
    scores: list[float]
    hamming: list[int]
    source: str = "hierarchical"


@dataclass
class FoldInResult:
    """Fold-in of several users: their z, and per user the known items used and the unknown ids ignored."""

    z: np.ndarray  # float32 [n, K]
    items: list[np.ndarray] = field(default_factory=list)  # internal ids used, per user (sorted, unique)
    unknown: list[int] = field(default_factory=list)  # ids not in the bundle, per user


class Retriever:
    """Answers top-k queries from one bundle version. See the module docstring for the semantics."""

    def __init__(self, bundle: Bundle, *, threads: int = 1, scan: str = "auto") -> None:
        """Wrap a loaded bundle.

        Args:
            threads: FAISS thread count used by every search call (>= 1).
            scan: how flat and IVF bundles are searched: ``auto`` (the compiled scan of :mod:`.fastscan`
                when it is built, else FAISS), ``fast`` (require the compiled scan) or ``faiss``. Flat: both
                are exact and identical. IVF: the same probed lists; the compiled scan breaks distance ties
                by item id (FAISS's IVF heap does not), so ids at the boundary distance may differ. HNSW
                bundles always search their FAISS index.
        """
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if scan not in ("auto", "fast", "faiss"):
            raise ValueError(f"scan must be auto, fast or faiss, got {scan!r}")
        if scan == "fast" and not fastscan.available():
            raise ValueError("scan='fast' needs the compiled extension hashrec.index._hamming (not built)")
        self._fast = bundle.index_type == "flat" and scan != "faiss" and fastscan.available()
        # re-rank scores by the compiled gather + dot (same maths, ~2x faster) whenever it is built; the
        # numpy path sums in another order, so scores can differ in the last bit between the two builds
        self._cdots = fastscan.available() and bundle.item_z.dtype == np.float32
        # IVF bundles: the same probed lists, scanned by the compiled scan (ties by item id, like flat)
        self._ivf = (
            fastscan.IVFScan(bundle.index)
            if bundle.index_type == "ivf" and scan != "faiss" and fastscan.available()
            else None
        )
        self.bundle = bundle
        self.version = bundle.version
        self.threads = int(threads)
        self._n_items = bundle.n_items
        self._bits = bundle.bits
        seen = bundle.seen
        self._seen_indptr = np.asarray(seen.indptr, dtype=np.int64)
        self._seen_indices = np.asarray(seen.indices, dtype=np.int64)
        pop = np.asarray(bundle.popularity, dtype=np.int64)
        # popularity order (count desc, id asc), computed once so that popular() is a cheap walk
        self._pop_order = np.lexsort((np.arange(len(pop)), -pop))
        codes = bundle.item_codes
        self._item_codes = codes if codes.size else pack(bundle.item_z)
        # one user without filters (the serving case) in one compiled call: flat bundles, float32 item_z
        self._fused = self._fast and self._cdots and self._n_items > 0 and bundle.user_z.dtype == np.float32
        # raw item ids as a Python list of str: the fused call picks the answer's ids from it directly
        self._item_raw: list[str] = [str(x) for x in bundle.items.raw.tolist()] if self._fused else []
        # optional stage timer: observe("recall" | "rerank", seconds) after each stage (the service's
        # metrics); the fused path reports its own two stage times
        self.observe: Callable[[str, float], None] | None = None

    # -- construction from arrays (evaluation, tests) ------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        user_z: np.ndarray,
        item_z: np.ndarray,
        seen: sp.spmatrix | None = None,
        *,
        user_ids: Sequence[str] | None = None,
        item_ids: Sequence[str] | None = None,
        popularity: np.ndarray | None = None,
        foldin: FoldIn | None = None,
        index_type: str = "flat",
        index_params: dict[str, Any] | None = None,
        threads: int = 1,
        scan: str = "auto",
        version: str | None = None,
    ) -> Retriever:
        """An in-memory Retriever (no files): codes are ``sign(z)``; ids default to ``"0".."n-1"``.

        ``seen`` is a [n_users, n_items] sparse matrix of known interactions (nonzeros are excluded when
        ``exclude_seen``); popularity defaults to its column counts.
        """
        user_z = np.ascontiguousarray(user_z, dtype=np.float32)
        item_z = np.ascontiguousarray(item_z, dtype=np.float32)
        if user_z.ndim != 2 or item_z.ndim != 2 or user_z.shape[1] != item_z.shape[1]:
            raise ValueError(f"user_z {user_z.shape} and item_z {item_z.shape} must be 2-d, same width")
        n_users, bits = user_z.shape
        n_items = item_z.shape[0]
        check_bits(bits)
        seen_csr = (
            sp.csr_matrix((n_users, n_items), dtype=np.float32)
            if seen is None
            else sp.csr_matrix(seen, dtype=np.float32)
        )
        if seen_csr.shape != (n_users, n_items):
            raise ValueError(f"seen has shape {seen_csr.shape}, expected {(n_users, n_items)}")
        seen_csr.eliminate_zeros()
        seen_csr.sum_duplicates()
        seen_csr.sort_indices()
        if popularity is None:
            popularity = np.diff(seen_csr.tocsc().indptr).astype(np.int64)
        item_codes = pack(item_z)
        index, params = binary_index.build_index(item_codes, index_type, index_params)
        if version is None:
            h = hashlib.sha256(user_z.tobytes())
            h.update(item_z.tobytes())
            version = f"memory-{h.hexdigest()[:8]}"
        bundle = Bundle(
            path=Path("<memory>"),
            version=version,
            manifest={"version": version, "index": {"type": index_type, "params": params}},
            users=IdMap(list(user_ids) if user_ids is not None else [str(i) for i in range(n_users)]),
            items=IdMap(list(item_ids) if item_ids is not None else [str(i) for i in range(n_items)]),
            bits=bits,
            dim=bits,
            user_z=user_z,
            item_z=item_z,
            user_codes=pack(user_z),
            seen=seen_csr,
            popularity=np.asarray(popularity, dtype=np.int64),
            index=index,
            foldin=foldin,
            item_codes=item_codes,
        )
        return cls(bundle, threads=threads, scan=scan)

    # -- lookups ---------------------------------------------------------------------------------------------
    def has_user(self, raw_id: str) -> bool:
        """Whether the bundle knows this raw user id."""
        return raw_id in self.bundle.users

    def seen_items(self, user_idx: int) -> np.ndarray:
        """Internal ids (sorted) of the known items of one internal user id."""
        return self._seen_indices[self._seen_indptr[user_idx] : self._seen_indptr[user_idx + 1]]

    def item_ids(self, raw_ids: Collection[str]) -> np.ndarray:
        """Sorted unique internal ids of the known raw item ids in ``raw_ids`` (unknown ids are ignored)."""
        idx = self.bundle.items.to_internal(list(raw_ids))
        return np.unique(idx[idx >= 0])

    # -- public queries ----------------------------------------------------------------------------------------
    def recommend(
        self,
        users: Sequence[str],
        k: int,
        candidates: int,
        *,
        exclude_seen: bool = True,
        allow: Collection[str] | None = None,
        deny: Collection[str] | None = None,
    ) -> list[Recommendation | None]:
        """Top-``k`` items for known users (raw ids; one string is taken as a batch of one).

        Returns one entry per user, in order: None for a user the bundle does not know. ``allow``
        restricts the answer to those raw item ids, ``deny`` removes some; unknown item ids in either are
        ignored. Raises ValueError for k < 1 or candidates < 1.
        """
        k, candidates = _check_k(k, candidates)
        if isinstance(users, str):
            users = [users]
        if allow is None and deny is None and (len(users) == 1 or self._fused):
            if len(users) == 1:
                return [self._recommend_one(str(users[0]), k, candidates, exclude_seen)]
            return self._recommend_fused(users, k, candidates, exclude_seen)
        uidx = self.bundle.users.to_internal(list(users))
        out: list[Recommendation | None] = [None] * len(uidx)
        rows = np.flatnonzero(uidx >= 0)
        if rows.size == 0:
            return out
        u = uidx[rows]
        exclude = [self.seen_items(int(x)) for x in u] if exclude_seen else None
        recs = self._two_stage(
            self.bundle.user_codes[u],
            self.bundle.user_z[u],
            k,
            candidates,
            exclude,
            self._allow_idx(allow),
            self._deny_idx(deny),
        )
        for r, ui, rec in zip(rows, u, recs, strict=True):
            rec.user = str(self.bundle.users.raw[ui])
            out[int(r)] = rec
        return out

    def _recommend_one(self, user: str, k: int, candidates: int, exclude_seen: bool) -> Recommendation | None:
        """:meth:`recommend` for one user without filters (the serving case): the same stages, with row
        slices (views) instead of the batch path's index arrays."""
        ui = self.bundle.users.get(user)
        if ui is None:
            return None
        b = self.bundle
        if self._fused:
            c = max(candidates, k)
            items, scores, ham, t_recall, t_rerank = fastscan.recommend_one(
                self._item_codes,
                b.user_codes[ui],
                min(c, self._n_items),
                self.seen_items(ui) if exclude_seen else _NO_ITEMS,
                b.item_z,
                b.user_z[ui],
                k,
                self._item_raw,
            )
            if self.observe is not None:
                self.observe("recall", t_recall)
                self.observe("rerank", t_rerank)
            return Recommendation(user=str(b.users.raw[ui]), items=items, scores=scores, hamming=ham)
        exclude = [self.seen_items(ui)] if exclude_seen else None
        (rec,) = self._two_stage(
            b.user_codes[ui : ui + 1], b.user_z[ui : ui + 1], k, candidates, exclude, None, None
        )
        rec.user = str(b.users.raw[ui])
        return rec

    def _recommend_fused(
        self, users: Sequence[str], k: int, candidates: int, exclude_seen: bool
    ) -> list[Recommendation | None]:
        """:meth:`recommend` without filters, all users in one compiled call (flat bundles, float32)."""
        b = self.bundle
        uidx = b.users.to_internal(list(users))
        out: list[Recommendation | None] = [None] * len(uidx)
        rows = np.flatnonzero(uidx >= 0)
        if rows.size == 0:
            return out
        u = uidx[rows]
        answers, t_recall, t_rerank = fastscan.recommend_many(
            self._item_codes,
            b.user_codes,
            b.user_z,
            u,
            min(max(candidates, k), self._n_items),
            self._seen_indptr if exclude_seen else _NO_ITEMS,
            self._seen_indices,
            b.item_z,
            k,
            self._item_raw,
        )
        if self.observe is not None:
            self.observe("recall", t_recall)
            self.observe("rerank", t_rerank)
        raw_users = b.users.raw
        for r, ui, (items, scores, ham) in zip(rows.tolist(), u.tolist(), answers, strict=True):
            out[r] = Recommendation(user=str(raw_users[ui]), items=items, scores=scores, hamming=ham)
        return out

    def recommend_vectors(
        self,
        z: np.ndarray,
        k: int,
        candidates: int,
        *,
        exclude: list[np.ndarray] | None = None,
        allow: Collection[str] | None = None,
        deny: Collection[str] | None = None,
    ) -> list[Recommendation]:
        """Top-``k`` items for users given by their continuous z ([n, K] or [K]); codes are sign(z).

        ``exclude`` holds, per row, internal item ids never to return (e.g. the items a folded-in user
        gave). Same semantics as :meth:`recommend`; ``user`` is None in the results.
        """
        k, candidates = _check_k(k, candidates)
        z = np.atleast_2d(np.asarray(z, dtype=np.float32))
        if z.shape[1] != self._bits:
            raise ValueError(f"z has {z.shape[1]} dimensions, the bundle {self._bits}")
        if exclude is not None and len(exclude) != len(z):
            raise ValueError(f"exclude has {len(exclude)} rows, z has {len(z)}")
        excl = None if exclude is None else [np.unique(np.asarray(e, dtype=np.int64)) for e in exclude]
        return self._two_stage(pack(z), z, k, candidates, excl, self._allow_idx(allow), self._deny_idx(deny))

    def fold_in(self, item_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """z (float32 [n, K]) of unseen users from their raw item ids (unknown ids are ignored).

        Raises FoldInUnavailable when the bundle has no fold-in arrays. See :meth:`fold_in_detailed` for
        the counts of ignored ids.
        """
        return self.fold_in_detailed(item_lists).z

    def fold_in_detailed(self, item_lists: Sequence[Sequence[str]]) -> FoldInResult:
        """Like :meth:`fold_in`, also returning per user the internal items used and the unknown count.

        A user with no known item gets ``tanh(bias)`` (no evidence); callers should check ``items``.
        """
        fi = self.bundle.foldin
        if fi is None:
            raise FoldInUnavailable(
                f"bundle {self.version} has no fold-in arrays (the run's embeddings.npz did not include them)"
            )
        items_map = self.bundle.items
        pooled = np.zeros((len(item_lists), fi.item.shape[1]), dtype=np.float32)
        used: list[np.ndarray] = []
        unknown: list[int] = []
        for r, lst in enumerate(item_lists):
            if isinstance(lst, str):
                raise ValueError(f"item list {r} is a string, expected a list of item ids")
            idx = items_map.to_internal([str(x) for x in lst])
            unknown.append(int((idx < 0).sum()))
            idx = np.unique(idx[idx >= 0])
            used.append(idx)
            if idx.size:
                pooled[r] = fi.item[idx].sum(axis=0) / float(idx.size) ** fi.power
        z = np.tanh(pooled @ np.asarray(fi.weight, dtype=np.float32).T + fi.bias).astype(np.float32)
        return FoldInResult(z=z, items=used, unknown=unknown)

    def popular(
        self,
        k: int,
        *,
        exclude: np.ndarray | None = None,
        allow: Collection[str] | None = None,
        deny: Collection[str] | None = None,
    ) -> Recommendation:
        """The ``k`` most popular items (known interactions, ties by smaller item id), filtered.

        ``exclude`` holds internal item ids to leave out. Scores are the interaction counts; hamming is -1.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        keep = np.ones(self._n_items, dtype=bool)
        allow_idx = self._allow_idx(allow)
        if allow_idx is not None:
            keep[:] = False
            keep[allow_idx] = True
        deny_idx = self._deny_idx(deny)
        if deny_idx is not None:
            keep[deny_idx] = False
        if exclude is not None and len(exclude):
            keep[np.asarray(exclude, dtype=np.int64)] = False
        order = self._pop_order[keep[self._pop_order]][:k]
        return Recommendation(
            user=None,
            items=self.bundle.items.to_raw(order),
            scores=[float(x) for x in np.asarray(self.bundle.popularity)[order]],
            hamming=[-1] * len(order),
            source="popular",
        )

    # -- stages (internal ids, batched; evaluation uses these) --------------------------------------------------
    def recall_stage(
        self,
        user_idx_or_signs: np.ndarray,
        candidates: int,
        exclude_seen: bool = True,
        *,
        exclude: list[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hamming top-``candidates`` for a batch: (dist int32 [n, C'], idx int64 [n, C']).

        ``user_idx_or_signs`` is either internal user ids (1-d integers; their seen items are excluded
        when ``exclude_seen``) or query vectors [n, K] (+-1 signs or any z; the code is z >= 0), for which
        ``exclude_seen`` does not apply but ``exclude`` (per-row internal ids) does. ``C' = min(C, n_items)``;
        rows are sorted by (distance, item id); slots left empty by exclusion hold idx -1 and distance K + 1.
        """
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        q = np.asarray(user_idx_or_signs)
        if q.ndim == 1 and q.dtype.kind in "iu":
            u = q.astype(np.int64)
            codes = np.take(self.bundle.user_codes, u, axis=0)
            excl = [self.seen_items(int(x)) for x in u] if exclude_seen else None
        elif q.ndim == 2 and q.shape[1] == self._bits:
            codes = pack(q.astype(np.float32))
            excl = None
        else:
            raise ValueError(
                f"expected internal user ids (1-d ints) or vectors [n, {self._bits}], got {q.shape}"
            )
        if exclude is not None:
            if len(exclude) != len(codes):
                raise ValueError(f"exclude has {len(exclude)} rows, the query {len(codes)}")
            extra = [np.asarray(e, dtype=np.int64) for e in exclude]
            excl = extra if excl is None else [np.union1d(a, b) for a, b in zip(excl, extra, strict=True)]
        return self._recall(codes, candidates, excl, None)

    def rerank_stage(self, user_z: np.ndarray, cand_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Re-rank candidates (int64 [n, C], -1 = empty) by <z_u, z_i>: (scores float32 [n, k'], idx [n, k']).

        ``k' = min(k, C)``; order is score descending then item id ascending; empty slots come last with
        score -inf and idx -1.
        """
        scores, idx, _ = self._rerank(np.asarray(user_z, dtype=np.float32), np.asarray(cand_idx), k)
        return scores, idx

    # -- internals -----------------------------------------------------------------------------------------------
    def _allow_idx(self, allow: Collection[str] | None) -> np.ndarray | None:
        return None if allow is None else self.item_ids(allow)

    def _deny_idx(self, deny: Collection[str] | None) -> np.ndarray | None:
        if deny is None:
            return None
        d = self.item_ids(deny)
        return d if d.size else None

    def _two_stage(
        self,
        codes: np.ndarray,
        z: np.ndarray,
        k: int,
        candidates: int,
        exclude: list[np.ndarray] | None,
        allow_idx: np.ndarray | None,
        deny_idx: np.ndarray | None,
    ) -> list[Recommendation]:
        c = max(candidates, k)
        if deny_idx is not None:
            exclude = (
                [deny_idx] * len(codes) if exclude is None else [np.union1d(e, deny_idx) for e in exclude]
            )
        dist, cand = self._recall(codes, c, exclude, allow_idx)
        scores, top, pos = self._rerank(z, cand, k)
        raw = self.bundle.items.raw
        if len(codes) == 1:  # one row: empty slots (idx -1) come last, so the answer is a prefix
            m = int(np.count_nonzero(top[0] >= 0))
            p = pos[0, :m]
            return [
                Recommendation(
                    user=None,
                    items=[str(x) for x in raw[top[0, :m]].tolist()],
                    scores=scores[0, :m].tolist(),
                    hamming=dist[0, p].tolist(),
                )
            ]
        # empty slots (idx -1) come last in every row, so each answer is a prefix of its row: convert the
        # arrays to Python lists once (tolist: the element loop in C) and slice them per row
        lens = np.count_nonzero(top >= 0, axis=1).tolist()
        items = raw[np.maximum(top, 0)].tolist()
        score_rows = scores.tolist()
        ham_rows = np.take_along_axis(dist, pos, axis=1).tolist()
        return [
            Recommendation(
                user=None,
                items=[str(x) for x in items[r][:m]],
                scores=score_rows[r][:m],
                hamming=ham_rows[r][:m],
            )
            for r, m in enumerate(lens)
        ]

    def _recall(
        self,
        codes: np.ndarray,
        c: int,
        exclude: list[np.ndarray] | None,
        allow_idx: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        faiss.omp_set_num_threads(self.threads)  # per calling thread: see the module docstring
        n = len(codes)
        width = min(c, self._n_items)
        if allow_idx is not None:
            return self._recall_subset(codes, width, exclude, allow_idx)
        if exclude is None:
            return self._search(codes, width)
        if self._fast:  # exclusions applied inside the compiled scan: the same answer as the loop below
            return fastscan.topk_excluding(self._item_codes, codes, width, exclude)
        dist = np.empty((n, width), np.int32)
        idx = np.empty((n, width), np.int64)
        for s in range(0, n, _ROW_CHUNK):
            ex = exclude[s : s + _ROW_CHUNK]
            # over-fetch by the largest exclusion in the chunk: the top `width` survivors are then exact
            kf = min(self._n_items, width + max((len(e) for e in ex), default=0))
            d, i = self._search(codes[s : s + _ROW_CHUNK], kf)
            keep = (i >= 0) & ~_excluded(i, ex, self._n_items)
            dist[s : s + len(ex)], idx[s : s + len(ex)] = _compact(d, i, keep, width, self._bits)
        return dist, idx

    def _search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Hamming top-k over all items: the compiled exact scan for flat bundles, else the FAISS index."""
        if self._fast:
            return fastscan.topk(self._item_codes, codes, k)
        if self._ivf is not None:
            return self._ivf.search(codes, k)
        return binary_index.search(self.bundle.index, codes, k)

    def _recall_subset(
        self, codes: np.ndarray, width: int, exclude: list[np.ndarray] | None, allow_idx: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact Hamming top-``width`` among the allowed items only (numpy popcount over their codes)."""
        n, m = len(codes), len(allow_idx)
        dist = np.full((n, width), self._bits + 1, np.int32)
        idx = np.full((n, width), -1, np.int64)
        if m == 0:
            return dist, idx
        sub = np.take(self._item_codes, allow_idx, axis=0)
        rows = max(1, _SUBSET_BYTES // max(1, m * sub.shape[1]))
        for s in range(0, n, rows):
            q = codes[s : s + rows]
            d = np.bitwise_count(q[:, None, :] ^ sub[None, :, :]).sum(axis=2, dtype=np.int64)
            if exclude is not None:
                cand = np.broadcast_to(allow_idx, d.shape)
                d[_excluded(cand, exclude[s : s + rows], self._n_items)] = self._bits + 1
            # allow_idx is sorted, so ordering by (distance, position) is ordering by (distance, item id)
            key = d * (m + 1) + np.arange(m)[None, :]
            w = min(width, m)
            part = np.argpartition(key, w - 1, axis=1)[:, :w] if w < m else np.argsort(key, axis=1)
            part = np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, axis=1), axis=1), axis=1)
            dd = np.take_along_axis(d, part, axis=1)
            ii = np.where(dd > self._bits, -1, allow_idx[part])
            dist[s : s + len(q), :w] = dd
            idx[s : s + len(q), :w] = ii
        dist[idx < 0] = self._bits + 1
        return dist, idx

    def _rerank(
        self, user_z: np.ndarray, cand: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, idx, positions in ``cand``) of the top ``k`` by score desc, item id asc."""
        n, c = cand.shape
        k = min(k, c)
        if self._cdots:  # scores and the (score desc, id asc) selection in one compiled call
            return fastscan.rerank(self.bundle.item_z, cand, user_z, k)
        if n == 1:
            return self._rerank_one(user_z[0], cand[0], k)
        empty = cand < 0
        safe = np.where(empty, 0, cand)
        # np.take, not fancy indexing: ~3x faster for a gather of rows (no generic index machinery)
        if self._cdots:
            scores = fastscan.dots(self.bundle.item_z, cand, user_z)
        else:
            gathered = np.take(self.bundle.item_z, safe.ravel(), axis=0).reshape(n, c, -1)
            # einsum without `optimize` runs numpy's own loops: no BLAS, so no BLAS thread pool to manage
            scores = np.einsum("ncd,nd->nc", gathered, user_z).astype(np.float32)
        scores[empty] = -np.inf
        tie = np.where(empty, np.iinfo(np.int64).max, safe)
        neg = -scores
        if k < c:
            # partial selection (O(C)) instead of sorting all C; the rows where the k-th score also occurs
            # outside the selection (a tie across the boundary) are redone with a full (score, id) sort
            pos = np.argpartition(neg, k - 1, axis=1)[:, :k]
            sel = np.take_along_axis(neg, pos, axis=1)
            kth = sel.max(axis=1, keepdims=True)
            split = (neg == kth).sum(axis=1) != (sel == kth).sum(axis=1)
            for r in np.flatnonzero(split):
                pos[r] = np.lexsort((tie[r], neg[r]))[:k]
            order = np.lexsort(
                (np.take_along_axis(tie, pos, axis=1), np.take_along_axis(neg, pos, axis=1)), axis=1
            )
            pos = np.take_along_axis(pos, order, axis=1)
        else:
            pos = np.lexsort((tie, neg), axis=1)
        return (
            np.take_along_axis(scores, pos, axis=1),
            np.take_along_axis(cand, pos, axis=1),
            pos,
        )

    def _rerank_one(
        self, z: np.ndarray, cand: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_rerank` for one user on 1-d arrays (the serving case: fewer, cheaper numpy calls)."""
        empty = cand < 0
        has_empty = bool(empty.any())
        safe = np.where(empty, 0, cand) if has_empty else cand
        if self._cdots:
            scores = fastscan.dots(self.bundle.item_z, cand[None, :], z[None, :])[0]
        else:
            gathered = np.take(self.bundle.item_z, safe, axis=0)
            scores = np.einsum("cd,d->c", gathered, z).astype(np.float32, copy=False)
        tie = safe
        if has_empty:
            scores[empty] = -np.inf
            tie = np.where(empty, np.iinfo(np.int64).max, safe)
        neg = -scores
        c = len(cand)
        if k < c:
            pos = np.argpartition(neg, k - 1)[:k]
            kth = neg[pos].max()
            if (neg == kth).sum() != (neg[pos] == kth).sum():  # a tie across the boundary: full sort
                pos = np.lexsort((tie, neg))[:k]
            pos = pos[np.lexsort((tie[pos], neg[pos]))]
        else:
            pos = np.lexsort((tie, neg))
        return scores[pos][None, :], cand[pos][None, :], pos[None, :]


def _check_k(k: int, candidates: int) -> tuple[int, int]:
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if int(candidates) < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    return int(k), int(candidates)


def _excluded(idx: np.ndarray, exclude: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """Boolean mask [rows, w]: idx[r, j] is in exclude[r] (each sorted). One searchsorted for all rows."""
    rows = idx.shape[0]
    if rows == 1:  # one user (the serving case): a plain searchsorted, no row keys
        e = np.asarray(exclude[0], dtype=np.int64)
        if not len(e):
            return np.zeros(idx.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(e, idx[0]), len(e) - 1)
        return (e[pos] == idx[0])[None, :]
    lens = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=rows)
    if lens.sum() == 0:
        return np.zeros(idx.shape, dtype=bool)
    base = np.arange(rows, dtype=np.int64) * (n_items + 1)
    ex_keys = np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude]) + np.repeat(base, lens)
    ex_keys.sort()  # already sorted row by row; sort() is a cheap guarantee
    keys = np.where(idx < 0, n_items, idx) + base[:, None]  # -1 maps to a key no item uses
    pos = np.searchsorted(ex_keys, keys)
    return ex_keys[np.minimum(pos, len(ex_keys) - 1)] == keys


def _compact(
    dist: np.ndarray, idx: np.ndarray, keep: np.ndarray, width: int, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first ``width`` kept entries of each row, in order; pad with (-1, bits + 1)."""
    if dist.shape[0] == 1:  # one row: index the survivors directly instead of a stable argsort
        sel = np.flatnonzero(keep[0])[:width]
        d1 = np.full((1, width), bits + 1, np.int32)
        i1 = np.full((1, width), -1, np.int64)
        d1[0, : len(sel)] = dist[0, sel]
        i1[0, : len(sel)] = idx[0, sel]
        return d1, i1
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    d = np.take_along_axis(dist, order, axis=1)
    i = np.take_along_axis(idx, order, axis=1)
    k = np.take_along_axis(keep, order, axis=1)
    if d.shape[1] < width:  # fewer items than width in total: cannot happen (kf >= width), kept for safety
        pad = width - d.shape[1]
        d = np.pad(d, ((0, 0), (0, pad)), constant_values=bits + 1)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
        k = np.pad(k, ((0, 0), (0, pad)), constant_values=False)
    return np.where(k, d, bits + 1).astype(np.int32), np.where(k, i, -1)
