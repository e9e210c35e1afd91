"""Graph encoders over the user-item bipartite graph: GraphSAGE (the paper's) and LightGCN-style propagation.

Both expose the same interface to :class:`hashrec.model.hashgnn.HashGNN`:

- ``forward(users, items, gen)`` -> (h_users [len(users), out_dim], h_items [len(items), out_dim]) for the
  nodes of one batch (training: GraphSAGE samples neighbours with the torch generator ``gen``, on the
  model's device);
- ``full()`` -> (all users, all items), deterministic (inference: GraphSAGE averages *all* neighbours);
- ``id_embeddings(users, items)`` -> the raw ID embeddings of the batch (for the optional L2 penalty);
- ``out_dim``.

GraphSAGE (Hamilton et al. 2017, as in HashGNN's official code): x = LeakyReLU(Dense(ID embedding)); one layer
``h' = LeakyReLU(W [h_self || mean(h_neighbours)])`` per hop, separate weights per side and hop. Users use
``len(user_fanouts)`` hops, items ``len(item_fanouts)``; neighbours are sampled uniformly with replacement
from the CSR rows, all nodes of a batch at once (no Python loop over nodes or edges); a node without
neighbours aggregates zeros.

LightGCN (He et al. 2020): ``E^{l+1} = A~ E^l`` with ``A~ = [[0, R~], [R~^T, 0]]``, ``R~ = D_u^-1/2 R D_i^-1/2``;
the output is ``mean_l E^l`` for l = 0..L. One propagation costs the same whatever the batch, so the trainer
uses big batches. The ID embeddings can start from a truncated SVD of R~ (:func:`svd_init`): then each layer
only rescales the singular directions by their singular values, i.e. the encoder starts as a low-pass filter.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from hashrec.data import BipartiteGraph

log = logging.getLogger(__name__)


def sample_neighbours(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    nodes: torch.Tensor,
    fanout: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``fanout`` neighbours (uniform, with replacement) of each node from a CSR adjacency.

    All tensors live on one device (the generator's); the draws never leave it, so a GPU step samples its
    trees without a host round trip. Returns (neighbours int64 [len(nodes), fanout], valid bool
    [len(nodes), fanout]); nodes without any neighbour get neighbour 0 with ``valid = False`` (the caller
    masks them out of the mean).
    """
    start = indptr[nodes]
    deg = indptr[nodes + 1] - start
    draw = torch.rand((len(nodes), fanout), generator=generator, device=nodes.device, dtype=torch.float64)
    # float64 draws times degrees below 2**52 floor to 0..deg-1; the clamp only guards deg = 0.
    offs = torch.minimum((draw * deg[:, None]).long(), (deg - 1).clamp_min(0)[:, None])
    valid = (deg > 0)[:, None].expand(-1, fanout).contiguous()
    if len(indices) == 0:
        return torch.zeros_like(offs), valid
    # A node without neighbours may start at len(indices): clamp the gather, the mask drops the value.
    pos = (start[:, None] + offs).clamp_max_(len(indices) - 1)
    return torch.where(valid, indices[pos], 0), valid


