"""The Retriever against a brute-force numpy reference (Hamming top-C, then exact re-rank), on random data."""

from __future__ import annotations

import threading
from collections.abc import Collection

import numpy as np
import pytest
import scipy.sparse as sp
from support import random_z

from hashrec.data.codes import distances, pack
from hashrec.index.binary_index import recall_against_exact
from hashrec.index.bundle import FoldIn
from hashrec.index.retriever import FoldInUnavailable, Retriever

N_USERS, N_ITEMS = 60, 500


def reference(
    code_z: np.ndarray,
    vec: np.ndarray,
    iz: np.ndarray,
    iv: np.ndarray,
    excluded: Collection[int],
    k: int,
    c: int,
    allow: Collection[int] | None = None,
) -> tuple[list[int], list[float], list[int]]:
    """Brute force: exact Hamming distances of all items, drop excluded/not allowed, top-C by (d, id),
    then top-k by (score desc, id asc)."""
    d = distances(pack(code_z[None, :]), pack(iz)).astype(np.int64)
    ok = np.ones(len(iz), bool)
    ok[list(excluded)] = False
    if allow is not None:
        mask = np.zeros(len(iz), bool)
        mask[list(allow)] = True
        ok &= mask
    ids = np.flatnonzero(ok)
    cand = ids[np.argsort(d[ids] * len(iz) + ids, kind="stable")][: max(c, k)]
    # row by row (not a BLAS gemv, whose blocking can give equal rows different last bits)
    scores = np.einsum("cd,d->c", iv[cand], vec).astype(np.float32)
    order = np.lexsort((cand, -scores))[:k]
    return [int(x) for x in cand[order]], [float(s) for s in scores[order]], [int(x) for x in d[cand[order]]]


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
def test_recommend_equals_reference_with_seen_and_excluded_items(data: tuple, k: int, c: int) -> None:
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen)
    deny, unknown = r.item_index(["3", "17", "250", "not-an-item"])
    assert deny.tolist() == [3, 17, 250] and unknown == 1
    recs = r.recommend([str(u) for u in range(N_USERS)], k, c, exclude_items=deny)
    for u in range(N_USERS):
        excluded = set(seen[u].indices) | {3, 17, 250}
        check(recs[u], reference(uz[u], uz[u], iz, iz, excluded, k, c))
        # one user at a time is a batch of one: the same answer
        assert r.recommend([str(u)], k, c, exclude_items=deny)[0] == recs[u]


def test_separate_rerank_vectors_decide_the_order(data: tuple) -> None:
    """Codes and re-rank vectors are independent arrays (widths may differ): recall uses the codes,
    re-rank the vectors."""
    uz, iz, seen = data
    uv, iv = random_z(N_USERS, 24, 7), random_z(N_ITEMS, 24, 8)
    r = Retriever.from_arrays(uz, iz, seen, user_vectors=uv, item_vectors=iv)
    recs = r.recommend([str(u) for u in range(N_USERS)], 10, 40)
    for u in range(N_USERS):
        check(recs[u], reference(uz[u], uv[u], iz, iv, set(seen[u].indices), 10, 40))


def test_recommend_without_exclusion_and_with_an_allow_list(data: tuple) -> None:
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen)
    recs = r.recommend([str(u) for u in range(N_USERS)], 10, 30, exclude_seen=False)
    for u in range(N_USERS):
        check(recs[u], reference(uz[u], uz[u], iz, iz, set(), 10, 30))
    allow, _ = r.item_index([str(i) for i in range(0, N_ITEMS, 3)])
    recs = r.recommend(
        [str(u) for u in range(N_USERS)], 10, 30, include_items=allow, exclude_items=np.array([0, 3])
    )
    for u in range(N_USERS):
        excluded = set(seen[u].indices) | {0, 3}
        check(recs[u], reference(uz[u], uz[u], iz, iz, excluded, 10, 30, allow=range(0, N_ITEMS, 3)))


def test_a_short_allow_list_widens_the_recall_until_k_items_come_back(data: tuple) -> None:
    """Five allowed items out of 500: the recall widens C until it finds them, wherever they rank."""
    uz, iz, _seen = data
    r = Retriever.from_arrays(uz, iz)
    allow = np.array([5, 123, 256, 400, 499])
    for u in range(N_USERS):
        (rec,) = r.recommend([str(u)], 5, 5, include_items=allow)
        assert rec is not None and sorted(int(x) for x in rec.items) == allow.tolist()
        check(rec, reference(uz[u], uz[u], iz, iz, set(), 5, 5, allow=allow.tolist()))


