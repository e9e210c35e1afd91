"""HashGNN: a graph encoder, two hash layers (users, items) and the guided-STE losses.

API (PyG-LightGCN style):

- :meth:`HashGNN.embed` -> continuous codes ``z`` (tanh outputs) of a batch's users and items;
- :meth:`HashGNN.embed_all` -> ``z`` of every user and item (numpy, deterministic): what ``embeddings.npz``
  holds; the binary codes are ``sign(z)`` (:mod:`hashrec.data.codes`);
- :meth:`HashGNN.score` -> ``scale * <h_u, h_i> / K`` for codes or continuous vectors;
- :meth:`HashGNN.loss` -> the weighted training losses of one batch at a given code probability;
- :meth:`HashGNN.foldin` -> the arrays that encode a user the model never saw from its item list.

The continuous counterpart (``TrainConfig.continuous``) is the same module trained with code probability 0:
same encoder, same tanh layer, never a sign.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hashrec.model.config import TrainConfig
from hashrec.data import BipartiteGraph
from hashrec.model.encoders import LightGCNEncoder, SageEncoder
from hashrec.model.hashing import HashLayer, guided_codes, ste_sign
from hashrec.model.losses import (
    bit_penalty,
    bpr_loss,
    l2_penalty,
    margin_loss,
    reconstruction_loss,
    softmax_loss,
)


class HashGNN(nn.Module):
    """The model; ``graph`` is the training graph (the encoder propagates over it)."""

    def __init__(self, cfg: TrainConfig, graph: BipartiteGraph) -> None:
        super().__init__()
        self.cfg = cfg
        self.bits = cfg.bits
        self.encoder: LightGCNEncoder | SageEncoder
        if cfg.encoder == "lightgcn":
            self.encoder = LightGCNEncoder(
                graph, cfg.emb_dim, cfg.layers, "svd" if cfg.svd_init else "normal", cfg.seed
            )
        else:
            self.encoder = SageEncoder(graph, cfg.emb_dim, cfg.dense_dim, cfg.user_fanouts, cfg.item_fanouts)
        self.user_hash = HashLayer(self.encoder.out_dim, cfg.bits)
        self.item_hash = HashLayer(self.encoder.out_dim, cfg.bits)
        if cfg.encoder == "lightgcn" and cfg.svd_init:
            self._init_rotation(cfg.seed)

    def _init_rotation(self, seed: int) -> None:
        """Start the hash layers as a scaled random rotation shared by both sides.

        With SVD-initialised embeddings, ``<z_u, z_i>`` then starts close to the SVD score, and a random
        rotation spreads the variance of the leading singular directions over all bits (the idea of ITQ),
        which sign quantisation needs; the gain makes tanh neither saturated nor linear. Rectangular when
        K != emb_dim (orthonormal rows or columns).
        """
        g = torch.Generator().manual_seed(seed + 1)
        a = torch.randn(self.bits, self.encoder.out_dim, generator=g)
        q, _ = torch.linalg.qr(a if self.bits >= self.encoder.out_dim else a.T)
        w = q if self.bits >= self.encoder.out_dim else q.T
        with torch.no_grad():
            with torch.no_grad():
                full_u, full_i = self.encoder.full()
            h = torch.cat([full_u, full_i])
            proj = h @ w.T
            gain = 1.0 / max(float(proj.std()), 1e-8)
            for layer in (self.user_hash, self.item_hash):
                layer.fc.weight.copy_(w * gain)
                layer.fc.bias.zero_()

    # -- forward ------------------------------------------------------------------------------------------
    def embed(
        self, users: np.ndarray, items: np.ndarray, sample_gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z of a batch: (users [len(users), K], items [len(items), K]) in (-1, 1), differentiable.

        ``sample_gen``: the torch generator of GraphSAGE's neighbour sampling, on the model's device.
        """
        hu, hi = self.encoder(users, items, sample_gen)
        return self.user_hash(hu), self.item_hash(hi)

    @torch.no_grad()
    def embed_all(self) -> tuple[np.ndarray, np.ndarray]:
        """z of all users and items as float32 numpy arrays (eval mode, deterministic)."""
        was = self.training
        self.eval()
        hu, hi = self.encoder.full()
        uz, iz = self.user_hash(hu), self.item_hash(hi)
        self.train(was)
        return uz.float().cpu().numpy(), iz.float().cpu().numpy()

    def score(self, hu: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """``scale * <h_u, h_i> / K`` for aligned rows ([B, K] x [B, K] -> [B]) or [B, K] x [B, M, K] -> [B, M]."""
        s = (hu * hi).sum(-1) if hi.dim() == hu.dim() else torch.einsum("bk,bmk->bm", hu, hi)
        return s * (self.cfg.score_scale / self.bits)

    def loss(
        self,
        users: np.ndarray,
        pos: np.ndarray,
        neg: np.ndarray,
        shared: np.ndarray,
        code_prob: float,
        sample_gen: torch.Generator | None,
        gen: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """Weighted losses of one batch: ``{"loss": total, "rec": ..., "rank": ..., "softmax": ..., "bits": ..., "l2": ...}``.

        Args:
            users, pos: [B] the batch's observed edges; neg: [B, M] sampled negatives of each example;
            shared: [S] items shared by the batch as extra softmax negatives (may be empty).
            code_prob: probability of using the binary code (0 in continuous mode).
            sample_gen: torch RNG on the model's device (GraphSAGE neighbour sampling);
            gen: CPU torch RNG (guidance draws).
        """
        cfg = self.cfg
        b, m = neg.shape
        items = np.concatenate([pos, neg.ravel(), shared])
        uniq, inv = np.unique(items, return_inverse=True)
        zu, zi_u = self.embed(users, uniq, sample_gen)
        dev = zu.device
        zi = zi_u[torch.from_numpy(inv).to(dev)]
        zp, zn, zs = zi[:b], zi[b : b + b * m].view(b, m, -1), zi[b + b * m :]
        p = 0.0 if cfg.continuous else code_prob
        # One draw per example (or per bit) shared by the user, its positive and its negatives, as in the
        # official code: the pair is compared in the same space.
        hu, draw = guided_codes(zu, p, cfg.guidance, gen)
        hp, _ = guided_codes(zp, p, cfg.guidance, gen, draw=draw)
        hn, _ = guided_codes(zn, p, cfg.guidance, gen, draw=draw.unsqueeze(1))
        out: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=dev)
        s_pos, s_neg = self.score(hu, hp), self.score(hu, hn)
        if cfg.rec_weight > 0:
            out["rec"] = reconstruction_loss(s_pos, s_neg)
            total = total + cfg.rec_weight * out["rec"]
        if cfg.rank_weight > 0:
            out["rank"] = (
                bpr_loss(s_pos, s_neg) if cfg.ranking == "bpr" else margin_loss(s_pos, s_neg, cfg.margin)
            )
            total = total + cfg.rank_weight * out["rank"]
        excl = None
        if cfg.inbatch and (cfg.softmax_weight > 0 or cfg.cont_weight > 0):
            excl = self._inbatch_exclusions(pos)
        if cfg.softmax_weight > 0:
            hs, _ = guided_codes(zs, p, cfg.guidance, gen) if len(shared) else (zs, None)
            logits, target = self._softmax_logits(hu, hp, hs, self._code_tau(draw))
            out["softmax"] = softmax_loss(logits, target, excl)
            total = total + cfg.softmax_weight * out["softmax"]
        if cfg.cont_weight > 0:
            # The same softmax on the continuous z, never signed: z is what re-ranks the Hamming candidates,
            # and once the schedule reaches pure STE the code losses only train it through sign().
            logits, target = self._softmax_logits(zu, zp, zs, cfg.cont_tau)
            out["cont"] = softmax_loss(logits, target, excl)
            total = total + cfg.cont_weight * out["cont"]
        if cfg.bit_reg > 0:
            # On the batch's users and its distinct items (mostly the uniform shared negatives, so an
            # unbiased sample of the catalogue's codes).
            out["bits"] = bit_penalty(zu) + bit_penalty(zi_u)
            total = total + cfg.bit_reg * out["bits"]
        if cfg.l2 > 0:
            eu, ei = self.encoder.id_embeddings(
                torch.from_numpy(np.asarray(users, np.int64)).to(dev), torch.from_numpy(uniq).to(dev)
            )
            out["l2"] = l2_penalty(eu, ei)
            total = total + cfg.l2 * out["l2"]
        out["loss"] = total
        return out

    def _code_tau(self, draw: torch.Tensor) -> float | torch.Tensor:
        """The softmax temperature of each example: ``softmax_tau``, or ``code_tau`` where it uses its code.

        ``draw`` is the guidance draw of the users ([B, 1] per example, [B, K] per bit: the temperature then
        moves with the fraction of bits that are codes). A scalar when ``code_tau`` is unset.
        """
        cfg = self.cfg
        if cfg.code_tau is None or cfg.code_tau == cfg.softmax_tau:
            return cfg.softmax_tau
        frac = draw.to(torch.float32).mean(dim=-1, keepdim=True)  # [B, 1]
        return cfg.softmax_tau + (cfg.code_tau - cfg.softmax_tau) * frac

    def _softmax_logits(
        self, hu: torch.Tensor, hp: torch.Tensor, hs: torch.Tensor, tau: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``<h_u, h_c>/(K tau)`` over the candidates and the target column of each example.

        ``tau``: a scalar or one temperature per example ([B, 1]).

        Candidates: with ``inbatch``, the batch's positives then the shared items (target = the example's
        row); without, the example's own positive then the shared items (target = column 0).
        """
        b = hu.shape[0]
        # The temperature is folded into the user side: [B, K] divisions instead of [B, C].
        hu_t = hu / (self.bits * tau)
        if self.cfg.inbatch:
            logits = hu_t @ torch.cat([hp, hs], dim=0).T
            return logits, torch.arange(b, device=hu.device)
        logits = torch.cat([(hu_t * hp).sum(-1, keepdim=True), hu_t @ hs.T], dim=1)
        return logits, torch.zeros(b, dtype=torch.long, device=hu.device)

    def _inbatch_exclusions(self, pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows, cols) of in-batch candidates that are the example's own item, not negatives.

        Pairs of examples sharing a positive are found by sorting, not with a [B, B] comparison.
        """
        order = np.argsort(pos, kind="stable")
        sp_ = np.asarray(pos)[order]
        starts = np.flatnonzero(np.r_[True, sp_[1:] != sp_[:-1]])
        sizes = np.diff(np.r_[starts, len(sp_)])
        if not (sizes > 1).any():
            return None
        gid = np.repeat(np.arange(len(starts)), sizes)
        a, c = _pairs(gid)
        off = a != c
        dev = self.user_hash.fc.weight.device
        return torch.from_numpy(order[a[off]]).to(dev), torch.from_numpy(order[c[off]]).to(dev)

    # -- new users ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def foldin(self, user_items: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Fold-in arrays (:class:`hashrec.index.bundle.FoldIn`): ``z = tanh(W (sum_{i in I} f_i / |I|^p) + b)``.

        - LightGCN: exact (see :meth:`LightGCNEncoder.foldin_items`): ``f`` from the item embeddings,
          ``p = 0.5``, ``W, b`` = the user hash layer.
        - GraphSAGE: a new user has no ID embedding and its 2-hop tree is non-linear, so the best affine
          approximation is used: ``f_i`` = the item's encoder output, ``p = 1`` (the mean), and ``W, b``
          fitted by ridge least squares so that ``W mean_{i in I_u} f_i + b`` matches the user hash layer's
          pre-activation for the training users (``user_items``: their CSR, required).
        """
        if isinstance(self.encoder, LightGCNEncoder):
            f, power = self.encoder.foldin_items()
            w = self.user_hash.fc.weight.cpu().numpy()
            bias = self.user_hash.fc.bias.cpu().numpy()
        else:
            import scipy.sparse as sp

            if user_items is None:
                raise ValueError("GraphSAGE fold-in needs the training user-item CSR")
            hu, hi = self.encoder.full()
            f = hi.cpu().numpy().astype(np.float64)
            target = (self.user_hash.fc(hu)).cpu().numpy().astype(np.float64)
            r = sp.csr_matrix(user_items, dtype=np.float64)
            deg = np.asarray(r.sum(axis=1)).ravel()
            x = (sp.diags(np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)) @ r) @ f
            x1 = np.hstack([x, np.ones((len(x), 1))])
            reg = 1e-3 * np.eye(x1.shape[1])
            coef = np.linalg.solve(x1.T @ x1 + reg, x1.T @ target)  # [d + 1, K]
            w, bias, power = coef[:-1].T, coef[-1], 1.0
        w32, b32 = np.asarray(w, np.float32), np.asarray(bias, np.float32)
        return {
            "foldin_item": np.asarray(f, np.float32),
            "foldin_power": np.asarray(power, np.float32),
            # one hash layer is both the code head and the re-rank head
            "foldin_code_weight": w32,
            "foldin_code_bias": b32,
            "foldin_vector_weight": w32,
            "foldin_vector_bias": b32,
        }


def _pairs(gid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (a, c) index pairs with ``gid[a] == gid[c]`` for a sorted group-id array (within-group products)."""
    starts = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]])
    sizes = np.diff(np.r_[starts, len(gid)])
    big = sizes > 1
    st, sz = starts[big], sizes[big]
    rep = np.repeat(np.arange(len(st)), sz * sz)
    k = np.arange(len(rep)) - np.repeat(np.cumsum(sz * sz) - sz * sz, sz * sz)
    a = st[rep] + k // sz[rep]
    c = st[rep] + k % sz[rep]
    return a, c


__all__ = ["HashGNN", "ste_sign"]