def _ids(ids: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Node ids as an int64 tensor on ``device`` (numpy arrays are copied once)."""
    if isinstance(ids, torch.Tensor):
        return ids.to(device=device, dtype=torch.int64)
    return torch.from_numpy(np.asarray(ids, np.int64)).to(device)


def _masked_mean(h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the fan-out axis of ``h`` [n, f, d] where ``valid`` [n, f]; zeros when nothing is valid."""
    w = valid.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


def _row_mean_matrix(m: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """A torch sparse CSR matrix whose product with X averages X over each row's nonzeros."""
    deg = np.asarray(m.sum(axis=1)).ravel()
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    return _to_torch_csr((sp.diags(inv) @ m).astype(np.float32).tocsr(), device)


def _to_torch_csr(m: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    m = m.tocsr()
    m.sort_indices()
    # scipy's CSR is valid by construction; the beta-state warnings of torch's CSR say nothing to users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _csr_tensor(m, device)


def _csr_tensor(m: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    return torch.sparse_csr_tensor(
        torch.from_numpy(m.indptr.astype(np.int64)),
        torch.from_numpy(m.indices.astype(np.int64)),
        torch.from_numpy(m.data.astype(np.float32)),
        size=m.shape,
        device=device,
    )


class SageEncoder(nn.Module):
    """GraphSAGE over the bipartite graph with sampled neighbours (the HashGNN paper's encoder)."""

    def __init__(
        self,
        graph: BipartiteGraph,
        emb_dim: int = 120,
        dense_dim: int = 68,
        user_fanouts: tuple[int, ...] = (10, 5),
        item_fanouts: tuple[int, ...] = (10,),
    ) -> None:
        super().__init__()
        self.graph = graph
        self.user_fanouts = tuple(user_fanouts)
        self.item_fanouts = tuple(item_fanouts)
        # Sparse gradients: a batch touches a few thousand of the ID embeddings, and a dense Adam update of
        # all of them was ~40% of a Gowalla step in development (the trainer uses SparseAdam for these).
        self.user_emb = nn.Embedding(graph.n_users, emb_dim, sparse=True)
        self.item_emb = nn.Embedding(graph.n_items, emb_dim, sparse=True)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        self.user_dense = nn.Linear(emb_dim, dense_dim)
        self.item_dense = nn.Linear(emb_dim, dense_dim)
        # layers[side][hop]: the layer that computes hop-(hop+1) vectors of nodes on `side`.
        depth = max(len(self.user_fanouts), len(self.item_fanouts))
        self.user_layers = nn.ModuleList(nn.Linear(2 * dense_dim, dense_dim) for _ in range(depth))
        self.item_layers = nn.ModuleList(nn.Linear(2 * dense_dim, dense_dim) for _ in range(depth))
        self.act = nn.LeakyReLU(0.2)
        self.out_dim = dense_dim
        self._full_mats: tuple[torch.Tensor, torch.Tensor] | None = None
        # The CSR adjacency of both sides as buffers, so that sampling runs on the model's device. Not
        # persistent: rebuilt from the graph, never stored in checkpoints.
        for name, m in (("ui", graph.user_items), ("iu", graph.item_users)):
            self.register_buffer(f"{name}_indptr", torch.from_numpy(m.indptr.astype(np.int64)), False)
            self.register_buffer(f"{name}_indices", torch.from_numpy(m.indices.astype(np.int64)), False)

    # side 0 = users (neighbours are items), side 1 = items (neighbours are users)
    def _x(self, side: int, ids: torch.Tensor) -> torch.Tensor:
        if side == 0:
            return self.act(self.user_dense(self.user_emb(ids)))
        return self.act(self.item_dense(self.item_emb(ids)))

    def _layer(self, side: int, hop: int) -> nn.Module:
        return (self.user_layers if side == 0 else self.item_layers)[hop]

    def _csr(self, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indptr, indices) of the CSR adjacency of ``side`` (buffers on the model's device)."""
        name = "ui" if side == 0 else "iu"
        return self.get_buffer(f"{name}_indptr"), self.get_buffer(f"{name}_indices")

    def _encode(
        self, side: int, nodes: torch.Tensor, fanouts: tuple[int, ...], gen: torch.Generator | None
    ) -> torch.Tensor:
        """Vectors after ``len(fanouts)`` hops for ``nodes`` of ``side`` (sampling the tree level by level)."""
        # Sample the computation tree: level 0 = nodes, level l+1 = fanouts[l] neighbours of each level-l node.
        levels = [nodes]
        valids: list[torch.Tensor] = []
        for depth, fan in enumerate(fanouts):
            indptr, indices = self._csr((side + depth) % 2)
            nb, ok = sample_neighbours(indptr, indices, levels[-1], fan, gen)
            levels.append(nb.reshape(-1))
            valids.append(ok)
        # Bottom-up: h[l] holds vectors of level-l nodes after (L - l) hops. The 0-hop vectors are computed
        # once per distinct node of each side and gathered: a batch's trees repeat nodes (on Gowalla a paper
        # batch has ~24k distinct nodes among ~47k), which halves the dense layer's work and gives the ID
        # tables' sparse gradients unique rows.
        hs: list[torch.Tensor] = [nodes] * len(levels)
        for s in (0, 1):
            ds = [d for d in range(len(levels)) if (side + d) % 2 == s]
            if not ds:
                continue
            uniq, inv = torch.unique(torch.cat([levels[d] for d in ds]), return_inverse=True)
            x = self._x(s, uniq)
            for d, part in zip(ds, inv.split([len(levels[d]) for d in ds]), strict=True):
                hs[d] = x[part]
        n_hops = len(fanouts)
        for hop in range(n_hops):
            new = []
            for d in range(n_hops - hop):
                s = (side + d) % 2
                child = hs[d + 1].view(-1, fanouts[d], hs[d + 1].shape[-1])
                agg = _masked_mean(child, valids[d])
                new.append(self.act(self._layer(s, hop)(torch.cat([hs[d], agg], dim=1))))
            hs = new
        return hs[0]

    def forward(
        self, users: np.ndarray, items: np.ndarray, gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled vectors of a batch's users and items (see the module docstring).

        ``gen`` draws the neighbour samples; it must live on the encoder's device (None: torch's default).
        """
        dev = self.user_emb.weight.device
        return (
            self._encode(0, _ids(users, dev), self.user_fanouts, gen),
            self._encode(1, _ids(items, dev), self.item_fanouts, gen),
        )

    def id_embeddings(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ID embeddings (for the L2 penalty)."""
        return self.user_emb(users), self.item_emb(items)

    @torch.no_grad()
    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All users and items with *all* neighbours averaged (deterministic inference)."""
        dev = self.user_emb.weight.device
        if self._full_mats is None:
            self._full_mats = (
                _row_mean_matrix(self.graph.user_items, dev),
                _row_mean_matrix(self.graph.item_users, dev),
            )
        mean_of = (
            self._full_mats
        )  # mean_of[0] @ item vectors -> per user; mean_of[1] @ user vectors -> per item
        x = [
            self._x(0, torch.arange(self.graph.n_users, device=dev)),
            self._x(1, torch.arange(self.graph.n_items, device=dev)),
        ]

        def run(side: int, n_hops: int) -> torch.Tensor:
            hs = list(x)  # vectors of [users, items] after 0 hops
            for hop in range(n_hops):
                hs = [
                    self.act(self._layer(s, hop)(torch.cat([hs[s], mean_of[s] @ hs[1 - s]], dim=1)))
                    for s in (0, 1)
                ]
            return hs[side]

        return run(0, len(self.user_fanouts)), run(1, len(self.item_fanouts))


def normalized_adjacency(graph: BipartiteGraph) -> sp.csr_matrix:
    """The symmetric (n_users + n_items) square matrix ``[[0, R~], [R~^T, 0]]`` (float32 CSR)."""
    rn = graph.normalized_adjacency()
    return sp.bmat([[None, rn], [rn.T, None]], format="csr", dtype=np.float32)


def svd_init(graph: BipartiteGraph, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ID embeddings from the top-``dim`` singular triplets of R~ = D_u^-1/2 R D_i^-1/2.

    Returns (user float32 [n_users, dim], item float32 [n_items, dim]) = (U sqrt(S), V sqrt(S)), scaled so
    that the mean row norm is 1 (Adam's step size then means the same thing on any dataset). ``dim`` must be
    smaller than both sides; ties in the spectrum make the basis arbitrary, so the ARPACK start vector is
    seeded for determinism.
    """
    from scipy.sparse.linalg import svds

    rn = graph.normalized_adjacency().astype(np.float64)
    k = min(dim, min(rn.shape) - 1)
    v0 = np.random.default_rng(seed).random(min(rn.shape))
    u, s, vt = svds(rn, k=k, v0=v0)
    order = np.argsort(-s)
    u, s, vt = u[:, order], s[order], vt[order]
    # Fix the sign of each singular pair (svds may flip it): make the largest-magnitude item entry positive.
    flip = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
    u, vt = u * flip, vt * flip[:, None]
    ue, ie = u * np.sqrt(s), vt.T * np.sqrt(s)
    scale = 1.0 / max(np.linalg.norm(np.vstack([ue, ie]), axis=1).mean(), 1e-12)
    ue, ie = ue * scale, ie * scale
    if k < dim:  # tiny graphs: pad with small noise
        rng = np.random.default_rng(seed)
        ue = np.hstack([ue, rng.normal(0, 0.01, (ue.shape[0], dim - k))])
        ie = np.hstack([ie, rng.normal(0, 0.01, (ie.shape[0], dim - k))])
    return ue.astype(np.float32), ie.astype(np.float32)


class _SymmetricSpMM(torch.autograd.Function):
    """``A @ x`` for a *symmetric* sparse A, with the backward pass ``A @ grad`` (A^T = A).

    torch's generic sparse-CSR backward transposes A on every call, which made one 3-layer Gowalla
    propagation (forward + backward) ~18x slower (1.46 s vs 0.08 s on 2 cores, measured in development).
    """

    @staticmethod
    def forward(ctx: Any, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, ctx.adj @ grad


class LightGCNEncoder(nn.Module):
    """LightGCN-style propagation (no weights, no non-linearity) over learned ID embeddings."""

    def __init__(
        self, graph: BipartiteGraph, dim: int = 64, layers: int = 3, init: str = "svd", seed: int = 0
    ) -> None:
        super().__init__()
        self.graph = graph
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.layers = layers
        self.out_dim = dim
        self.user_emb = nn.Embedding(self.n_users, dim)
        self.item_emb = nn.Embedding(self.n_items, dim)
        if init == "svd":
            ue, ie = svd_init(graph, dim, seed)
            with torch.no_grad():
                self.user_emb.weight.copy_(torch.from_numpy(ue))
                self.item_emb.weight.copy_(torch.from_numpy(ie))
        else:
            nn.init.normal_(self.user_emb.weight, std=0.1)
            nn.init.normal_(self.item_emb.weight, std=0.1)
        # Not a parameter or buffer: rebuilt from the graph (state_dict stays small and device-agnostic).
        self._adj: torch.Tensor | None = None

    def adjacency(self) -> torch.Tensor:
        """The normalised adjacency as a torch sparse CSR tensor on the embeddings' device (cached)."""
        dev = self.user_emb.weight.device
        if self._adj is None or self._adj.device != dev:
            self._adj = _to_torch_csr(normalized_adjacency(self.graph), dev)
        return self._adj

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean_l A~^l E^0`` for all users and items (differentiable)."""
        e = torch.cat([self.user_emb.weight, self.item_emb.weight], dim=0)
        adj = self.adjacency()
        acc = e
        for _ in range(self.layers):
            e = _SymmetricSpMM.apply(adj, e)
            acc = acc + e
        out = acc / (self.layers + 1)
        return out[: self.n_users], out[self.n_users :]

    def forward(
        self, users: np.ndarray, items: np.ndarray, gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagated vectors of a batch's users and items (one full propagation per call)."""
        del gen  # deterministic encoder
        dev = self.user_emb.weight.device
        u, i = self.propagate()
        return u[_ids(users, dev)], i[_ids(items, dev)]

    def id_embeddings(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ID embeddings (for the L2 penalty)."""
        return self.user_emb(users), self.item_emb(items)

    @torch.no_grad()
    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All users and items (the same computation as training: LightGCN is deterministic)."""
        return self.propagate()

    @torch.no_grad()
    def foldin_items(self) -> tuple[np.ndarray, float]:
        """Per-item vectors and power p for folding in a new user from its item list (see HashGNN.foldin).

        A new user u with items I has no ID embedding (taken as 0). Its layer-l vector is
        ``e_u^l = sum_{i in I} e_i^{l-1} / (sqrt(|I|) sqrt(d_i))`` (d_i: item degree in the training graph; the
        new user's own edge is ignored), so its output ``mean_{l=0..L} e_u^l`` equals
        ``sum_{i in I} f_i / |I|^0.5`` with ``f_i = sum_{l=0}^{L-1} e_i^l / (sqrt(d_i) (L + 1))``. Exact for
        this encoder apart from the ignored degree change.
        """
        e = torch.cat([self.user_emb.weight, self.item_emb.weight], dim=0)
        adj = self.adjacency()
        acc = torch.zeros(self.n_items, e.shape[1], device=e.device)
        for _ in range(self.layers):
            acc = acc + e[self.n_users :]
            e = adj @ e
        deg = torch.from_numpy(self.graph.item_degree.astype(np.float32)).to(e.device)
        inv = torch.where(deg > 0, deg.clamp_min(1.0).rsqrt(), torch.zeros_like(deg))
        f = acc * inv[:, None] / (self.layers + 1)
        return f.cpu().numpy().astype(np.float32), 0.5
