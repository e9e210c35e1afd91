"""The compiled exact Hamming scan gives FAISS IndexBinaryFlat's answer, ties included, for any code length."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from hashrec.index import fastscan
from hashrec.index.codes import hamming

pytestmark = pytest.mark.skipif(not fastscan.available(), reason="hashrec.index._hamming is not built")


def clustered_codes(n: int, bits: int, seed: int) -> np.ndarray:
    """Packed codes drawn around few centres: many duplicate codes and equal distances (ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (8, bits), dtype=np.uint8)
    flips = rng.random((n, bits)) < 0.1
    bits_ = centres[rng.integers(0, 8, n)] ^ flips.astype(np.uint8)
    return np.packbits(bits_, axis=1, bitorder="little")


@pytest.mark.parametrize("bits", [8, 24, 32, 64, 128, 136])
@pytest.mark.parametrize("k", [1, 7, 100, 3000])
def test_equals_faiss_flat_and_numpy(bits: int, k: int) -> None:
    codes = clustered_codes(3000, bits, bits)
    queries = clustered_codes(20, bits, bits + 1)
    index = faiss.IndexBinaryFlat(bits)
    index.add(codes)
    fd, fi = index.search(queries, k)
    d, i = fastscan.topk(codes, queries, k)
    np.testing.assert_array_equal(d, fd)
    np.testing.assert_array_equal(i, fi)
    # and the numpy reference: sorted by (distance, id)
    ref = hamming(queries, codes).astype(np.int64)
    order = np.argsort(ref * len(codes) + np.arange(len(codes)), axis=1)[:, :k]
    np.testing.assert_array_equal(i, order)


def test_all_codes_identical_and_tiny_inputs() -> None:
    codes = np.zeros((5000, 8), np.uint8)  # every item ties: ids must come out in order
    d, i = fastscan.topk(codes, np.zeros((3, 8), np.uint8), 10)
    assert (d == 0).all() and (i == np.arange(10)).all()
    d, i = fastscan.topk(codes[:3], np.full((1, 8), 255, np.uint8), 10)  # k clipped to n
    assert i.tolist() == [[0, 1, 2]] and d.tolist() == [[64, 64, 64]]


def test_threshold_rescan_path() -> None:
    """When the sampled threshold admits fewer than k items, the query is rescanned and stays exact."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (50_000, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (1, 8), dtype=np.uint8)
    # the threshold is estimated from 64 runs of consecutive codes starting at multiples of n / 64 (see
    # _hamming.c; 32 codes per run here): make 256 codes at each run start equal to the query, so the
    # estimate says "distance 0 suffices" although only 16,384 items are at distance 0 and k is 20,000
    gap = len(codes) // 64
    for r in range(64):
        codes[r * gap : r * gap + 256] = q
    d, i = fastscan.topk(codes, q, 20_000)
    ref = hamming(q, codes).astype(np.int64)[0]
    order = np.argsort(ref * len(codes) + np.arange(len(codes)))[:20_000]
    np.testing.assert_array_equal(i[0], order)
    assert (d[0, :16_384] == 0).all() and d[0, 16_384] > 0


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="equal widths"):
        fastscan.topk(np.zeros((4, 8), np.uint8), np.zeros((1, 4), np.uint8), 2)


def test_without_the_extension_the_retriever_falls_back_to_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build without a C compiler: `auto` searches with FAISS (same answers), `fast` is refused clearly."""
    from index_helpers import random_z

    from hashrec.index import Retriever

    uz, iz = random_z(20, 64, 1, clusters=4), random_z(500, 64, 2, clusters=4)
    with_scan = Retriever.from_arrays(uz, iz).recommend([str(u) for u in range(20)], 10, 50)
    monkeypatch.setattr(fastscan, "_hamming", None)
    assert not fastscan.available() and fastscan.kernel() == "unavailable"
    r = Retriever.from_arrays(uz, iz)
    assert not r._fast
    without = r.recommend([str(u) for u in range(20)], 10, 50)
    for a, b in zip(without, with_scan, strict=True):  # scores may differ in the last bit (summation order)
        assert a is not None and b is not None
        assert a.items == b.items and a.hamming == b.hamming
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    with pytest.raises(ValueError, match="needs the compiled extension"):
        Retriever.from_arrays(uz, iz, scan="fast")
    with pytest.raises(RuntimeError, match="not built"):
        fastscan.topk(np.zeros((2, 8), np.uint8), np.zeros((1, 8), np.uint8), 1)


