"""Recall helpers of approximate retrieval (index/quality.py), on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from hashrec.index.quality import hamming_recall, overlap_at_k


def test_hamming_recall_counts_ties_and_missing() -> None:
    exact = np.array([[0, 1, 2, 2]])
    # a different item at the boundary distance (2) is still correct; a missing slot and a farther one not
    assert hamming_recall(np.array([[0, 1, 2, 2]]), np.array([[5, 6, 7, 8]]), exact) == 1.0
    assert hamming_recall(np.array([[0, 1, 2, 9]]), np.array([[5, 6, 7, -1]]), exact) == 0.75
    assert hamming_recall(np.array([[0, 1, 3, 3]]), np.array([[5, 6, 7, 8]]), exact) == 0.5
    with pytest.raises(ValueError, match="shapes differ"):
        hamming_recall(exact[:, :2], exact[:, :2], exact)


def test_overlap_at_k() -> None:
    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    b = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert overlap_at_k(a, b) == pytest.approx((2 / 4 + 1) / 2)
    assert overlap_at_k(np.array([[-1, -1]]), np.array([[-1, -1]])) == 0.0
