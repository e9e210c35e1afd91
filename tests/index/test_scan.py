"""The compiled Hamming top-C scan (index/_scan.c) against brute force, on the edges its C code handles."""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np
import pytest

from hashrec.data.codes import distances
from hashrec.index import scan


def brute(items: np.ndarray, q: np.ndarray, c: int, excluded: set[int], allow: np.ndarray | None):
    """(dist, idx) [c]: every eligible item's distance, sorted by (distance, id), padded with (bits+1, -1)."""
    d = distances(q[None, :], items).astype(np.int64)
    ok = np.ones(len(items), bool)
    ok[[i for i in excluded if 0 <= i < len(items)]] = False
    if allow is not None:
        ok &= allow
    ids = np.flatnonzero(ok)
    order = ids[np.lexsort((ids, d[ids]))][:c]
    bits = 8 * items.shape[1]
    dist = np.full(c, bits + 1, np.int64)
    idx = np.full(c, -1, np.int64)
    dist[: len(order)], idx[: len(order)] = d[order], order
    return dist, idx


@pytest.fixture(params=[True, False], ids=["vector-popcount", "baseline"])
def build(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Each build of the kernel's distance loop in turn (the vector one only where the CPU has it)."""
    yield scan.use_vector_popcount(request.param)
    scan.use_vector_popcount(True)


# code sizes: the unrolled ones (8, 16, 32 bytes), a word plus a tail (12), tails only (1, 3)
@pytest.mark.parametrize("code_size", [1, 3, 8, 12, 16, 32])
@pytest.mark.parametrize("clustered", [False, True])
def test_topc_equals_brute_force(code_size: int, clustered: bool, build: bool) -> None:
    rng = np.random.default_rng(code_size)
    n = 3000 + code_size  # 3 of the 6 sizes leave a partial word of flags at the end of the last block
    if clustered:  # few distinct codes: many ties at every distance, the sampled threshold guess is coarse
        centres = rng.integers(0, 256, (7, code_size), dtype=np.uint8)
        items = centres[rng.integers(0, 7, n)]
    else:
        items = rng.integers(0, 256, (n, code_size), dtype=np.uint8)
    queries = rng.integers(0, 256, (20, code_size), dtype=np.uint8)
    # row r excludes r * 7 random ids, with repeats and out-of-range ids (ignored, never a crash)
    exclude = [np.concatenate([rng.integers(0, n, r * 7), [-5, n, n + 100]]) for r in range(20)]
    for c in (1, 50, 999, n):
        dist, idx = scan.topc(items, queries, c, scan.exclusions_csr(exclude, 20))
        for r in range(20):
            want_d, want_i = brute(items, queries[r], c, set(exclude[r].tolist()), None)
            np.testing.assert_array_equal(idx[r], want_i, err_msg=f"c={c} row={r}")
            np.testing.assert_array_equal(dist[r], want_d, err_msg=f"c={c} row={r}")


def test_allow_mask_and_fewer_eligible_than_c(build: bool) -> None:
    rng = np.random.default_rng(0)
    items = rng.integers(0, 256, (5000, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    allow = np.zeros(5000, bool)
    allow[rng.choice(5000, 30, replace=False)] = True  # 30 allowed: the threshold guess is far too small
    dist, idx = scan.topc(items, q, 40, None, allow)
    for r in range(4):
        want_d, want_i = brute(items, q[r], 40, set(), allow)
        np.testing.assert_array_equal(idx[r], want_i)
        np.testing.assert_array_equal(dist[r], want_d)
    assert (idx[:, 30:] == -1).all() and (dist[:, 30:] == 65).all()


def test_threads_split_the_batch_with_the_same_answer() -> None:
    rng = np.random.default_rng(1)
    items = rng.integers(0, 256, (4000, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (300, 8), dtype=np.uint8)
    exclude = scan.exclusions_csr([np.sort(rng.choice(4000, 10, replace=False)) for _ in range(300)], 300)
    one = scan.topc(items, q, 100, exclude, threads=1)
    three = scan.topc(items, q, 100, exclude, threads=3)
    np.testing.assert_array_equal(one[0], three[0])
    np.testing.assert_array_equal(one[1], three[1])


def test_reads_a_faiss_flat_index_in_place_and_agrees_with_faiss() -> None:
    rng = np.random.default_rng(2)
    items = rng.integers(0, 256, (2000, 8), dtype=np.uint8)
    index = faiss.IndexBinaryFlat(64)
    index.add(items)
    index.use_heap = False  # FAISS's counting search returns ties in id order, like ours
    view = scan.flat_codes(index)
    np.testing.assert_array_equal(view, items)
    assert not view.flags.writeable
    q = rng.integers(0, 256, (10, 8), dtype=np.uint8)
    fd, fi = index.search(q, 300)
    dist, idx = scan.topc(view, q, 300)
    np.testing.assert_array_equal(idx, fi)
    np.testing.assert_array_equal(dist, fd)


def test_edges_and_bad_arguments() -> None:
    items = np.zeros((0, 8), np.uint8)
    d, i = scan.topc(items, np.zeros((3, 8), np.uint8), 0)
    assert d.shape == i.shape == (3, 0)
    items = np.arange(80, dtype=np.uint8).reshape(10, 8)
    d, i = scan.topc(items, np.zeros((0, 8), np.uint8), 5)
    assert d.shape == (0, 5)
    with pytest.raises(ValueError, match="c must be in"):
        scan.topc(items, items[:1], 11)
    with pytest.raises(ValueError, match="same code width"):
        scan.topc(items, np.zeros((1, 4), np.uint8), 3)
    with pytest.raises(ValueError, match="allow has shape"):
        scan.topc(items, items[:1], 3, None, np.ones(9, bool))
    with pytest.raises(ValueError, match="exclude has 2 rows"):
        scan.exclusions_csr([np.zeros(1, np.int64)] * 2, 1)


def test_compiled_entry_point_checks_its_buffers() -> None:
    """The C entry point refuses buffers whose sizes disagree (it writes into the outputs in place)."""
    from hashrec.index import _scan

    items = np.arange(80, dtype=np.uint8).reshape(10, 8)
    q = items[:2]
    dist, idx = np.empty((2, 3), np.int32), np.empty((2, 3), np.int64)
    ptr, ids = np.array([0, 1, 2], np.int64), np.array([0, 1], np.int64)
    _scan.topc(items, q, 8, 3, ptr, ids, None, dist, idx)  # well-formed: no error
    want = scan.topc(items, q, 3, scan.exclusions_csr([ids[:1], ids[1:]], 2))
    np.testing.assert_array_equal(dist, want[0])
    np.testing.assert_array_equal(idx, want[1])
    with pytest.raises(ValueError, match="out_dist has 20 bytes, expected 24"):
        _scan.topc(items, q, 8, 3, None, None, None, np.empty(5, np.int32), idx)
    with pytest.raises(ValueError, match="out_idx has"):
        _scan.topc(items, q, 8, 3, None, None, None, dist, np.empty(5, np.int64))
    with pytest.raises(ValueError, match="excl_ptr must be non-decreasing"):
        _scan.topc(items, q, 8, 3, np.array([0, 5, 2], np.int64), ids, None, dist, idx)
    with pytest.raises(ValueError, match="excl_ptr has"):
        _scan.topc(items, q, 8, 3, np.array([0, 1], np.int64), ids, None, dist, idx)
    with pytest.raises(ValueError, match="allow has 9 bytes"):
        _scan.topc(items, q, 8, 3, None, None, np.ones(9, np.uint8), dist, idx)
    with pytest.raises(ValueError, match="whole codes"):
        _scan.topc(items, q, 3, 3, None, None, None, dist, idx)
    with pytest.raises(ValueError, match="c = 11 is more than the 10 items"):
        _scan.topc(items, q, 8, 11, None, None, None, np.empty(22, np.int32), np.empty(22, np.int64))
    with pytest.raises(TypeError, match="come together"):
        _scan.topc(items, q, 8, 3, ptr, None, None, dist, idx)
    with pytest.raises(TypeError, match="writable"):
        _scan.topc(items, q, 8, 3, None, None, None, b"\0" * 24, idx)
