"""Ranking and metrics against hand-computed examples and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from hashrec.model.metrics import hit_matrix, recall_ndcg


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """CSR with ones at the listed items of each row."""
    r = np.repeat(np.arange(len(rows)), [len(x) for x in rows])
    c = np.array([i for x in rows for i in x], dtype=np.int64)
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), n_items))


def test_recall_ndcg_hand_computed() -> None:
    # user 0: truth {1, 5}, ranked [1, 2, 5] -> hits at ranks 0 and 2
    # user 1: truth {7},   ranked [3, 4, 6] -> no hit
    # user 2: truth {0, 2, 3, 4}, ranked [9, 0, 8] -> hit at rank 1, IDCG over min(4, 3) = 3 ideal hits
    # user 3: empty truth -> ignored
    top = np.array([[1, 2, 5], [3, 4, 6], [9, 0, 8], [1, 2, 3]])
    truth = csr([[1, 5], [7], [0, 2, 3, 4], []], 10)
    m = recall_ndcg(top, truth, 3)
    l2, l3, l4 = math.log2(2), math.log2(3), math.log2(4)
    ndcg0 = (1 / l2 + 1 / l4) / (1 / l2 + 1 / l3)
    ndcg2 = (1 / l3) / (1 / l2 + 1 / l3 + 1 / l4)
    assert m["users"] == 3
    assert m["recall"] == pytest.approx((2 / 2 + 0 + 1 / 4) / 3)
    assert m["ndcg"] == pytest.approx((ndcg0 + 0 + ndcg2) / 3)
    assert m["precision"] == pytest.approx((2 / 3 + 0 + 1 / 3) / 3)
    assert m["hit_rate"] == pytest.approx(2 / 3)


def test_recall_ndcg_uses_first_k_columns_and_ignores_empty_slots() -> None:
    top = np.array([[4, -1, 2], [0, 1, 2]])
    truth = csr([[2], [1]], 5)
    m1 = recall_ndcg(top, truth, 1)
    assert m1["recall"] == 0.0 and m1["ndcg"] == 0.0
    m3 = recall_ndcg(top, truth, 3)
    assert m3["recall"] == pytest.approx(1.0)
    assert m3["ndcg"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(3)) / 2)
    # -1 must never count as a hit, even when item 0 is relevant
    assert not hit_matrix(np.array([[-1]]), csr([[0]], 3)).any()


def test_perfect_ranking_scores_one() -> None:
    top = np.array([[3, 1, 0, 2]])
    m = recall_ndcg(top, csr([[1, 3]], 4), 4)
    assert m["recall"] == 1.0 and m["ndcg"] == pytest.approx(1.0)


def test_recall_ndcg_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="aligned"):
        recall_ndcg(np.zeros((2, 3), np.int64), csr([[1]], 4), 3)
    with pytest.raises(ValueError, match="k must be"):
        recall_ndcg(np.zeros((1, 3), np.int64), csr([[1]], 4), 4)
