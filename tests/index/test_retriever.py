"""The Retriever against a brute-force numpy reference (Hamming top-C, then exact re-rank), on random data."""

from __future__ import annotations

import threading
from collections.abc import Collection

import numpy as np
import pytest
import scipy.sparse as sp
from index_helpers import random_z

from hashrec.index import FoldIn, FoldInUnavailable, Retriever, fastscan
from hashrec.index.codes import hamming, pack
from hashrec.index.quality import hamming_recall
from hashrec.index.search import hamming_topc, rerank

N_USERS, N_ITEMS = 60, 500


def reference(
    uz: np.ndarray,
    iz: np.ndarray,
    excluded: Collection[int],
    k: int,
    c: int,
    allow: Collection[int] | None = None,
) -> tuple[list[int], list[float], list[int]]:
    """Brute force: exact Hamming distances of all items, drop excluded/not allowed, top-C by (d, id),
    then top-k by (score desc, id asc)."""
    d = hamming(pack(uz[None, :]), pack(iz))[0].astype(np.int64)
    ok = np.ones(len(iz), bool)
    ok[list(excluded)] = False
    if allow is not None:
        mask = np.zeros(len(iz), bool)
        mask[list(allow)] = True
        ok &= mask
    ids = np.flatnonzero(ok)
    cand = ids[np.argsort(d[ids] * len(iz) + ids, kind="stable")][: max(c, k)]
    # row by row (not a BLAS gemv, whose blocking can give equal rows different last bits)
    scores = np.einsum("cd,d->c", iz[cand], uz).astype(np.float32)
    order = np.lexsort((cand, -scores))[:k]
    return [int(x) for x in cand[order]], [float(s) for s in scores[order]], [int(x) for x in d[cand[order]]]


@pytest.fixture(params=["faiss", "fast"])
def scan(request: pytest.FixtureRequest) -> str:
    """Both exact kernels of a flat bundle: FAISS's IndexBinaryFlat and the compiled scan."""
    if request.param == "fast" and not fastscan.available():
        pytest.skip("hashrec.index._hamming is not built")
    return str(request.param)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    # clustered vectors: many equal codes and equal Hamming distances, so tie-breaking is exercised
    uz = random_z(N_USERS, 16, 1, clusters=6)
    iz = random_z(N_ITEMS, 16, 2, clusters=6)
    iz[N_ITEMS // 2 :] = iz[: N_ITEMS // 2][::-1]  # duplicated items: equal re-rank scores tie by item id
    seen = sp.random(N_USERS, N_ITEMS, density=0.08, random_state=3, format="csr")
    return uz, iz, seen


def check(rec: object, ref: tuple[list[int], list[float], list[int]]) -> None:
    assert rec is not None
    items, scores, ham = ref
    assert [int(x) for x in rec.items] == items  # type: ignore[attr-defined]
    np.testing.assert_allclose(rec.scores, scores, rtol=1e-5, atol=1e-6)  # type: ignore[attr-defined]
    assert rec.hamming == ham  # type: ignore[attr-defined]


@pytest.mark.parametrize("k,c", [(1, 1), (10, 10), (10, 40), (20, 200), (30, 5)])
def test_recommend_equals_reference_with_seen_and_deny(data: tuple, k: int, c: int, scan: str) -> None:
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen, scan=scan)
    deny = {"3", "17", "250", "not-an-item"}
    recs = r.recommend([str(u) for u in range(N_USERS)], k, c, deny=deny)
    for u in range(N_USERS):
        excluded = set(seen[u].indices) | {3, 17, 250}
        check(recs[u], reference(uz[u], iz, excluded, k, c))
        # one user at a time takes the single-row paths of exclusion and compaction: same answer
        assert r.recommend([str(u)], k, c, deny=deny)[0] == recs[u]


