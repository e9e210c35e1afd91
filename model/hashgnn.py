"""HashGNN: a graph encoder, a code head (the hash layer) and an optional re-rank head, and their losses.

API (PyG-LightGCN style):

- :meth:`HashGNN.embed_all` -> every user's and item's code-head output ``z`` (codes are ``sign(z)``,
  :mod:`hashrec.data.codes`) and re-rank vectors (numpy, deterministic): what ``embeddings.npz`` holds;
- :meth:`HashGNN.loss` -> the weighted training losses of one batch at a given training progress;
- :meth:`HashGNN.foldin` -> the arrays that encode a user the model never saw from its item list.

Heads (``TrainConfig.rerank_head``):

- one head (the paper): ``z = tanh(W h + b)`` is both the code (its sign) and the re-rank vector;
- two heads (the default): a *code head* ``z_c = tanh(W_c h + b_c)`` trained for Hamming ranking (its own
  softmax temperature ``code_tau`` and guidance schedule ``code_pure_ste_at``), and a *re-rank head*
  ``v = tanh(W_r h + b_r)`` trained as the one head is (guided STE at ``softmax_tau``), on a shared encoder.
  One ``z`` cannot be both: every setting that made the codes better made the re-ranker worse. The heads
  are made to agree by distillation: the code head's softmax over a batch's candidates is pulled towards
  the re-rank head's continuous one (KL, weight ``distill_weight``), i.e. the re-ranker's ranking of the
  sampled items is taught to the codes.

Losses of a head (each weighted, 0 switches one off), on its guided codes ``h`` (:mod:`.hashing`):
reconstruction and BPR (or margin) against the example's sampled negatives, and a sampled softmax over the
positive and the batch's shared uniform items. Scores are ``score_scale * <h_u, h_i> / K`` (raw inner
products when ``score_scale`` is None); softmax logits ``<h_u, h_c> / (K tau)``.

Hygiene of the softmax: a shared item that is a training positive of the example's user is never its
negative (masked); and an example scored in code space is scored against candidates in code space, one in
continuous space against continuous candidates (per bit with per-bit guidance), whatever the candidates'
own draws would have been.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hashrec.data import BipartiteGraph
from hashrec.model.config import TrainConfig
from hashrec.model.encoders import LightGCNEncoder, SageEncoder
from hashrec.model.hashing import HashLayer, code_probability, draw_codes, ste_sign
from hashrec.model.losses import bpr_loss, l2_penalty, margin_loss, reconstruction_loss

# masked softmax logits: finite (exp underflows to 0 exactly) so that the distillation's p * log p stays 0
_MASKED = -1e4


@dataclass
class Batch:
    """One training step's examples: edges ``(users[b], pos[b])``, per-example negatives ``neg`` [B, M],
    items ``shared`` [S] shared by the batch as softmax negatives, and ``shared_mask`` = (rows, cols) of
    shared items that are training positives of the example's user (never its negatives)."""

    users: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    shared: np.ndarray
    shared_mask: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class _Logits:
    """Softmax logits of a batch: the positive's [B] and the shared items' [B, S], and their log-sum-exp."""

    pos: torch.Tensor
    shared: torch.Tensor

    @functools.cached_property
    def lse(self) -> torch.Tensor:
        """``log(exp(pos) + sum exp(shared))`` per example [B]."""
        return torch.logaddexp(self.pos, torch.logsumexp(self.shared, dim=1))


@dataclass
class _Head:
    """A head's batch outputs: z of the users, positives, negatives [B, M, K] and shared items [S, K]."""

    u: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor
    shared: torch.Tensor


