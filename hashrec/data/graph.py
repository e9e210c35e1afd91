"""The user-item bipartite graph in CSR form, both directions, built with scipy (no loop over edges)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class BipartiteGraph:
    """Binary interaction graph of ``n_users`` x ``n_items``.

    ``user_items`` is the CSR matrix R (users x items, float32 ones, sorted indices, no duplicates);
    ``item_users`` is R^T in CSR. Row ``u`` of ``user_items`` lists the items of user ``u``:
    ``user_items.indices[user_items.indptr[u]:user_items.indptr[u + 1]]``.
    """

    user_items: sp.csr_matrix
    item_users: sp.csr_matrix

    @classmethod
    def from_edges(cls, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> BipartiteGraph:
        """Build both CSR directions from parallel arrays of internal ids (duplicates collapse to one edge)."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if len(users) != len(items):
            raise ValueError("users and items must have the same length")
        if len(users) and (
            users.min() < 0 or users.max() >= n_users or items.min() < 0 or items.max() >= n_items
        ):
            raise ValueError("edge ids out of range")
        r = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
        r.sum_duplicates()
        r.data[:] = 1.0
        r.sort_indices()
        rt = r.T.tocsr()
        rt.sort_indices()
        return cls(r, rt)

    @property
    def n_users(self) -> int:
        return int(self.user_items.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.user_items.shape[1])

    @property
    def n_edges(self) -> int:
        return int(self.user_items.nnz)

    @property
    def user_degree(self) -> np.ndarray:
        """Number of items of each user (int64)."""
        return np.diff(self.user_items.indptr).astype(np.int64)

    @property
    def item_degree(self) -> np.ndarray:
        """Number of users of each item (int64): the item popularity in this graph."""
        return np.diff(self.item_users.indptr).astype(np.int64)

    def items_of(self, user: int) -> np.ndarray:
        """The item ids of one user, sorted."""
        r = self.user_items
        return r.indices[r.indptr[user] : r.indptr[user + 1]]

    def users_of(self, item: int) -> np.ndarray:
        """The user ids of one item, sorted."""
        r = self.item_users
        return r.indices[r.indptr[item] : r.indptr[item + 1]]

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """All edges as (users, items) arrays, sorted by user then item."""
        r = self.user_items
        users = np.repeat(np.arange(r.shape[0], dtype=np.int64), np.diff(r.indptr))
        return users, r.indices.astype(np.int64)

    def normalized_adjacency(self) -> sp.csr_matrix:
        """R~ = D_u^{-1/2} R D_i^{-1/2} (zero-degree rows/columns stay zero), as used by LightGCN."""
        du = self.user_degree.astype(np.float64)
        di = self.item_degree.astype(np.float64)
        inv_u = np.divide(1.0, np.sqrt(du), out=np.zeros_like(du), where=du > 0)
        inv_i = np.divide(1.0, np.sqrt(di), out=np.zeros_like(di), where=di > 0)
        return (sp.diags(inv_u) @ self.user_items @ sp.diags(inv_i)).astype(np.float32).tocsr()
