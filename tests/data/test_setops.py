"""The fast set operations and sorts equal numpy's (and the split order equals lexsort's) on random inputs,
including the edge cases each fast path special-cases: runs, dense ints, non-Latin-1 text, ties."""

from __future__ import annotations

import numpy as np
import pytest

from hashrec.data.dataset import _dedup
from hashrec.data.setops import contains, lookup, unique_inverse
from hashrec.data.splits import _order_by_user_then_key

ALPHABET = [*"ab\x00éz", "日", "\U0001f600"]


def random_column(rng: np.random.Generator, kind: int, n: int) -> np.ndarray:
    if kind == 0:
        return rng.integers(0, 10, n)  # dense non-negative ints
    if kind == 1:
        return rng.integers(-5, 10**12, n)  # sparse and negative ints
    if kind == 2:
        return np.sort(rng.integers(0, 5, n)).astype(str)  # long runs
    letters = ALPHABET if kind == 3 else ALPHABET[:5]  # with and without code points past 255
    return np.array(["".join(rng.choice(letters, int(rng.integers(0, 19)))) for _ in range(n)], dtype=str)


@pytest.mark.parametrize("seed", range(60))
def test_unique_inverse_and_lookup_match_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = random_column(rng, seed % 5, int(rng.integers(0, 60)))
    uniq, inverse = np.unique(values, return_inverse=True)
    got_uniq, got_inverse = unique_inverse(values)
    assert got_uniq.dtype == uniq.dtype and got_uniq.tolist() == uniq.tolist()
    assert got_inverse.tolist() == inverse.reshape(-1).tolist()
    keys = uniq[::2]
    index = {str(k): i for i, k in enumerate(keys.tolist())}
    assert lookup(keys, values).tolist() == [index.get(str(v), -1) for v in values.tolist()]


@pytest.mark.parametrize("seed", range(20))
def test_contains_is_isin(seed: int) -> None:
    rng = np.random.default_rng(seed)
    haystack, needles = rng.integers(-3, 30, int(rng.integers(0, 20))), rng.integers(-3, 30, 50)
    assert contains(haystack, needles).tolist() == np.isin(needles, haystack).tolist()


@pytest.mark.parametrize("seed", range(30))
def test_order_by_user_then_key_is_lexsort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 400))
    users = rng.integers(0, [20, 20, 20, 2**45, 20][seed % 5], n)  # 2**45: few bits left, coarse keys tie
    keys = [
        rng.random(n),  # random_holdout's keys
        rng.integers(0, 4, n) / 8,  # in [0, 1) with ties
        rng.permutation(n),  # leave_last_out's keys
        rng.random(n),
        rng.normal(size=n),  # no cheap integer map: lexsort itself
    ][seed % 5]
    assert _order_by_user_then_key(users, keys).tolist() == np.lexsort((keys, users)).tolist()


@pytest.mark.parametrize("with_stamps", [False, True])
def test_dedup_without_duplicates_keeps_everything_in_order(with_stamps: bool) -> None:
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 50, 400), rng.integers(0, 50, 400)
    key = u * 50 + i
    _, first = np.unique(key, return_index=True)
    u, i = u[np.sort(first)], i[np.sort(first)]  # unique pairs, file order
    stamps = rng.random(len(u)) if with_stamps else None
    du, di, _, dropped = _dedup(u, i, stamps, 50)
    assert dropped == 0 and du.tolist() == u.tolist() and di.tolist() == i.tolist()
    du, di, _, dropped = _dedup(np.r_[u, u[:5]], np.r_[i, i[:5]], None, 50)
    assert dropped == 5 and du.tolist() == u.tolist()