class HashGNN(nn.Module):
    """The model; ``graph`` is the graph the encoder propagates over (training: the training edges)."""

    def __init__(self, cfg: TrainConfig, graph: BipartiteGraph) -> None:
        super().__init__()
        self.cfg = cfg
        self.bits = cfg.bits
        self.encoder: LightGCNEncoder | SageEncoder
        if cfg.encoder == "lightgcn":
            init = "svd" if cfg.svd_init else "normal"
            self.encoder = LightGCNEncoder(graph, cfg.emb_dim, cfg.layers, init, cfg.seed)
        else:
            self.encoder = SageEncoder(graph, cfg.emb_dim, cfg.dense_dim, cfg.user_fanouts, cfg.item_fanouts)
        d = self.encoder.out_dim
        self.user_hash, self.item_hash = HashLayer(d, cfg.bits), HashLayer(d, cfg.bits)
        self.user_rerank: HashLayer | None = HashLayer(d, cfg.rerank_dim) if cfg.rerank_head else None
        self.item_rerank: HashLayer | None = HashLayer(d, cfg.rerank_dim) if cfg.rerank_head else None
        if cfg.encoder == "lightgcn" and cfg.svd_init:
            self._init_rotation(cfg.seed)

    def _heads(self) -> list[tuple[HashLayer, HashLayer]]:
        """(user, item) layers of each head: the code head, then the re-rank head when there is one."""
        heads = [(self.user_hash, self.item_hash)]
        if self.user_rerank is not None and self.item_rerank is not None:
            heads.append((self.user_rerank, self.item_rerank))
        return heads

    def _init_rotation(self, seed: int) -> None:
        """Start each head as a scaled random rotation shared by its user and item sides.

        With SVD-initialised embeddings, ``<z_u, z_i>`` then starts close to the SVD score, and a random
        rotation spreads the variance of the leading singular directions over all bits (the idea of ITQ),
        which sign quantisation needs; the gain makes tanh neither saturated nor linear. Rectangular when
        the head's width differs from the encoder's (orthonormal rows or columns).
        """
        with torch.no_grad():
            full_u, full_i = self.encoder.full()
            h = torch.cat([full_u, full_i])
            for n, (user, item) in enumerate(self._heads()):
                g = torch.Generator().manual_seed(seed + 1 + n)
                out, d = user.fc.weight.shape
                a = torch.randn(out, d, generator=g)
                q, _ = torch.linalg.qr(a if out >= d else a.T)
                w = q if out >= d else q.T
                gain = 1.0 / max(float((h @ w.T).std()), 1e-8)
                for layer in (user, item):
                    layer.fc.weight.copy_(w * gain)
                    layer.fc.bias.zero_()

    # -- inference --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_all(self) -> dict[str, np.ndarray]:
        """``user_z``/``item_z`` (code head) and, with two heads, ``user_vectors``/``item_vectors`` (float32)."""
        was = self.training
        self.eval()
        hu, hi = self.encoder.full()
        out = {"user_z": self.user_hash(hu), "item_z": self.item_hash(hi)}
        if self.user_rerank is not None and self.item_rerank is not None:
            out.update(user_vectors=self.user_rerank(hu), item_vectors=self.item_rerank(hi))
        self.train(was)
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    # -- training -----------------------------------------------------------------------------------------------
    def score(self, hu: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Scores of aligned rows ([B, K] x [B, K] -> [B]) or of each row's candidates ([B, K] x [B, M, K])."""
        s = (hu * hi).sum(-1) if hi.dim() == hu.dim() else torch.einsum("bk,bmk->bm", hu, hi)
        scale = self.cfg.score_scale
        return s if scale is None else s * (scale / hu.shape[-1])

    def forward(
        self, batch: Batch, progress: float, sample_gen: torch.Generator | None, gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """The weighted losses of one batch: :meth:`loss` (the entry point DDP synchronises through)."""
        return self.loss(batch, progress, sample_gen, gen)

    def loss(
        self, batch: Batch, progress: float, sample_gen: torch.Generator | None, gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """``{"loss": total, <term>: value, ...}`` of one batch at training ``progress`` (0..1).

        ``sample_gen``: torch RNG on the model's device (GraphSAGE's neighbour sampling); ``gen``: CPU torch
        RNG of the guidance draws. Terms: ``rec``, ``rank``, ``softmax`` of the code head, the same with a
        ``rerank_`` prefix for the re-rank head, ``distill``, ``l2``.
        """
        cfg = self.cfg
        b, m = batch.neg.shape
        items = np.concatenate([batch.pos, batch.neg.ravel(), batch.shared])
        uniq, inv = np.unique(items, return_inverse=True)
        enc_u, enc_i = self.encoder(batch.users, uniq, sample_gen)
        dev = enc_u.device
        inv_t = torch.from_numpy(inv).to(dev)
        mask = None
        if batch.shared_mask is not None and len(batch.shared_mask[0]):
            # one boolean [B, S] matrix for every head's masked_fill_ (the pairs can be millions on dense data)
            mask = torch.zeros((b, len(batch.shared)), dtype=torch.bool, device=dev)
            mask[
                torch.from_numpy(batch.shared_mask[0]).to(dev), torch.from_numpy(batch.shared_mask[1]).to(dev)
            ] = True

        def head(layers: tuple[HashLayer, HashLayer], grad: float = 1.0) -> _Head:
            eu, ei = (enc_u, enc_i) if grad == 1.0 else (_scale_grad(enc_u, grad), _scale_grad(enc_i, grad))
            zi = layers[1](ei)[inv_t]
            return _Head(layers[0](eu), zi[:b], zi[b : b + b * m].view(b, m, -1), zi[b + b * m :])

        out: dict[str, torch.Tensor] = {}
        heads = self._heads()
        code = head(heads[0], cfg.code_grad_scale if len(heads) > 1 else 1.0)
        code_prob = code_probability(
            progress, cfg.code_prob_start, cfg.code_pure_ste_at if len(heads) > 1 else cfg.pure_ste_at
        )
        code_tau = cfg.code_tau if len(heads) > 1 else cfg.softmax_tau
        # with two heads the code head (and the distillation) see the first code_negatives shared items: a
        # uniform subsample, and each [B, S] matrix is most of a step's cost
        n = min(cfg.code_negatives, len(batch.shared)) if len(heads) > 1 else len(batch.shared)
        code_mask = None if mask is None else mask[:, :n]
        total, student = self._head_losses(
            _Head(code.u, code.pos, code.neg, code.shared[:n]),
            0.0 if cfg.continuous else code_prob,
            code_tau,
            code_mask,
            gen,
            out,
            "",
        )
        if len(heads) > 1:
            rerank = head(heads[1])
            p = (
                code_probability(progress, cfg.code_prob_start, cfg.pure_ste_at)
                if cfg.rerank_ste and not cfg.continuous
                else 0.0
            )
            r_total, _ = self._head_losses(rerank, p, cfg.softmax_tau, mask, gen, out, "rerank_")
            total = total + r_total
            if cfg.distill_weight > 0 and student is not None:
                teacher = _Head(rerank.u, rerank.pos, rerank.neg, rerank.shared[:n])
                out["distill"] = self._distill(student, teacher, code_mask)
                total = total + cfg.distill_weight * out["distill"]
        if cfg.l2 > 0:
            eu, ei = self.encoder.id_embeddings(
                torch.from_numpy(np.asarray(batch.users, np.int64)).to(dev), torch.from_numpy(uniq).to(dev)
            )
            out["l2"] = l2_penalty(eu, ei)
            total = total + cfg.l2 * out["l2"]
        out["loss"] = total
        return out

    def _head_losses(
        self,
        z: _Head,
        prob: float,
        tau: float,
        mask: torch.Tensor | None,
        gen: torch.Generator,
        out: dict[str, torch.Tensor],
        prefix: str,
    ) -> tuple[torch.Tensor, _Logits | None]:
        """Add one head's weighted terms to ``out``; returns (their sum, the softmax logits or None)."""
        cfg = self.cfg
        # One draw per example (or per bit) shared by the user and its own items, as in the official code:
        # the pair is compared in the same space. The paper preset draws the negatives' own (negative_draw).
        draw = draw_codes(z.u, prob, cfg.guidance, gen)
        hu, hp = _mix(z.u, draw), _mix(z.pos, draw)
        neg_draw = (
            draw.unsqueeze(1) if cfg.negative_draw == "shared" else draw_codes(z.neg, prob, cfg.guidance, gen)
        )
        hn = _mix(z.neg, neg_draw)
        total = torch.zeros((), device=hu.device)
        s_pos, s_neg = self.score(hu, hp), self.score(hu, hn)
        if cfg.rec_weight > 0:
            out[prefix + "rec"] = reconstruction_loss(s_pos, s_neg, cfg.rec_reduction)
            total = total + cfg.rec_weight * out[prefix + "rec"]
        if cfg.rank_weight > 0:
            rank = bpr_loss(s_pos, s_neg) if cfg.ranking == "bpr" else margin_loss(s_pos, s_neg, cfg.margin)
            out[prefix + "rank"] = rank
            total = total + cfg.rank_weight * rank
        logits = None
        if cfg.softmax_weight > 0 and len(z.shared):
            logits = self._logits(z, draw, tau, mask)
            out[prefix + "softmax"] = (logits.lse - logits.pos).mean()  # cross-entropy of the positive
            total = total + cfg.softmax_weight * out[prefix + "softmax"]
        return total, logits

    def _logits(self, z: _Head, draw: torch.Tensor, tau: float, mask: torch.Tensor | None) -> _Logits:
        """Softmax logits of the positive [B] and of the shared items [B, S], ``<h_u, h_c>/(K tau)``.

        Each example sees every candidate in its own space: where its draw says code, the candidates'
        codes, elsewhere their z (per bit with per-bit draws): ``(h_u * d) @ sign(Z)^T + (h_u * (1 - d)) @ Z^T``,
        computed as one product over the concatenated bits ``[h_u d, h_u (1 - d)] @ [sign(Z), Z]^T``: one
        [B, S] output instead of two and their sum (faster: ``benchmarks/mixed_softmax.py``).
        Masked pairs (training positives among the shared items) get a logit of -1e4. The positive's column
        is kept apart (no [B, 1 + S] concatenation: every pass over these matrices is most of a step).
        """
        hu = _mix(z.u, draw) / (z.u.shape[-1] * tau)
        pos = (hu * _mix(z.pos, draw)).sum(-1)
        if bool(draw.all()) or not bool(draw.any()):
            shared = hu @ (ste_sign(z.shared) if bool(draw.all()) else z.shared).T
        else:
            d = draw.to(hu.dtype)  # per example ([B, 1]) or per bit ([B, K]): the same product
            shared = torch.cat([hu * d, hu * (1 - d)], 1) @ torch.cat([ste_sign(z.shared), z.shared], 1).T
        if mask is not None:
            shared = shared.masked_fill(mask, _MASKED)
        return _Logits(pos, shared)

    def _distill(self, student: _Logits, rerank: _Head, mask: torch.Tensor | None) -> torch.Tensor:
        """KL(teacher || student) over each example's candidates, the teacher being the re-rank head's
        continuous scores (what re-ranks), at its temperature, and no gradient to it.

        ``KL = sum_c p_T(c) (log p_T(c) - s_c) + lse(s)``: the student's log-sum-exp is its softmax term's,
        so the distillation adds one pass over the logits, not a second log-softmax.
        """
        with torch.no_grad():
            t = self._logits(
                rerank, torch.zeros_like(rerank.u[:, :1], dtype=torch.bool), self.cfg.softmax_tau, mask
            )
            p_pos, p_shared = torch.exp(t.pos - t.lse), torch.exp(t.shared - t.lse[:, None])
            neg_entropy = p_pos * (t.pos - t.lse) + (p_shared * (t.shared - t.lse[:, None])).sum(1)
        cross = p_pos * student.pos + (p_shared * student.shared).sum(1)
        return (neg_entropy - cross + student.lse).mean()

    # -- new users ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def foldin(self, user_items: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Fold-in arrays (:class:`hashrec.index.bundle.FoldIn`): each head applied to pooled item features.

        - LightGCN: exact (:meth:`LightGCNEncoder.foldin_items`): features from the item embeddings,
          power 0.5, and each head's own weights.
        - GraphSAGE: a new user has no ID embedding and its 2-hop tree is non-linear, so the best affine
          approximation is used: features = the items' encoder outputs, power 1 (the mean), and per head
          ``W, b`` fitted by ridge least squares so that ``W mean_{i in I_u} f_i + b`` matches the head's
          pre-activation for the training users (``user_items``: their CSR, required).
        """
        user_layers = [u for u, _ in self._heads()]
        if isinstance(self.encoder, LightGCNEncoder):
            f, power = self.encoder.foldin_items()
            heads = [(u.fc.weight.cpu().numpy(), u.fc.bias.cpu().numpy()) for u in user_layers]
        else:
            f, power, heads = self._sage_foldin(user_items, user_layers)
        code, rerank = heads[0], heads[-1]  # one head: both are the same arrays
        return {
            "foldin_item": np.asarray(f, np.float32),
            "foldin_power": np.asarray(power, np.float32),
            "foldin_code_weight": np.asarray(code[0], np.float32),
            "foldin_code_bias": np.asarray(code[1], np.float32),
            "foldin_vector_weight": np.asarray(rerank[0], np.float32),
            "foldin_vector_bias": np.asarray(rerank[1], np.float32),
        }

    def _sage_foldin(
        self, user_items: np.ndarray | None, user_layers: list[HashLayer]
    ) -> tuple[np.ndarray, float, list[tuple[np.ndarray, np.ndarray]]]:
        import scipy.sparse as sp

        if user_items is None:
            raise ValueError("GraphSAGE fold-in needs the training user-item CSR")
        hu, hi = self.encoder.full()
        f = hi.cpu().numpy().astype(np.float64)
        r = sp.csr_matrix(user_items, dtype=np.float64)
        deg = np.asarray(r.sum(axis=1)).ravel()
        x = (sp.diags(np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)) @ r) @ f
        x1 = np.hstack([x, np.ones((len(x), 1))])
        gram = x1.T @ x1 + 1e-3 * np.eye(x1.shape[1])
        heads = []
        for layer in user_layers:
            target = layer.fc(hu).cpu().numpy().astype(np.float64)
            coef = np.linalg.solve(gram, x1.T @ target)  # [d + 1, out]
            heads.append((coef[:-1].T, coef[-1]))
        return f, 1.0, heads


def _scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` forward; its gradient multiplied by ``scale`` backward (0: a detached view)."""
    return x.detach() if scale == 0 else x * scale + x.detach() * (1.0 - scale)


def _mix(z: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
    """``ste_sign(z)`` where ``draw`` says code, ``z`` elsewhere (``draw`` broadcasts over ``z``)."""
    if bool(draw.all()):
        return ste_sign(z)
    if not bool(draw.any()):
        return z
    return torch.where(draw, ste_sign(z), z)


__all__ = ["Batch", "HashGNN"]
