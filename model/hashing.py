"""The hash layer and the straight-through estimator with continuous guidance (HashGNN section 3.2).

- ``z = tanh(W h + b)`` (K dims): the continuous code; the binary code is ``b = sign(z)`` with ``sign(0) = +1``
  (the convention of :mod:`hashrec.data.codes`, so training, bundles and FAISS agree bit for bit).
- Straight-through estimator: the forward pass uses ``sign(z)``, the backward pass treats sign as the
  identity (``d b / d z = 1``), written ``z + (sign(z) - z).detach()``.
- Continuous guidance: during training each example (or each bit) uses the code ``b`` with probability
  ``p`` and the continuous ``z`` otherwise. ``p`` follows :func:`code_probability`, a linear schedule from
  ``start`` to 1 that reaches 1 (pure STE) at ``pure_at`` of training progress, so the model finishes training
  on the codes it is evaluated with. (The official code raises ``p`` by 0.02 every 2 epochs and, with 20
  epochs, never gets there.)
"""

from __future__ import annotations

import torch
from torch import nn


def sign(z: torch.Tensor) -> torch.Tensor:
    """+-1 codes with ``sign(0) = +1`` (torch.sign would give 0)."""
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def ste_sign(z: torch.Tensor) -> torch.Tensor:
    """``sign(z)`` forward, identity backward (straight-through estimator)."""
    return z + (sign(z) - z).detach()


def code_probability(progress: float, start: float, pure_at: float) -> float:
    """Probability of using the binary code at training ``progress`` in [0, 1].

    Linear from ``start`` (progress 0) to 1 (progress ``pure_at``), then exactly 1: pure STE for the last
    ``1 - pure_at`` of training.
    """
    if not 0.0 < pure_at <= 1.0:
        raise ValueError(f"pure_at must be in (0, 1], got {pure_at}")
    progress = min(max(progress, 0.0), 1.0)
    if progress >= pure_at:
        return 1.0
    return start + (1.0 - start) * progress / pure_at


def draw_codes(
    z: torch.Tensor, prob: float, mode: str = "example", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Which entries of ``z`` [..., K] use their code: a boolean mask, True with probability ``prob``.

    ``mode``: ``example`` draws one Bernoulli per row (shape [..., 1], broadcast over the bits), ``bit``
    one per entry. ``prob`` 1 (pure STE) and 0 (purely continuous) draw nothing. The draws come from the
    CPU ``generator`` (seeded and checkpointed by the trainer) and are then moved to ``z``'s device.
    """
    shape = (*z.shape[:-1], 1) if mode == "example" else z.shape
    if prob >= 1.0:
        return torch.ones(shape, dtype=torch.bool, device=z.device)
    if prob <= 0.0:
        return torch.zeros(shape, dtype=torch.bool, device=z.device)
    return torch.rand(shape, generator=generator, device="cpu").to(z.device) < prob


class HashLayer(nn.Module):
    """``z = tanh(W h + b)``: a fully-connected layer with tanh (one for users, one for items)."""

    def __init__(self, in_dim: int, bits: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, bits)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """[n, in_dim] -> z [n, bits] in (-1, 1)."""
        return torch.tanh(self.fc(h))