@pytest.mark.parametrize("k,c", [(1, 1), (10, 40), (30, 5)])
def test_recommend_batch_without_filters_equals_reference(data: tuple, k: int, c: int, scan: str) -> None:
    """A batch without allow/deny (one compiled call for all users on flat bundles): each answer equals
    the reference and the one-user answer; unknown users are None."""
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen, scan=scan)
    recs = r.recommend([str(u) for u in range(N_USERS)] + ["nobody"], k, c)
    assert recs[-1] is None
    for u in range(N_USERS):
        check(recs[u], reference(uz[u], iz, set(seen[u].indices), k, c))
        assert r.recommend([str(u)], k, c)[0] == recs[u]


def test_recommend_without_exclusion_and_with_allow(data: tuple, scan: str) -> None:
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen, scan=scan)
    recs = r.recommend([str(u) for u in range(N_USERS)], 10, 30, exclude_seen=False)
    for u in range(N_USERS):
        check(recs[u], reference(uz[u], iz, set(), 10, 30))
    allow = {str(i) for i in range(0, N_ITEMS, 3)} | {"unknown"}
    recs = r.recommend([str(u) for u in range(N_USERS)], 10, 30, allow=allow, deny={"0", "3"})
    for u in range(N_USERS):
        excluded = set(seen[u].indices) | {0, 3}
        check(recs[u], reference(uz[u], iz, excluded, 10, 30, allow=range(0, N_ITEMS, 3)))


def test_stages_match_the_search_module(data: tuple, scan: str) -> None:
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen, scan=scan)
    users = np.arange(N_USERS)
    for c in (1, 50, N_ITEMS):
        dist, idx = r.recall_stage(users, c)
        sd, si = hamming_topc(np.sign(uz + (uz == 0)), np.sign(iz + (iz == 0)), c, exclude=seen)
        np.testing.assert_array_equal(idx, si)
        np.testing.assert_array_equal(dist[idx >= 0], sd[si >= 0])
        assert (dist[idx < 0] == 17).all()  # empty slots: K + 1
        scores, top = r.rerank_stage(uz, idx, 10)
        s2, t2 = rerank(uz, iz, idx, 10)
        np.testing.assert_array_equal(top, t2)
        np.testing.assert_allclose(scores, s2, rtol=1e-5, atol=1e-6)
    # vectors instead of user ids: no seen-exclusion, per-row exclusion honoured
    dist, idx = r.recall_stage(uz[:5], 20, exclude=[np.array([int(x)]) for x in range(5)])
    for row in range(5):
        assert row not in idx[row]


def test_k_larger_than_items_left_returns_what_is_left(scan: str) -> None:
    uz, iz = random_z(3, 8, 5), random_z(30, 8, 6)
    seen = sp.lil_matrix((3, 30))
    seen[0, :25] = 1  # user 0 has seen 25 of 30 items
    r = Retriever.from_arrays(uz, iz, seen.tocsr(), scan=scan)
    recs = r.recommend(["0", "1"], 50, 10)
    assert sorted(int(x) for x in recs[0].items) == [25, 26, 27, 28, 29]  # type: ignore[union-attr]
    assert len(recs[1].items) == 30  # type: ignore[union-attr]
    everything = {str(i) for i in range(30)}
    assert r.recommend(["1"], 5, 10, deny=everything)[0].items == []  # type: ignore[union-attr]
    assert r.recommend(["1"], 5, 10, allow=set())[0].items == []  # type: ignore[union-attr]
    dist, idx = r.recall_stage(np.array([0]), 10)
    assert (idx[0, 5:] == -1).all() and (dist[0, 5:] == 9).all()


def test_unknown_users_single_string_and_bad_k(data: tuple) -> None:
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen, user_ids=[f"u{i}" for i in range(N_USERS)])
    out = r.recommend(["nobody", "u3"], 5, 20)
    assert out[0] is None and out[1] is not None and out[1].user == "u3"
    one = r.recommend("u3", 5, 20)  # a bare string is one user, not a list of characters
    assert len(one) == 1 and one[0] == out[1]
    assert r.has_user("u3") and not r.has_user("3")
    with pytest.raises(ValueError, match="k must be >= 1"):
        r.recommend(["u3"], 0, 20)
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        r.recommend(["u3"], 5, 0)


