"""HashGNN's losses, each a pure function of scores (the model decides how scores are computed).

Scores of the codes are ``s = scale * <h_u, h_i> / K`` where ``h`` are the (guided) codes, so ``s`` lies in
``[-scale, scale]`` whatever K is. All losses are means over the examples of a batch.

- :func:`reconstruction_loss`: cross-entropy of observed links (label 1) against sampled non-links (label 0),
  ``-log sigma(s_pos) - sum_j log(1 - sigma(s_neg_j))``, HashGNN's graph reconstruction term.
- :func:`bpr_loss`: ``mean_j softplus(s_neg_j - s_pos)`` (= -log sigma(s_pos - s_neg)), the paper's ranking loss.
- :func:`margin_loss`: ``mean_j max(0, margin - s_pos + s_neg_j)``, the triplet variant.

The sampled softmax (cross-entropy of the positive among the batch's shared items, not in the paper: many
negatives per example for one matrix product) and the distillation are computed by
:class:`hashrec.model.hashgnn.HashGNN` itself, on logits it keeps in two parts (positive, shared items).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)


def reconstruction_loss(pos: torch.Tensor, neg: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """pos [B], neg [B, M] logits -> scalar: the example's 1 + M cross-entropy terms summed (``sum``) or
    averaged (``mean``, the official code's), then the mean over the batch."""
    terms = F.softplus(-pos) + F.softplus(neg).sum(dim=1)
    return (terms if reduction == "sum" else terms / (1 + neg.shape[1])).mean()


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """pos [B], neg [B, M] -> scalar ``mean softplus(neg - pos)``."""
    return F.softplus(neg - pos[:, None]).mean()


def margin_loss(pos: torch.Tensor, neg: torch.Tensor, margin: float) -> torch.Tensor:
    """pos [B], neg [B, M] -> scalar ``mean relu(margin - pos + neg)``."""
    return F.relu(margin - pos[:, None] + neg).mean()


def l2_penalty(*tensors: torch.Tensor) -> torch.Tensor:
    """``sum ||t||^2 / 2`` divided by the batch size (rows of the first tensor)."""
    n = max(tensors[0].shape[0], 1)
    return sum((t.pow(2).sum() for t in tensors), torch.zeros((), device=tensors[0].device)) / (2 * n)
