"""HashGNN's losses, each a pure function of scores (the model decides how scores are computed).

Scores of the codes are ``s = scale * <h_u, h_i> / K`` where ``h`` are the (guided) codes, so ``s`` lies in
``[-scale, scale]`` whatever K is. All losses are means over the examples of a batch.

- :func:`reconstruction_loss`: cross-entropy of observed links (label 1) against sampled non-links (label 0),
  ``-log sigma(s_pos) - sum_j log(1 - sigma(s_neg_j))``, HashGNN's graph reconstruction term.
- :func:`bpr_loss`: ``mean_j softplus(s_neg_j - s_pos)`` (= -log sigma(s_pos - s_neg)), the paper's ranking loss.
- :func:`margin_loss`: ``mean_j max(0, margin - s_pos + s_neg_j)``, the triplet variant.
- :func:`bit_penalty`: balance and independence of the bits of a batch of codes (spectral hashing's two
  properties of a good code), a regulariser on ``z``.
- :func:`softmax_loss`: cross-entropy of the positive among candidates (in-batch positives of the other
  examples + shared sampled items), logits divided by a temperature; not in the paper, it gives many
  negatives per example at the cost of one matrix product and trains faster per CPU-minute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)


def reconstruction_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """pos [B], neg [B, M] logits -> scalar (mean over the batch, summed over the M negatives)."""
    return (F.softplus(-pos) + F.softplus(neg).sum(dim=1)).mean()


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """pos [B], neg [B, M] -> scalar ``mean softplus(neg - pos)``."""
    return F.softplus(neg - pos[:, None]).mean()


def margin_loss(pos: torch.Tensor, neg: torch.Tensor, margin: float) -> torch.Tensor:
    """pos [B], neg [B, M] -> scalar ``mean relu(margin - pos + neg)``."""
    return F.relu(margin - pos[:, None] + neg).mean()


def softmax_loss(
    logits: torch.Tensor, target: torch.Tensor, exclude: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Cross-entropy of ``target`` columns of ``logits`` [B, C]; ``exclude`` = (rows, cols) of false negatives."""
    if exclude is not None and len(exclude[0]):
        logits = logits.index_put(exclude, torch.tensor(float("-inf"), device=logits.device))
    return F.cross_entropy(logits, target)


def bit_penalty(z: torch.Tensor) -> torch.Tensor:
    """z [n, K] -> scalar: ``mean_k mean(z_k)^2 + mean_{k != l} cov(z_k, z_l)^2``.

    The first term pulls every bit towards half +1 and half -1 over the rows, the second decorrelates the
    bits, so that K bits carry close to K bits of information about the rows (0 for balanced independent
    +-1 bits).
    """
    n, k = z.shape
    mean = z.mean(dim=0)
    zc = z - mean
    cov = zc.T @ zc / max(n - 1, 1)
    off = cov - torch.diag_embed(torch.diagonal(cov))
    return mean.pow(2).mean() + off.pow(2).sum() / max(k * (k - 1), 1)


def l2_penalty(*tensors: torch.Tensor) -> torch.Tensor:
    """``sum ||t||^2 / 2`` divided by the batch size (rows of the first tensor)."""
    n = max(tensors[0].shape[0], 1)
    return sum((t.pow(2).sum() for t in tensors), torch.zeros((), device=tensors[0].device)) / (2 * n)