def test_fold_in_and_recommend_vectors(data: tuple) -> None:
    uz, iz, seen = data
    rng = np.random.default_rng(9)
    fi = FoldIn(
        rng.standard_normal((N_ITEMS, 6)).astype(np.float32),
        rng.standard_normal((16, 6)).astype(np.float32),
        rng.standard_normal(16).astype(np.float32),
        0.5,
    )
    r = Retriever.from_arrays(uz, iz, seen, foldin=fi)
    res = r.fold_in_detailed([["1", "2", "2", "zzz"], []])
    expected = np.tanh(fi.weight @ ((fi.item[1] + fi.item[2]) / 2**0.5) + fi.bias)
    np.testing.assert_allclose(res.z[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.z[1], np.tanh(fi.bias), rtol=1e-6)
    assert res.unknown == [1, 0] and res.items[0].tolist() == [1, 2] and res.items[1].size == 0
    recs = r.recommend_vectors(res.z[:1], 10, 50, exclude=[res.items[0]])
    check(recs[0], reference(res.z[0], iz, {1, 2}, 10, 50))
    assert recs[0].user is None
    with pytest.raises(FoldInUnavailable, match="no fold-in arrays"):
        Retriever.from_arrays(uz, iz).fold_in([["1"]])


def test_popular_fallback(data: tuple) -> None:
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen)
    pop = np.asarray((seen != 0).sum(axis=0)).ravel()
    order = np.lexsort((np.arange(N_ITEMS), -pop))
    rec = r.popular(10)
    assert [int(x) for x in rec.items] == order[:10].tolist()
    assert rec.scores == [float(pop[i]) for i in order[:10]] and rec.hamming == [-1] * 10
    rec = r.popular(5, exclude=order[:2], deny={str(order[2])})
    assert [int(x) for x in rec.items] == order[3:8].tolist()
    assert r.popular(5, allow={"7"}).items == ["7"]


def test_concurrent_threads_get_the_same_answers(data: tuple, scan: str) -> None:
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen, threads=1, scan=scan)
    users = [str(u) for u in range(N_USERS)]
    expected = r.recommend(users, 10, 50)
    failures: list[str] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(20):
            pick = rng.choice(N_USERS, size=7, replace=False)
            got = r.recommend([users[i] for i in pick], 10, 50)
            if got != [expected[i] for i in pick]:
                failures.append(f"thread {seed}")

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_index_recall(index_type: str) -> None:
    """An approximate index scanning everything equals exact; a narrow one keeps a stated recall."""
    uz, iz = random_z(200, 32, 11, clusters=40), random_z(5000, 32, 12, clusters=40)
    exact = Retriever.from_arrays(uz, iz)
    ed, _ = exact.recall_stage(uz, 100, exclude_seen=False)
    full = {"ivf": {"nlist": 50, "nprobe": 50}, "hnsw": {"efSearch": 2000}}[index_type]
    narrow = {"ivf": {"nlist": 50, "nprobe": 5}, "hnsw": {"efSearch": 100}}[index_type]
    r = Retriever.from_arrays(uz, iz, index_type=index_type, index_params=full)
    d, i = r.recall_stage(uz, 100, exclude_seen=False)
    assert hamming_recall(d, i, ed) == pytest.approx(1.0, abs=0.005)
    if index_type == "ivf":  # IVF with every list scanned is exact, ties included
        np.testing.assert_array_equal(d, ed)
    r = Retriever.from_arrays(uz, iz, index_type=index_type, index_params=narrow)
    d, i = r.recall_stage(uz, 100, exclude_seen=False)
    rec = hamming_recall(d, i, ed)
    assert 0.5 < rec <= 1.0
    # and the recall helper itself is not trivially 1: shifting distances up breaks it
    assert hamming_recall(ed + 1, np.zeros_like(ed), ed) < 1.0
