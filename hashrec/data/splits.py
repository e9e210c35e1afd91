"""Vectorised per-user splits (no Python loop over users or interactions).

All functions take parallel ``users``/``items`` arrays of internal ids and return a boolean mask of the
interactions that go to the held-out side. They are deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np


def _rank_within_user(users: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each interaction inside its user's group when sorted by ``keys``, and each user's count."""
    order = _order_by_user_then_key(users, keys)
    su = users[order]
    n = len(users)
    starts = np.r_[0, np.flatnonzero(su[1:] != su[:-1]) + 1] if n else np.empty(0, np.int64)
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start
    counts = np.bincount(users, minlength=int(users.max()) + 1 if n else 0)
    return rank, counts


def _order_by_user_then_key(users: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.lexsort((keys, users))``: by user, then key, then position, with one sort of packed integers.

    Each interaction becomes one int64 ``user | coarse key | position``; sorting those values (far cheaper
    than an argsort) orders by user and coarse key, and the position read back is the permutation. The
    coarse key never inverts two keys, it may only tie them: runs of equal (user, coarse key) are put in
    exact (key, position) order afterwards, a handful of interactions in practice.
    """
    n = len(users)
    coarse = _coarse_keys(keys)
    pos_bits = max(n - 1, 1).bit_length()
    key_bits = 63 - pos_bits - (int(users.max()) if n else 0).bit_length()
    if n == 0 or coarse is None or key_bits < 1:
        return np.lexsort((keys, users))
    coarse >>= max(int(coarse.max()).bit_length() - key_bits, 0)
    packed = (users.astype(np.int64) << (key_bits + pos_bits)) | (coarse << pos_bits) | np.arange(n)
    packed.sort()
    order = packed & ((1 << pos_bits) - 1)
    head = packed >> pos_bits
    tied = head[1:] == head[:-1]  # tied[k]: sorted positions k and k + 1 share user and coarse key
    if tied.any():
        linked = np.r_[False, tied]  # linked to the position before
        members = np.flatnonzero(linked | np.r_[tied, False])
        run = np.cumsum(~linked[members])
        idx = order[members]
        order[members] = idx[np.lexsort((idx, keys[idx], run))]
    return order


def _coarse_keys(keys: np.ndarray) -> np.ndarray | None:
    """Non-negative int64 keys in the same order as ``keys``, ties allowed; None when there is no cheap map.

    Random floats in [0, 1) scale exactly by 2**53 (only the exponent changes); non-negative ints are kept.
    """
    if keys.dtype.kind == "f" and len(keys) and keys.min() >= 0.0 and keys.max() < 1.0:
        return (keys * 2.0**53).astype(np.int64)
    if keys.dtype.kind in "iu" and len(keys) and keys.min() >= 0:
        return keys.astype(np.int64)
    return None


def random_holdout(users: np.ndarray, ratio: float, seed: int, min_keep: int = 1) -> np.ndarray:
    """Hold out about ``ratio`` of each user's interactions, chosen at random.

    Each user holds out ``round(ratio * n_u)`` interactions, at most ``n_u - min_keep`` (so every user keeps
    ``min_keep`` interactions on the kept side) and at least one when ``n_u > min_keep`` and ``ratio > 0``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"holdout ratio must be in [0, 1), got {ratio}")
    if len(users) == 0 or ratio == 0.0:
        return np.zeros(len(users), dtype=bool)
    rng = np.random.default_rng(seed)
    rank, counts = _rank_within_user(users, rng.random(len(users)))
    n_hold = np.rint(ratio * counts).astype(np.int64)
    n_hold = np.where(counts > min_keep, np.maximum(n_hold, 1), 0)
    n_hold = np.minimum(n_hold, np.maximum(counts - min_keep, 0))
    return rank < n_hold[users]


def leave_last_out(users: np.ndarray, timestamps: np.ndarray, n: int, items: np.ndarray) -> np.ndarray:
    """Hold out each user's ``n`` latest interactions (ties broken by item id), keeping at least one.

    Users with ``n`` or fewer interactions keep them all on the kept side.
    """
    if n < 1:
        raise ValueError(f"leave-last-n-out needs n >= 1, got {n}")
    if len(users) == 0:
        return np.zeros(0, dtype=bool)
    # Sort descending by time: negate timestamps, tie-break by descending item id for determinism.
    keys = np.lexsort((-items, -timestamps))
    pos = np.empty(len(users), dtype=np.int64)
    pos[keys] = np.arange(len(users))
    rank, counts = _rank_within_user(users, pos)
    return (rank < n) & (counts[users] > n)


def kcore(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Mask of the interactions in the k-core: every remaining user and item has at least ``k`` of them."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1 or len(users) == 0:
        return keep
    nu, ni = int(users.max()) + 1, int(items.max()) + 1
    while True:
        du = np.bincount(users[keep], minlength=nu)
        di = np.bincount(items[keep], minlength=ni)
        new = keep & (du[users] >= k) & (di[items] >= k)
        if new.sum() == keep.sum():
            return new
        keep = new