def test_stages_equal_the_reference_and_search_is_their_composition(data: tuple) -> None:
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen)
    users = np.arange(N_USERS)
    codes, vectors = r.user_rows(users)
    excl = [r.seen_items(u) for u in users]
    for c in (1, 50, N_ITEMS):
        dist, idx = r.recall(codes, c, excl)
        for u in range(N_USERS):
            d = distances(codes[u], pack(iz)).astype(np.int64)
            ok = np.setdiff1d(np.arange(N_ITEMS), excl[u])
            want = ok[np.argsort(d[ok] * N_ITEMS + ok, kind="stable")][:c]
            got = idx[u][idx[u] >= 0]
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(dist[u][: len(got)], d[want])
        assert (dist[idx < 0] == 17).all()  # empty slots: bits + 1
        scores, top = r.rerank(vectors, idx, 10)
        for u in range(N_USERS):  # the chosen ids are candidates, by (score desc, id asc), scores exact
            assert set(top[u][top[u] >= 0]) <= set(idx[u][idx[u] >= 0])
            np.testing.assert_allclose(
                scores[u][top[u] >= 0], iz[top[u][top[u] >= 0]] @ vectors[u], rtol=1e-5
            )
        dist, idx = r.recall(codes, max(c, 10), excl)  # search raises C to k
        scores, top = r.rerank(vectors, idx, 10)
        ids, s2, ham = r.search(codes, vectors, 10, c, excl)
        np.testing.assert_array_equal(ids, top)
        np.testing.assert_array_equal(s2, scores)
        pos = np.argmax(idx[:, None, :] == top[:, :, None], axis=2)  # each chosen id's place in the recall
        np.testing.assert_array_equal(ham, np.take_along_axis(dist, pos, axis=1))


def test_exact_is_the_reference_of_every_item(data: tuple) -> None:
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen)
    users = np.arange(N_USERS)
    _codes, vectors = r.user_rows(users)
    scores, top = r.exact(vectors, 15, [r.seen_items(u) for u in users])
    for u in range(N_USERS):
        items, ref_scores, _ham = reference(uz[u], uz[u], iz, iz, set(seen[u].indices), 15, N_ITEMS)
        assert top[u].tolist() == items
        np.testing.assert_allclose(scores[u], ref_scores, rtol=1e-5, atol=1e-5)
    # the hierarchical search with C = every item is the exact ranking
    ids, _s, _h = r.search(*r.user_rows(users), 15, N_ITEMS, [r.seen_items(u) for u in users])
    np.testing.assert_array_equal(ids, top)


@pytest.mark.parametrize("k", [1, 7, 30])
def test_rerank_breaks_integer_ties_by_item_id_across_the_cut(k: int) -> None:
    """+-1 vectors tie everywhere: the re-rank's cut and order follow (score desc, id asc), empties last."""
    rng = np.random.default_rng(k)
    uz = np.sign(rng.standard_normal((40, 8))).astype(np.float32)
    iz = np.sign(rng.standard_normal((200, 8))).astype(np.float32)
    r = Retriever.from_arrays(uz, iz)
    cand = np.stack([rng.permutation(200)[:50] for _ in range(40)]).astype(np.int64)
    cand[::3, 25:] = -1  # some rows have only 25 candidates
    scores, top = r.rerank(uz, cand, k)
    for u in range(40):
        ids = sorted(cand[u][cand[u] >= 0].tolist(), key=lambda i: (-float(uz[u] @ iz[i]), i))[:k]
        assert top[u][top[u] >= 0].tolist() == ids
        np.testing.assert_array_equal(scores[u][: len(ids)], [uz[u] @ iz[i] for i in ids])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_breaks_integer_ties_by_item_id(seed: int) -> None:
    """+-1 vectors give many equal scores: the exact ranking still orders them by item id."""
    rng = np.random.default_rng(seed)
    uz = np.sign(rng.standard_normal((37, 8))).astype(np.float32)
    iz = np.sign(rng.standard_normal((53, 8))).astype(np.float32)
    seen = sp.random(37, 53, density=0.2, random_state=seed, format="csr")
    r = Retriever.from_arrays(uz, iz, seen)
    users = np.arange(37)
    _scores, top = r.exact(r.user_rows(users)[1], 10, [r.seen_items(u) for u in users])
    scores = uz @ iz.T
    for u in users:
        ids = sorted(set(range(53)) - set(seen[u].indices), key=lambda i: (-scores[u, i], i))
        assert top[u].tolist() == ids[:10]


