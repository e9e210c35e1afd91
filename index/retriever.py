"""The two-stage Retriever: Hamming top-C recall over the bundle's binary index, then re-rank by the vectors.

One path, used by training validation, ``hashrec evaluate``, the service, the candidate exports and the
quality monitor alike::

    r = Retriever(load_bundle("bundles/"))        # or Retriever.from_arrays(user_z, item_z, seen) in memory
    r.recommend(["u1", "u2"], k=20, candidates=1000)   # -> [Recommendation | None, ...]

    codes, vectors = r.user_rows(users)           # internal ids -> their codes and re-rank vectors
    dist, cand = r.recall(codes, 1000, exclude)   # stage 1: Hamming top-C, ties by smaller item id
    scores, top = r.rerank(vectors, cand, 20)     # stage 2: <v_u, v_i> of the C candidates, top-k

Contract (checked against a brute-force numpy reference in tests/index/test_retriever.py):

1. **Recall** (:meth:`Retriever.recall`): the C items nearest to each query code in Hamming distance, ties
   broken by smaller item id, among the eligible items: not in the row's ``exclude`` ids (a user's seen
   items, a request's excluded items) and, when ``allow`` is given, in it. The flat (exact) index, the
   default, is scanned by our compiled scan (index/scan.py) over FAISS's own code array, filters applied
   inside the scan: C eligible items come back whenever they exist. An approximate index (IVF, HNSW) is
   searched by FAISS for more than C items (C plus the row's exclusions, widened while an ``allow`` list
   leaves too few) and filtered here; it returns what it finds. Empty slots hold id -1 and distance
   ``bits + 1``.
2. **Re-rank** (:meth:`Retriever.rerank`): each candidate is scored by the inner product of the user's and
   the item's re-rank vectors; the top k are returned by score descending, then item id ascending.
3. ``candidates`` below ``k`` is raised to ``k``; lists are never padded: a user with fewer than k
   eligible items gets fewer.

:meth:`Retriever.exact` is the reference the two stages approximate: every item scored by the re-rank
vectors (FAISS's exact inner-product search), the same exclusions and tie rule.

Threads: the scan splits a batch over ``threads`` pool threads (it releases the GIL); FAISS's OpenMP
thread count is a per-thread setting, so every FAISS search sets it to ``threads`` in the calling thread
(pool threads would otherwise use all cores each). The re-rank is FAISS's ``knn_inner_products_by_idx``
on the same threads. torch is never imported here. Concurrent calls from several threads are safe:
nothing is mutated after construction.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from hashrec.data import IdMap
from hashrec.data.codes import check_bits, distances, pack

from . import binary_index, scan
from .bundle import Bundle, FoldIn

Observer = Callable[[str, float], None]


class FoldInUnavailable(Exception):  # noqa: N818 (name fixed by the API contract)
    """The bundle cannot encode unseen users; ``str()`` says why (the caller falls back to popularity)."""


@dataclass
class Recommendation:
    """Top items for one user: raw item ids, re-rank scores and Hamming distances, best first.

    ``user`` is the raw user id (None for users given by their items). ``hamming`` is -1 for items that
    did not come from Hamming recall (the popularity fallback, where ``scores`` are interaction counts).
    """

    user: str | None
    items: list[str]
    scores: list[float]
    hamming: list[int]


@dataclass
class NewUsers:
    """Users the model never saw, encoded from their items (:meth:`Retriever.encode_new`).

    ``codes`` uint8 [n, bits/8] and ``vectors`` float32 [n, dim]; per user, ``items`` holds the known
    internal item ids used (sorted, unique) and ``unknown`` the number of ids the bundle does not know. A
    user with no known item has an empty ``items`` (its codes carry no evidence: callers check).
    """

    codes: np.ndarray
    vectors: np.ndarray
    items: list[np.ndarray]
    unknown: list[int]

    def subset(self, rows: Sequence[int]) -> NewUsers:
        """The users at positions ``rows``, in that order."""
        r = list(rows)
        return NewUsers(
            self.codes[r], self.vectors[r], [self.items[i] for i in r], [self.unknown[i] for i in r]
        )


class Retriever:
    """Answers top-k queries from one bundle version. See the module docstring for the contract."""

    def __init__(self, bundle: Bundle, *, threads: int = 1, observe: Observer | None = None) -> None:
        """Wrap a loaded bundle.

        Args:
            threads: FAISS threads used by every search call (>= 1).
            observe: optional ``observe(stage, seconds)`` called after each ``recall`` and ``rerank``
                of :meth:`search` (the service's stage metrics).
        """
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.bundle = bundle
        self.version = bundle.version
        self.threads = int(threads)
        self.observe = observe
        self.n_items = bundle.n_items
        self.bits = bundle.bits
        # views of the bundle's arrays, not copies: the memory-mapped pages stay shared between processes
        self._seen_indptr = bundle.seen.indptr
        self._seen_indices = bundle.seen.indices
        # an exact (flat) index is scanned by our kernel over FAISS's own code array; others by FAISS
        self._flat_codes = scan.flat_codes(bundle.index) if bundle.index_type == "flat" else None
        pop = np.asarray(bundle.popularity, dtype=np.int64)
        # popularity order (count desc, id asc), computed once so that popular() is a cheap walk
        self._pop_order = np.lexsort((np.arange(len(pop)), -pop))

    # -- construction from arrays (evaluation, tests) ------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        user_z: np.ndarray,
        item_z: np.ndarray,
        seen: sp.spmatrix | None = None,
        *,
        user_vectors: np.ndarray | None = None,
        item_vectors: np.ndarray | None = None,
        user_ids: Sequence[str] | None = None,
        item_ids: Sequence[str] | None = None,
        popularity: np.ndarray | None = None,
        foldin: FoldIn | None = None,
        index_type: str = "flat",
        index_params: dict[str, Any] | None = None,
        threads: int = 1,
    ) -> Retriever:
        """An in-memory Retriever (no files): codes are ``sign(z)``; vectors default to ``z``.

        ``seen`` is a [n_users, n_items] sparse matrix of known interactions (excluded when
        ``exclude_seen``); popularity defaults to its column counts; ids default to ``"0".."n-1"``.
        """
        user_z = np.ascontiguousarray(user_z, dtype=np.float32)
        item_z = np.ascontiguousarray(item_z, dtype=np.float32)
        if user_z.ndim != 2 or item_z.ndim != 2 or user_z.shape[1] != item_z.shape[1]:
            raise ValueError(f"user_z {user_z.shape} and item_z {item_z.shape} must be 2-d, same width")
        uv = user_z if user_vectors is None else np.ascontiguousarray(user_vectors, dtype=np.float32)
        iv = item_z if item_vectors is None else np.ascontiguousarray(item_vectors, dtype=np.float32)
        if uv.shape[0] != len(user_z) or iv.shape[0] != len(item_z) or uv.shape[1] != iv.shape[1]:
            raise ValueError(f"user_vectors {uv.shape} and item_vectors {iv.shape} do not match the codes")
        n_users, n_items = len(user_z), len(item_z)
        bits = check_bits(user_z.shape[1])
        seen_csr = (
            sp.csr_matrix((n_users, n_items), dtype=np.float32) if seen is None else sp.csr_matrix(seen)
        )
        if seen_csr.shape != (n_users, n_items):
            raise ValueError(f"seen has shape {seen_csr.shape}, expected {(n_users, n_items)}")
        seen_csr.eliminate_zeros()
        seen_csr.sum_duplicates()
        seen_csr.sort_indices()
        pop = np.diff(seen_csr.tocsc().indptr) if popularity is None else popularity
        item_codes = pack(item_z)
        index, params = binary_index.build_index(item_codes, index_type, index_params)
        digest = hashlib.sha256(user_z.tobytes() + item_z.tobytes()).hexdigest()[:8]
        bundle = Bundle(
            path=Path("<memory>"),
            version=f"memory-{digest}",
            manifest={"version": f"memory-{digest}", "index": {"type": index_type, "params": params}},
            users=IdMap(list(user_ids) if user_ids is not None else [str(i) for i in range(n_users)]),
            items=IdMap(list(item_ids) if item_ids is not None else [str(i) for i in range(n_items)]),
            bits=bits,
            dim=int(uv.shape[1]),
            user_codes=pack(user_z),
            item_codes=item_codes,
            user_vectors=uv,
            item_vectors=iv,
            seen=seen_csr,
            popularity=np.asarray(pop, dtype=np.int64),
            index=index,
            foldin=foldin,
        )
        return cls(bundle, threads=threads)

    # -- lookups ---------------------------------------------------------------------------------------------
    def has_user(self, raw_id: str) -> bool:
        """Whether the bundle knows this raw user id."""
        return raw_id in self.bundle.users

    def seen_items(self, user: int) -> np.ndarray:
        """Internal ids (sorted, int64) of the known items of one internal user id."""
        return self._seen_indices[self._seen_indptr[user] : self._seen_indptr[user + 1]].astype(np.int64)

    def user_rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes uint8 [n, bits/8], vectors float32 [n, dim]) of internal user ids."""
        users = np.asarray(users, dtype=np.int64)
        return self.bundle.user_codes.take(users, axis=0), self.bundle.user_vectors.take(users, axis=0)

    def item_index(self, raw_ids: Collection[str]) -> tuple[np.ndarray, int]:
        """(sorted unique internal ids of the known raw item ids, number of unknown ids)."""
        idx = self.bundle.items.to_internal(list(raw_ids))
        return np.unique(idx[idx >= 0]), int((idx < 0).sum())

    # -- stage 1: recall -----------------------------------------------------------------------------------------
    def recall(
        self,
        codes: np.ndarray,
        candidates: int,
        exclude: Sequence[np.ndarray] | None = None,
        allow: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hamming top-``candidates`` of packed query codes (uint8 [n, bits/8]): (dist int32, idx int64) [n, C'].

        ``exclude``: per row, sorted internal ids never returned; ``allow``: sorted internal ids, the only
        ones returned (all rows). ``C' = min(candidates, n_items)``; rows are sorted by (distance, item id);
        slots left empty hold idx -1 and distance ``bits + 1``. See the module docstring.
        """
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        n, c = len(codes), min(int(candidates), self.n_items)
        if exclude is not None and len(exclude) != n:
            raise ValueError(f"exclude has {len(exclude)} rows, the query {n}")
        if self._flat_codes is not None:  # exact: our scan, filters applied inside it
            mask = None
            if allow is not None:
                mask = np.zeros(self.n_items, dtype=bool)
                mask[np.asarray(allow, dtype=np.int64)] = True
            return scan.topc(self._flat_codes, codes, c, scan.exclusions_csr(exclude, n), mask, self.threads)
        # approximate (IVF, HNSW): FAISS's search, asked for more than C and filtered here
        dist = np.full((n, c), self.bits + 1, np.int32)
        idx = np.full((n, c), -1, np.int64)
        if n == 0 or c == 0:
            return dist, idx
        faiss.omp_set_num_threads(self.threads)  # per calling thread: see the module docstring
        most = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        width = c + most
        if allow is not None:  # the share of allowed items decides how far to look at first
            width = max(width, int(np.ceil(c * self.n_items / max(len(allow), 1))))
        pending = np.arange(n)
        while len(pending):
            width = min(width, self.n_items)
            d, i = binary_index.search(self.bundle.index, codes[pending], width)
            keep = i >= 0
            if exclude is not None:
                keep &= ~_members(i, [exclude[int(r)] for r in pending], self.n_items)
            if allow is not None:
                keep &= _in_sorted(i, allow)
            found = keep.sum(axis=1)
            # a row is done when it has C eligible items, or the index has nothing more to give it
            done = (found >= c) | (width >= self.n_items) | (i[:, -1] < 0)
            rows = np.flatnonzero(done)
            dist[pending[rows]], idx[pending[rows]] = _first_kept(d[rows], i[rows], keep[rows], c, self.bits)
            pending = pending[~done]
            width *= 4
        return dist, idx

    # -- stage 2: re-rank ----------------------------------------------------------------------------------------
    def rerank(self, vectors: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of candidates (int64 [n, C]; -1 = empty, only at the end of a row) by ``<v_u, v_i>``.

        Returns (scores float32, item ids int64), each [n, min(k, C)], score descending then item id
        ascending; empty slots (score -inf, id -1) last. FAISS scores the candidates in place
        (``knn_inner_products_by_idx``: no gather of their vectors) and keeps the top k + 1; equal scores
        come back in no set order, so rows are re-sorted by (score, id), and a row whose k-th score ties
        the next one (a tied item may have been left out) is scored in full and cut exactly.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        cand = np.ascontiguousarray(cand, dtype=np.int64)
        c = cand.shape[1]
        k = min(int(k), c)
        scores, ids = self._inner_topk(vectors, cand, min(k + 1, c))
        # strictly decreasing (FAISS's order, no tie): done (count_nonzero: cheaper than a bool reduction)
        if not np.count_nonzero(scores[:, :-1] <= scores[:, 1:]):
            return scores[:, :k], ids[:, :k]
        scores, ids = _by_score_then_id(scores, ids)
        if k < c:
            for r in np.flatnonzero((scores[:, k - 1] == scores[:, k]) & (ids[:, k] >= 0)):
                scores[r], ids[r] = (
                    a[0, : k + 1]
                    for a in _by_score_then_id(*self._inner_topk(vectors[r : r + 1], cand[r : r + 1], c))
                )
        return scores[:, :k], ids[:, :k]

    def _inner_topk(self, vectors: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's top-``k`` of each row's candidates by inner product (ties in no set order; -inf, -1 empty)."""
        n, c = cand.shape
        scores = np.empty((n, k), np.float32)
        ids = np.empty((n, k), np.int64)
        if n and k:
            faiss.omp_set_num_threads(self.threads)
            iv = self.bundle.item_vectors
            # ld_ids is passed explicitly: faiss 1.15's default (-1) does not mean "nsubset" here
            faiss.knn_inner_products_by_idx(  # type: ignore[attr-defined]
                faiss.swig_ptr(vectors), faiss.swig_ptr(iv), faiss.swig_ptr(cand),
                iv.shape[1], n, len(iv), c, k, faiss.swig_ptr(scores), faiss.swig_ptr(ids), c,
            )  # fmt: skip
            if np.count_nonzero(ids[:, -1] < 0):  # empty slots (FAISS puts them last)
                scores[ids < 0] = -np.inf
        return scores, ids

    # -- both stages ---------------------------------------------------------------------------------------------
    def search(
        self,
        codes: np.ndarray,
        vectors: np.ndarray,
        k: int,
        candidates: int,
        exclude: Sequence[np.ndarray] | None = None,
        allow: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Recall then re-rank: (ids int64, scores float32, hamming int32), each [n, min(k, C')].

        ``candidates`` is raised to ``k``. Empty slots (fewer eligible items than k) hold id -1, score
        -inf and distance ``bits + 1``, at the end of their row.
        """
        k, candidates = _check_k(k, candidates)
        t0 = time.perf_counter()
        _dist, cand = self.recall(codes, max(candidates, k), exclude, allow)
        t1 = time.perf_counter()
        scores, top = self.rerank(vectors, cand, k)
        if self.observe is not None:
            self.observe("recall", t1 - t0)
            self.observe("rerank", time.perf_counter() - t1)
        ham = distances(np.asarray(codes, np.uint8)[:, None, :], self.bundle.item_codes[top])
        if top.size and np.count_nonzero(top[:, -1] < 0):  # empty slots (id -1, last in their rows)
            ham[top < 0] = self.bits + 1
        return top, scores, ham

    def exact(
        self, vectors: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The reference: every item scored by ``<v_u, v_i>`` (FAISS exact inner-product search).

        Returns (scores float32, ids int64) [n, min(k, n_items)], score descending then item id ascending,
        the row's ``exclude`` ids left out (empty slots: -inf, -1).
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        k = min(int(k), self.n_items)
        most = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        width = min(self.n_items, k + most)
        faiss.omp_set_num_threads(self.threads)
        d, i = faiss.knn(
            vectors, np.ascontiguousarray(self.bundle.item_vectors), width, faiss.METRIC_INNER_PRODUCT
        )
        last = d[:, -1].copy()  # the lowest score FAISS returned, before filtering
        keep = i >= 0
        if exclude is not None:
            keep &= ~_members(i, exclude, self.n_items)
        d = np.where(keep, d, -np.inf).astype(np.float32)
        i = np.where(keep, i, -1)
        # FAISS leaves the order of equal scores open: order by (score desc, id asc), empty slots last
        order = np.lexsort((np.where(keep, i, np.iinfo(np.int64).max), -d), axis=1)[:, :k]
        d, i = np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)
        # a row whose k-th score ties the lowest one fetched may have tied items FAISS did not return:
        # score all items for those rows (rare with float vectors) so the smaller ids win, as promised
        for r in np.flatnonzero((width < self.n_items) & (d[:, -1] == last)):
            scores = np.asarray(self.bundle.item_vectors, dtype=np.float32) @ vectors[r]
            if exclude is not None:
                scores[np.asarray(exclude[int(r)], dtype=np.int64)] = -np.inf
            top = np.lexsort((np.arange(self.n_items), -scores))[:k]
            d[r], i[r] = scores[top], np.where(np.isfinite(scores[top]), top, -1)
        return d, i

    # -- raw ids in, raw ids out -----------------------------------------------------------------------------
    def recommend(
        self,
        users: Sequence[str],
        k: int,
        candidates: int,
        *,
        exclude_seen: bool = True,
        exclude_items: np.ndarray | None = None,
        include_items: np.ndarray | None = None,
    ) -> list[Recommendation | None]:
        """Top-``k`` items for known users (raw ids), one entry per user in order: None for an unknown user.

        ``exclude_items`` / ``include_items``: sorted internal item ids (see :meth:`item_index`) removed
        from / required of every answer. Raises ValueError for k < 1 or candidates < 1.
        """
        if isinstance(users, str):
            users = [users]
        raw = [str(x) for x in users]
        found = [(r, ui) for r, ui in enumerate(map(self.bundle.users.get, raw)) if ui is not None]
        out: list[Recommendation | None] = [None] * len(raw)
        rows, u = [r for r, _ in found], [ui for _, ui in found]
        codes, vectors = self.user_rows(np.array(u, dtype=np.int64))
        excl = [self.seen_items(x) for x in u] if exclude_seen else None
        excl = _with_extra(excl, exclude_items, len(u))
        recs = self._answers(codes, vectors, k, candidates, excl, include_items)
        for r, rec in zip(rows, recs, strict=True):
            rec.user = raw[r]  # the raw id as given: the look-up matched it exactly
            out[r] = rec
        return out

    def recommend_new(
        self,
        new: NewUsers,
        k: int,
        candidates: int,
        *,
        exclude_given: bool = True,
        exclude_items: np.ndarray | None = None,
        include_items: np.ndarray | None = None,
    ) -> list[Recommendation]:
        """Top-``k`` items for users encoded by :meth:`encode_new` (their given items left out when
        ``exclude_given``); ``user`` is None in the results."""
        excl = list(new.items) if exclude_given else None
        excl = _with_extra(excl, exclude_items, len(new.codes))
        return self._answers(new.codes, new.vectors, k, candidates, excl, include_items)

    def encode_new(self, item_lists: Sequence[Sequence[str]]) -> NewUsers:
        """Codes and vectors of users the model never saw, from their raw item ids (unknown ids ignored).

        Raises FoldInUnavailable when the bundle has no fold-in arrays (see :class:`FoldIn`).
        """
        fi = self.bundle.foldin
        if fi is None:
            raise FoldInUnavailable(
                f"bundle {self.version} has no fold-in arrays (the run's embeddings.npz did not include them)"
            )
        pooled = np.zeros((len(item_lists), fi.item.shape[1]), dtype=np.float32)
        used: list[np.ndarray] = []
        unknown: list[int] = []
        for r, lst in enumerate(item_lists):
            if isinstance(lst, str):
                raise ValueError(f"item list {r} is a string, expected a list of item ids")
            idx, n_unknown = self.item_index([str(x) for x in lst])
            used.append(idx)
            unknown.append(n_unknown)
            if idx.size:
                pooled[r] = np.take(fi.item, idx, axis=0).sum(axis=0) / float(idx.size) ** fi.power
        code_z = np.tanh(pooled @ np.asarray(fi.code_weight).T + fi.code_bias)
        vectors = np.tanh(pooled @ np.asarray(fi.vector_weight).T + fi.vector_bias).astype(np.float32)
        return NewUsers(codes=pack(code_z), vectors=vectors, items=used, unknown=unknown)

    def popular(
        self, k: int, *, exclude: np.ndarray | None = None, allow: np.ndarray | None = None
    ) -> Recommendation:
        """The ``k`` most popular items (known interactions, ties by smaller item id): the fallback.

        ``exclude`` / ``allow`` are internal item ids to leave out / to keep only. Scores are the
        interaction counts; hamming is -1.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        keep = np.ones(self.n_items, dtype=bool)
        if allow is not None:
            keep[:] = False
            keep[np.asarray(allow, dtype=np.int64)] = True
        if exclude is not None and len(exclude):
            keep[np.asarray(exclude, dtype=np.int64)] = False
        order = self._pop_order[keep[self._pop_order]][:k]
        return Recommendation(
            user=None,
            items=self.bundle.items.to_raw(order),
            scores=[float(x) for x in np.asarray(self.bundle.popularity)[order]],
            hamming=[-1] * len(order),
        )

    def _answers(
        self,
        codes: np.ndarray,
        vectors: np.ndarray,
        k: int,
        candidates: int,
        exclude: list[np.ndarray] | None,
        allow: np.ndarray | None,
    ) -> list[Recommendation]:
        top, scores, ham = self.search(codes, vectors, k, candidates, exclude, allow)
        # empty slots (id -1) come last in every row, so each answer is a prefix of its row: convert the
        # arrays to Python lists once (tolist: the element loop in C) and slice them per row
        top_rows = top.tolist()
        items = self.bundle.items.raw[top].tolist()  # an empty slot's -1 reads the last item: cut off below
        score_rows, ham_rows = scores.tolist(), ham.tolist()
        out = []
        for r, ids in enumerate(top_rows):
            m = ids.index(-1) if ids and ids[-1] < 0 else len(ids)
            out.append(
                Recommendation(
                    user=None,
                    items=[str(x) for x in items[r][:m]],
                    scores=score_rows[r][:m],
                    hamming=ham_rows[r][:m],
                )
            )
        return out


_NO_ID = np.iinfo(np.int64).max  # sorts empty slots (id -1) after every item among equal scores


def _check_k(k: int, candidates: int) -> tuple[int, int]:
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if int(candidates) < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    return int(k), int(candidates)


def _with_extra(
    exclude: list[np.ndarray] | None, extra: np.ndarray | None, n: int
) -> list[np.ndarray] | None:
    """Per-row exclusions plus ``extra`` ids excluded from every row (all sorted, unique)."""
    if extra is None or not len(extra):
        return exclude
    extra = np.asarray(extra, dtype=np.int64)
    return [extra] * n if exclude is None else [np.union1d(e, extra) for e in exclude]


def _members(idx: np.ndarray, sets: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """bool [rows, w]: ``idx[r, j]`` is in ``sets[r]`` (each sorted); one searchsorted for all rows."""
    rows = idx.shape[0]
    lens = np.fromiter((len(e) for e in sets), dtype=np.int64, count=rows)
    if lens.sum() == 0:
        return np.zeros(idx.shape, dtype=bool)
    base = np.arange(rows, dtype=np.int64) * (n_items + 1)
    keys = np.concatenate([np.asarray(e, dtype=np.int64) for e in sets]) + np.repeat(base, lens)
    keys.sort()  # already sorted row by row; sort() is a cheap guarantee
    query = np.where(idx < 0, n_items, idx) + base[:, None]  # -1 maps to a key no item uses
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return keys[pos] == query


def _in_sorted(idx: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """bool of ``idx``'s shape: the id is in the sorted array ``allowed``."""
    if not len(allowed):
        return np.zeros(idx.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(allowed, idx), len(allowed) - 1)
    return allowed[pos] == idx


def _first_kept(
    dist: np.ndarray, idx: np.ndarray, keep: np.ndarray, width: int, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``width`` kept entries of each row, in order; padded with (bits + 1, -1)."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    ok = np.take_along_axis(keep, order, axis=1)
    d = np.where(ok, np.take_along_axis(dist, order, axis=1), bits + 1).astype(np.int32)
    i = np.where(ok, np.take_along_axis(idx, order, axis=1), -1)
    if d.shape[1] < width:  # fewer items than asked for in total (an approximate index's short answer)
        pad = width - d.shape[1]
        d = np.pad(d, ((0, 0), (0, pad)), constant_values=bits + 1)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return d, i


def _by_score_then_id(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by (score desc, id asc), empty slots (id -1) last."""
    order = np.lexsort((np.where(ids < 0, _NO_ID, ids), -scores), axis=1)
    rows = np.arange(len(ids))[:, None]
    return scores[rows, order], ids[rows, order]
