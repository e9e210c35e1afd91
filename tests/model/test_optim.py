"""RowAdam against torch's SparseAdam: the same maths, so the same parameters after the same steps."""

from __future__ import annotations

import pytest
import torch

from hashrec.model.optim import RowAdam


def _run(opt_cls: type[torch.optim.Optimizer], steps: int) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 6, sparse=True)
    opt = opt_cls([emb.weight], lr=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        # repeated ids in a batch: their gradients must be summed, as SparseAdam does
        ids = torch.randint(0, 50, (40,), generator=gen)
        target = torch.randn(40, 6, generator=gen)
        opt.zero_grad()
        ((emb(ids) - target) ** 2).sum().backward()
        opt.step()
    return emb.weight.detach().clone(), opt.state_dict()


def test_row_adam_matches_sparse_adam() -> None:
    ours, ours_state = _run(RowAdam, 25)
    ref, ref_state = _run(torch.optim.SparseAdam, 25)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-5)
    # untouched rows keep their initial values and zero moments in both
    st, rs = ours_state["state"][0], ref_state["state"][0]
    assert int(st["step"]) == int(rs["step"]) == 25
    assert torch.allclose(st["exp_avg"], rs["exp_avg"], atol=1e-6)
    assert torch.allclose(st["exp_avg_sq"], rs["exp_avg_sq"], atol=1e-7)


def test_row_adam_moves_only_touched_rows_and_refuses_dense_gradients() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    before = emb.weight.detach().clone()
    opt = RowAdam([emb.weight], lr=0.1)
    emb(torch.tensor([2, 7])).sum().backward()
    opt.step()
    changed = (emb.weight.detach() != before).any(dim=1)
    assert changed.nonzero().ravel().tolist() == [2, 7]
    dense = torch.nn.Parameter(torch.zeros(3))
    dense.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="sparse gradients only"):
        RowAdam([dense]).step()
    with pytest.raises(ValueError, match="lr"):
        RowAdam([dense], lr=0.0)
