"""Vectorised negative sampling and edge batching (no Python loop over users or edges).

Negatives are drawn uniformly over items and re-drawn, for all examples at once, where they hit an observed
training item of the example's user (membership by binary search in the sorted ``user * n_items + item``
keys). After ``rounds`` re-draws the few remaining collisions are kept: with a sparse matrix they are rare
(and they are what the official code does without any check).
"""

from __future__ import annotations

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


def edge_batches(n_edges: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation of edge indices cut into batches (the last one may be smaller)."""
    perm = rng.permutation(n_edges)
    return [perm[s : s + batch_size] for s in range(0, n_edges, batch_size)]
