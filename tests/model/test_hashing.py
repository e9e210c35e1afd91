"""The hash layer, the straight-through estimator and the continuous-guidance schedule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hashrec.index.codes import to_signs
from hashrec.model.config import TrainConfig
from hashrec.model.data import DataConfig
from hashrec.model.hashing import HashLayer, code_probability, guided_codes, sign, ste_sign


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
    assert code_probability(last_epoch_start, cfg.code_prob_start, cfg.pure_ste_at) == 1.0
    # ... and training does not start on pure codes (the guidance is real).
    assert code_probability(0.0, cfg.code_prob_start, cfg.pure_ste_at) < 0.5


def test_guided_codes_per_example_and_per_bit() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.rand(4000, 16) * 2 - 1
    h1, d1 = guided_codes(z, 1.0, "example", g)
    assert torch.equal(h1, sign(z)) and bool(d1.all())
    h0, d0 = guided_codes(z, 0.0, "example", g)
    assert torch.equal(h0, z) and not bool(d0.any())
    h, d = guided_codes(z, 0.3, "example", g)
    assert d.shape == (4000, 1)
    rows_code = (h == sign(z)).all(dim=1)
    rows_cont = (h == z).all(dim=1)
    assert bool((rows_code | rows_cont).all())  # each example is entirely code or entirely continuous
    assert abs(d.float().mean().item() - 0.3) < 0.03
    _hb, db = guided_codes(z, 0.7, "bit", g)
    assert db.shape == z.shape
    assert abs(db.float().mean().item() - 0.7) < 0.02
    # a shared draw puts the user and its items in the same space
    hp, _ = guided_codes(z.flip(0), 0.0, "example", draw=d)
    assert torch.equal(hp[d[:, 0]], sign(z.flip(0))[d[:, 0]])


def test_hash_layer_range_and_shape() -> None:
    layer = HashLayer(12, 24)
    z = layer(torch.randn(7, 12) * 100)
    assert z.shape == (7, 24)
    assert bool((z.abs() <= 1).all())


def test_continuous_softmax_trains_z_even_on_pure_codes(synth_dataset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With ``cont_weight`` the loss has a term on the unsigned z: on pure codes (p = 1) the code losses reach
    the hash layer only through sign's straight-through gradient, the ``cont`` term through z itself; and its
    value is the softmax of the continuous scores, not of the codes."""
    from hashrec.model.hashgnn import HashGNN

    graph = synth_dataset.graph("train")
    users, items = graph.edges()
    base = dict(softmax_weight=0.0, rec_weight=0.0, rank_weight=0.0, shared_negatives=16, inbatch=False)
    cfg = TrainConfig.preset_config("default", DataConfig(path=str(tmp_path)), cont_weight=1.0, **base)
    torch.manual_seed(0)
    model = HashGNN(cfg.replace(emb_dim=8, bits=16), graph)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    shared = rng.integers(0, graph.n_items, 16)
    neg = rng.integers(0, graph.n_items, (len(users[:32]), 4))
    out = model.loss(users[:32], items[:32], neg, shared, 1.0, torch.Generator().manual_seed(1), gen)
    assert set(out) == {"cont", "loss"}
    out["loss"].backward()
    assert model.item_hash.fc.weight.grad is not None
    assert float(model.item_hash.fc.weight.grad.abs().sum()) > 0
    # the value is the softmax over the continuous scores: recompute it by hand
    zu, zi = model.embed(users[:32], np.concatenate([items[:32], shared]), torch.Generator().manual_seed(1))
    zp, zs = zi[:32], zi[32:]
    logits = torch.cat([(zu * zp).sum(-1, keepdim=True), zu @ zs.T], dim=1) / (16 * cfg.cont_tau)
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(32, dtype=torch.long))
    assert abs(float(out["cont"].detach()) - float(expected.detach())) < 1e-4
