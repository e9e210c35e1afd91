"""Vectorised negative sampling and edge batching (no Python loop over users or edges).

Negatives are drawn uniformly over items and re-drawn, for all examples at once, where they hit an observed
training item of the example's user (membership by binary search in the sorted ``user * n_items + item``
keys). After ``rounds`` re-draws the few remaining collisions are kept: with a sparse matrix they are rare
(and they are what the official code does without any check).
"""

from __future__ import annotations

import itertools

import numpy as np

from hashrec.data import BipartiteGraph


class NegativeSampler:
    """Uniform item negatives that avoid each user's training items."""

    def __init__(self, graph: BipartiteGraph, rounds: int = 3) -> None:
        users, items = graph.edges()
        self.n_items = graph.n_items
        # edges() is sorted by (user, item), so the keys are sorted already.
        self.keys = users * np.int64(self.n_items) + items
        self.rounds = rounds

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) pair (broadcast together) is a training edge."""
        key = np.asarray(users, np.int64) * np.int64(self.n_items) + np.asarray(items, np.int64)
        if len(self.keys) == 0:
            return np.zeros(key.shape, dtype=bool)
        pos = np.searchsorted(self.keys, key)
        return self.keys[np.minimum(pos, len(self.keys) - 1)] == key

    def sample(self, users: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """int64 [len(users), n] uniform negatives for each user (see the module docstring)."""
        users = np.asarray(users, np.int64)
        neg = rng.integers(0, self.n_items, (len(users), n), dtype=np.int64)
        for _ in range(self.rounds):
            hit = self.is_positive(users[:, None], neg)
            k = int(hit.sum())
            if k == 0:
                break
            neg[hit] = rng.integers(0, self.n_items, k, dtype=np.int64)
        return neg


def epoch_batches(
    n_edges: int, batch_size: int, rng: np.random.Generator, rank: int = 0, world: int = 1
) -> list[np.ndarray]:
    """One epoch of edge indices for process ``rank`` of ``world``: a random permutation (the same on every
    rank: ``rng`` is seeded alike) cut into global batches of ``batch_size``, each split into ``world``
    nearly equal parts, of which this rank takes one.

    Every edge is in exactly one rank's batches, every rank gets the same number of steps, and a step's
    global batch is what one process would train on. A last batch smaller than ``world`` edges joins the
    one before it, so no rank gets an empty step.
    """
    perm = rng.permutation(n_edges)
    bounds = [*list(range(0, n_edges, batch_size)), n_edges]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < world:
        del bounds[-2]
    return [np.array_split(perm[a:b], world)[rank] for a, b in itertools.pairwise(bounds)]


def shared_positive_pairs(
    graph: BipartiteGraph, users: np.ndarray, shared: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): example ``rows`` whose user has a training edge to ``shared[cols]``.

    Those shared items are the example's own positives, not negatives, so the softmax masks them. Found
    from the items' user lists (about S x mean degree entries), never from a [B, S] comparison.
    """
    iu = graph.item_users
    starts, ends = iu.indptr[shared], iu.indptr[np.asarray(shared) + 1]
    lens = ends - starts
    cols = np.repeat(np.arange(len(shared)), lens)
    offsets = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    item_users = iu.indices[np.repeat(starts, lens) + offsets].astype(np.int64)
    order = np.argsort(users, kind="stable")
    sorted_users = np.asarray(users, np.int64)[order]
    lo = np.searchsorted(sorted_users, item_users, "left")
    hi = np.searchsorted(sorted_users, item_users, "right")
    counts = hi - lo
    first = np.repeat(lo, counts)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return order[first + within].astype(np.int64), np.repeat(cols, counts).astype(np.int64)
