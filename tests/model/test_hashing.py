"""The hash layer, the straight-through estimator and the continuous-guidance schedule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hashrec.data import DataConfig
from hashrec.data.codes import to_signs
from hashrec.model.config import TrainConfig
from hashrec.model.hashing import HashLayer, code_probability, draw_codes, sign, ste_sign


def test_sign_matches_the_index_convention() -> None:
    z = torch.tensor([[-0.5, 0.0, 0.3, -0.0, 1e-9, -1e-9]])
    assert sign(z).tolist() == [[-1.0, 1.0, 1.0, 1.0, 1.0, -1.0]]
    zn = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    zn[0, :4] = 0.0
    assert np.array_equal(sign(torch.from_numpy(zn)).numpy(), to_signs(zn))


def test_ste_forward_is_sign_and_gradient_is_identity() -> None:
    z = torch.randn(8, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 32, dtype=torch.float64)
    b = ste_sign(z)
    assert torch.equal(b.detach(), sign(z.detach()))
    (b * w).sum().backward()
    assert z.grad is not None
    assert torch.equal(z.grad, w)  # d sign(z) / dz treated as exactly 1


@pytest.mark.parametrize("start", [0.0, 0.2])
@pytest.mark.parametrize("pure_at", [0.3, 0.6, 0.9])
def test_schedule_is_monotone_and_reaches_pure_codes(start: float, pure_at: float) -> None:
    xs = np.linspace(0, 1, 101)
    ps = [code_probability(x, start, pure_at) for x in xs]
    assert ps[0] == pytest.approx(start)
    assert all(b >= a for a, b in itertools.pairwise(ps))
    assert all(p == 1.0 for x, p in zip(xs, ps, strict=True) if x >= pure_at)
    assert all(p < 1.0 for x, p in zip(xs, ps, strict=True) if x < pure_at - 1e-9)


@pytest.mark.parametrize("preset", ["paper", "default"])
def test_presets_train_on_pure_codes_before_the_last_epoch(preset: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = TrainConfig.preset_config(preset, DataConfig(path=str(tmp_path)))
    # The probability at the *start* of the last epoch is already 1: the whole last epoch is pure STE.
    last_epoch_start = (cfg.epochs - 1) / cfg.epochs
    for pure_at in (cfg.pure_ste_at, cfg.code_pure_ste_at):  # both heads' schedules
        assert code_probability(last_epoch_start, cfg.code_prob_start, pure_at) == 1.0
        # ... and training does not start on pure codes (the guidance is real).
        assert code_probability(0.0, cfg.code_prob_start, pure_at) < 0.5


def test_draws_per_example_and_per_bit() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.rand(4000, 16) * 2 - 1
    assert bool(draw_codes(z, 1.0, "example", g).all())
    assert not bool(draw_codes(z, 0.0, "example", g).any())
    d = draw_codes(z, 0.3, "example", g)
    assert d.shape == (4000, 1)  # one draw per example: all its bits in one space
    assert abs(d.float().mean().item() - 0.3) < 0.03
    db = draw_codes(z, 0.7, "bit", g)
    assert db.shape == z.shape
    assert abs(db.float().mean().item() - 0.7) < 0.02


def test_hash_layer_range_and_shape() -> None:
    layer = HashLayer(12, 24)
    z = layer(torch.randn(7, 12) * 100)
    assert z.shape == (7, 24)
    assert bool((z.abs() <= 1).all())