def test_k_larger_than_items_left_returns_what_is_left() -> None:
    uz, iz = random_z(3, 8, 5), random_z(30, 8, 6)
    seen = sp.lil_matrix((3, 30))
    seen[0, :25] = 1  # user 0 has seen 25 of 30 items
    r = Retriever.from_arrays(uz, iz, seen.tocsr())
    recs = r.recommend(["0", "1"], 50, 10)
    assert sorted(int(x) for x in recs[0].items) == [25, 26, 27, 28, 29]  # type: ignore[union-attr]
    assert len(recs[1].items) == 30  # type: ignore[union-attr]
    assert r.recommend(["1"], 5, 10, exclude_items=np.arange(30))[0].items == []  # type: ignore[union-attr]
    assert r.recommend(["1"], 5, 10, include_items=np.zeros(0, np.int64))[0].items == []  # type: ignore[union-attr]
    dist, idx = r.recall(r.user_rows(np.array([0]))[0], 10, [r.seen_items(0)])
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


def test_new_users_are_folded_in_with_both_heads(data: tuple) -> None:
    uz, iz, seen = data
    rng = np.random.default_rng(9)
    uv, iv = random_z(N_USERS, 12, 3), random_z(N_ITEMS, 12, 4)
    f = rng.standard_normal((N_ITEMS, 6)).astype(np.float32)
    fi = FoldIn(
        item=f,
        power=0.5,
        code_weight=rng.standard_normal((16, 6)).astype(np.float32),
        code_bias=rng.standard_normal(16).astype(np.float32),
        vector_weight=rng.standard_normal((12, 6)).astype(np.float32),
        vector_bias=rng.standard_normal(12).astype(np.float32),
    )
    r = Retriever.from_arrays(uz, iz, seen, user_vectors=uv, item_vectors=iv, foldin=fi)
    new = r.encode_new([["1", "2", "2", "zzz"], []])
    x = (f[1] + f[2]) / 2**0.5
    np.testing.assert_array_equal(new.codes[0], pack(np.tanh(fi.code_weight @ x + fi.code_bias)[None, :])[0])
    np.testing.assert_allclose(
        new.vectors[0], np.tanh(fi.vector_weight @ x + fi.vector_bias), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(new.vectors[1], np.tanh(fi.vector_bias), rtol=1e-6)
    assert new.unknown == [1, 0] and new.items[0].tolist() == [1, 2] and new.items[1].size == 0
    (rec,) = r.recommend_new(new.subset([0]), 10, 50)
    code_z = np.tanh(fi.code_weight @ x + fi.code_bias)
    check(rec, reference(code_z, new.vectors[0], iz, iv, {1, 2}, 10, 50))
    assert rec.user is None
    with pytest.raises(FoldInUnavailable, match="no fold-in arrays"):
        Retriever.from_arrays(uz, iz).encode_new([["1"]])


def test_popular_fallback(data: tuple) -> None:
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen)
    pop = np.asarray((seen != 0).sum(axis=0)).ravel()
    order = np.lexsort((np.arange(N_ITEMS), -pop))
    rec = r.popular(10)
    assert [int(x) for x in rec.items] == order[:10].tolist()
    assert rec.scores == [float(pop[i]) for i in order[:10]] and rec.hamming == [-1] * 10
    rec = r.popular(5, exclude=order[:3])
    assert [int(x) for x in rec.items] == order[3:8].tolist()
    assert r.popular(5, allow=np.array([7])).items == ["7"]


def test_concurrent_threads_get_the_same_answers(data: tuple) -> None:
    uz, iz, seen = data
    r = Retriever.from_arrays(uz, iz, seen, threads=1)
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
    codes = pack(uz)
    ed, _ = Retriever.from_arrays(uz, iz).recall(codes, 100)
    full = {"ivf": {"nlist": 50, "nprobe": 50}, "hnsw": {"efSearch": 2000}}[index_type]
    narrow = {"ivf": {"nlist": 50, "nprobe": 5}, "hnsw": {"efSearch": 100}}[index_type]
    d, i = Retriever.from_arrays(uz, iz, index_type=index_type, index_params=full).recall(codes, 100)
    assert recall_against_exact(d, i, ed) == pytest.approx(1.0, abs=0.005)
    if index_type == "ivf":  # IVF with every list scanned is exact, ties included
        np.testing.assert_array_equal(d, ed)
    d, i = Retriever.from_arrays(uz, iz, index_type=index_type, index_params=narrow).recall(codes, 100)
    assert 0.5 < recall_against_exact(d, i, ed) <= 1.0
    # and the recall helper itself is not trivially 1: shifting distances up breaks it
    assert recall_against_exact(ed + 1, np.zeros_like(ed), ed) < 1.0