@pytest.mark.parametrize("bits,nlist", [(64, 50), (32, 50), (128, 20), (24, 10)])
def test_ivf_scan_equals_exact_search_of_the_probed_lists(bits: int, nlist: int) -> None:
    """IVFScan returns the top-k of exactly the lists FAISS's quantizer picks, ties by item id, and the
    same distances as IndexBinaryIVF.search (which does not break ties by id)."""
    from hashrec.index import binary_index

    codes = clustered_codes(6000, bits, bits + 7)
    queries = codes[:: 6000 // 25][:25]
    ivf, _ = binary_index.build_index(codes, "ivf", {"nlist": nlist, "nprobe": 1})
    scan = fastscan.IVFScan(ivf)
    for nprobe in (1, 3, nlist):
        ivf.nprobe = nprobe
        _, lists = ivf.quantizer.search(queries, nprobe)
        for k in (1, 100, 7000):
            d, i = scan.search(queries, k)
            fd, _ = binary_index.search(ivf, queries, k)
            np.testing.assert_array_equal(d, fd)
            for r in range(len(queries)):
                items = np.sort(
                    np.concatenate([scan.ids[scan.offsets[li] : scan.offsets[li + 1]] for li in lists[r]])
                )
                dist = hamming(queries[r : r + 1], codes[items])[0].astype(np.int64)
                expected = items[np.argsort(dist * len(codes) + items)[:k]]
                np.testing.assert_array_equal(i[r, : len(expected)], expected)
                assert (i[r, len(expected) :] == -1).all()


def test_dots_equal_numpy_and_mark_empty_slots() -> None:
    rng = np.random.default_rng(3)
    item_z = rng.standard_normal((300, 24)).astype(np.float32)
    z = rng.standard_normal((4, 24)).astype(np.float32)
    cand = rng.integers(0, 300, (4, 50))
    cand[1, 7] = -1
    got = fastscan.dots(item_z, cand, z)
    expected = np.einsum("ncd,nd->nc", item_z[np.maximum(cand, 0)], z)
    expected[1, 7] = -np.inf
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert got[1, 7] == -np.inf
    with pytest.raises(ValueError, match="out of range"):
        fastscan.dots(item_z, np.array([[300]]), z[:1])


@pytest.mark.parametrize("bits", [16, 64, 136])
def test_topk_excluding_equals_topk_with_the_excluded_ids_removed(bits: int) -> None:
    """Per query: the top-(k + |excluded|) of the plain scan, excluded ids dropped, first k kept; rows
    whose exclusions leave fewer than k items are padded with (bits + 1, -1)."""
    rng = np.random.default_rng(bits)
    n = 2000
    codes = clustered_codes(n, bits, 5)  # many ties: the id order inside a distance matters
    queries = clustered_codes(5, bits, 6)
    exclude = [
        np.unique(rng.integers(0, n, 40)),
        np.zeros(0, np.int64),
        np.arange(n - 3, dtype=np.int64),  # leaves 3 items: padding
        np.arange(n, dtype=np.int64),  # leaves nothing
        np.unique(rng.integers(0, n, 1500)),
    ]
    for k in (1, 50, 600):
        d, i = fastscan.topk_excluding(codes, queries, k, exclude)
        assert d.shape == i.shape == (5, k)
        for r, ex in enumerate(exclude):
            dd, ii = fastscan.topk(codes, queries[r : r + 1], min(n, k + len(ex)))
            keep = ~np.isin(ii[0], ex)
            sel = np.flatnonzero(keep)[:k]
            ref_d = np.full(k, bits + 1, np.int32)
            ref_i = np.full(k, -1, np.int64)
            ref_d[: len(sel)], ref_i[: len(sel)] = dd[0, sel], ii[0, sel]
            np.testing.assert_array_equal(i[r], ref_i)
            np.testing.assert_array_equal(d[r], ref_d)
    with pytest.raises(ValueError, match="sorted"):
        fastscan.topk_excluding(codes, queries[:1], 5, [np.array([9, 3])])


def test_rerank_equals_a_full_sort_of_dots() -> None:
    """Top-k by (score desc, item id asc), empty slots last in position order, scores equal to dots()."""
    rng = np.random.default_rng(7)
    n, dim, c = 500, 20, 120
    item_z = np.round(rng.standard_normal((n, dim)) * 2).astype(np.float32)  # integer-valued: many ties
    z = np.round(rng.standard_normal((3, dim))).astype(np.float32)
    cand = np.stack([rng.permutation(n)[:c] for _ in range(3)]).astype(np.int64)
    cand[1, 100:] = -1  # 20 empty slots
    cand[2, 5] = -1
    scores = fastscan.dots(item_z, cand, z)
    for k in (1, 10, 110, c):
        s, i, pos = fastscan.rerank(item_z, cand, z, k)
        assert s.shape == i.shape == pos.shape == (3, k)
        for r in range(3):
            tie = np.where(cand[r] < 0, np.iinfo(np.int64).max, cand[r])
            order = np.lexsort((tie, -scores[r]))[:k]
            np.testing.assert_array_equal(i[r], cand[r][order])
            np.testing.assert_array_equal(s[r], scores[r][order])
            np.testing.assert_array_equal(pos[r], order)
    assert (fastscan.rerank(item_z, cand, z, 500)[1][1, 100:] == -1).all()  # k is clipped to c


def test_recommend_one_equals_the_two_stages() -> None:
    """The fused one-user call: topk_excluding then rerank, empty slots dropped, raw ids looked up."""
    rng = np.random.default_rng(11)
    n, bits = 700, 64
    codes = clustered_codes(n, bits, 8)
    item_z = np.round(rng.standard_normal((n, bits)) * 2).astype(np.float32)  # score ties
    raw = [f"item{i}" for i in range(n)]
    for trial in range(20):
        q = clustered_codes(1, bits, 100 + trial)[0]
        z = np.round(rng.standard_normal(bits)).astype(np.float32)
        excl = np.unique(rng.integers(0, n, int(rng.integers(0, 60)))) if trial != 3 else np.arange(n - 5)
        width, k = int(rng.integers(1, n + 1)), int(rng.integers(1, 40))
        items, scores, ham, t_recall, t_rerank = fastscan.recommend_one(
            codes, q, width, excl, item_z, z, k, raw
        )
        d, c = fastscan.topk_excluding(codes, q[None, :], width, [excl])
        s, i, pos = fastscan.rerank(item_z, c, z[None, :], k)
        m = int((i[0] >= 0).sum())
        assert items == [raw[x] for x in i[0, :m]]
        assert scores == s[0, :m].tolist() and ham == d[0, pos[0, :m]].tolist()
        assert t_recall >= 0 and t_rerank >= 0
    assert len(fastscan.recommend_one(codes, q, n, np.arange(n - 5), item_z, z, 20, raw)[0]) == 5
    with pytest.raises(ValueError, match="sorted"):
        fastscan.recommend_one(codes, q, 10, np.array([5, 2]), item_z, z, 3, raw)
    with pytest.raises(ValueError, match="raw_ids"):
        fastscan.recommend_one(codes, q, 10, excl, item_z, z, 3, raw[:-1])


def test_recommend_many_equals_recommend_one_per_user() -> None:
    rng = np.random.default_rng(12)
    n, n_users, bits = 500, 30, 64
    codes, user_codes = clustered_codes(n, bits, 9), clustered_codes(n_users, bits, 10)
    item_z = np.round(rng.standard_normal((n, bits)) * 2).astype(np.float32)
    user_z = np.round(rng.standard_normal((n_users, bits))).astype(np.float32)
    seen = [np.unique(rng.integers(0, n, int(rng.integers(0, 40)))) for _ in range(n_users)]
    seen[4] = np.arange(n - 2)  # two items left
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in seen])]).astype(np.int64)
    indices = np.concatenate(seen).astype(np.int64)
    raw = [f"i{i}" for i in range(n)]
    users = np.array([4, 0, 29, 4, 17], np.int64)
    for excl in (True, False):
        got, t_recall, t_rerank = fastscan.recommend_many(
            codes,
            user_codes,
            user_z,
            users,
            60,
            indptr if excl else np.zeros(0, np.int64),
            indices,
            item_z,
            9,
            raw,
        )
        assert t_recall >= 0 and t_rerank >= 0
        for u, answer in zip(users, got, strict=True):
            ex = seen[u] if excl else np.zeros(0, np.int64)
            one = fastscan.recommend_one(codes, user_codes[u], 60, ex, item_z, user_z[u], 9, raw)
            assert tuple(answer) == one[:3]
    assert (
        len(got[0][0]) == 9
        and len(
            fastscan.recommend_many(codes, user_codes, user_z, users, 60, indptr, indices, item_z, 9, raw)[0][
                0
            ][0]
        )
        == 2
    )
    bad = indices.copy()
    bad[indptr[1] : indptr[2]] = bad[indptr[1] : indptr[2]][::-1]
    with pytest.raises(ValueError, match="sorted"):
        fastscan.recommend_many(codes, user_codes, user_z, np.array([1]), 10, indptr, bad, item_z, 3, raw)
    with pytest.raises(ValueError, match="out of range"):
        fastscan.recommend_many(
            codes, user_codes, user_z, np.array([n_users]), 10, indptr, indices, item_z, 3, raw
        )
