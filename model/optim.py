"""Optimizers: lazy ("row") Adam for the sparse gradients of GraphSAGE's ID embedding tables.

:class:`RowAdam` computes exactly what ``torch.optim.SparseAdam`` computes (the Adam moments and the
parameter are updated only on the rows a batch touched, with one step counter per table), but gathers and
scatters those rows with ``index_select`` / ``index_copy_`` / ``index_add_`` instead of building sparse
tensors and masking the dense moments with them. On a Gowalla paper step (~24k touched rows of 120 floats per
table) ``SparseAdam`` spent ~40% of the step's CPU time in ``sparse_mask`` and sparse ``add_``.

Its state has SparseAdam's layout (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter), so checkpoints
written with either load into the other.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class RowAdam(torch.optim.Optimizer):
    """Adam on the rows present in each parameter's sparse (COO) gradient; see the module docstring.

    Args:
        params: tensors whose ``.grad`` is sparse with one sparse dimension (``nn.Embedding(sparse=True)``).
        lr, betas, eps: as ``torch.optim.SparseAdam`` (no weight decay, like it).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if lr <= 0.0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps <= 0.0:
            raise ValueError(f"eps must be > 0, got {eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        """One update of every parameter that has a gradient. Dense gradients are refused (use Adam)."""
        del closure
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("RowAdam takes sparse gradients only (nn.Embedding(sparse=True))")
                grad = p.grad.coalesce()  # duplicate rows are summed, as SparseAdam does
                rows, values = grad.indices()[0], grad.values()
                if values.numel() == 0:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m = state["exp_avg"].index_select(0, rows).lerp_(values, 1.0 - beta1)
                v = state["exp_avg_sq"].index_select(0, rows).lerp_(values * values, 1.0 - beta2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
                p.index_add_(0, rows, m.div_(v.sqrt_().add_(group["eps"])), alpha=-step_size)
