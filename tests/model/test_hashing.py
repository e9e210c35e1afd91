"""The hash layer, the straight-through estimator and the continuous-guidance schedule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hashrec.data.codes import to_signs
from hashrec.model.config import TrainConfig
from hashrec.data import DataConfig
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


def _softmax_by_hand(hu: torch.Tensor, hp: torch.Tensor, hs: torch.Tensor, tau: float) -> float:
    bits = hu.shape[1]
    logits = torch.cat([(hu * hp).sum(-1, keepdim=True), hu @ hs.T], dim=1) / (bits * tau)
    return float(torch.nn.functional.cross_entropy(logits, torch.zeros(len(hu), dtype=torch.long)).detach())


@pytest.mark.parametrize(("prob", "expected_tau"), [(1.0, 0.2), (0.0, 0.05)])
def test_code_tau_applies_to_the_examples_that_use_codes(
    synth_dataset, tmp_path, prob: float, expected_tau: float
) -> None:  # type: ignore[no-untyped-def]
    """On pure codes the softmax is the codes' at ``code_tau``; fully continuous, z's at ``softmax_tau``."""
    from hashrec.model.hashgnn import HashGNN

    graph = synth_dataset.graph("train")
    users, items = graph.edges()
    base = dict(rec_weight=0.0, rank_weight=0.0, shared_negatives=16, inbatch=False, softmax_tau=0.05)
    cfg = TrainConfig.preset_config("default", DataConfig(path=str(tmp_path)), code_tau=0.2, **base)
    torch.manual_seed(0)
    model = HashGNN(cfg.replace(emb_dim=8, bits=16), graph)
    rng = np.random.default_rng(0)
    shared = rng.integers(0, graph.n_items, 16)
    neg = rng.integers(0, graph.n_items, (32, 4))
    u, p = users[:32], items[:32]
    out = model.loss(
        u, p, neg, shared, prob, torch.Generator().manual_seed(1), torch.Generator().manual_seed(0)
    )
    zu, zi = model.embed(u, np.concatenate([p, shared]), torch.Generator().manual_seed(1))
    h = sign if prob == 1.0 else (lambda z: z)
    want = _softmax_by_hand(h(zu), h(zi[:32]), h(zi[32:]), expected_tau)
    assert abs(float(out["softmax"].detach()) - want) < 1e-4


def test_code_tau_per_bit_guidance_moves_with_the_fraction_of_code_bits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hashrec.model.hashgnn import HashGNN

    cfg = TrainConfig.preset_config(
        "default", DataConfig(path=str(tmp_path)), code_tau=0.25, softmax_tau=0.05
    )
    model = HashGNN.__new__(HashGNN)
    torch.nn.Module.__init__(model)
    model.cfg = cfg
    draw = torch.tensor([[True] * 4, [False] * 4, [True, True, False, False]])
    tau = model._code_tau(draw)
    assert isinstance(tau, torch.Tensor)
    assert torch.allclose(tau.ravel(), torch.tensor([0.25, 0.05, 0.15]))
    unset = HashGNN.__new__(HashGNN)
    torch.nn.Module.__init__(unset)
    unset.cfg = cfg.replace(code_tau=None)
    assert unset._code_tau(draw) == 0.05


def test_bit_penalty_is_zero_for_balanced_independent_bits_and_grows_with_redundancy() -> None:
    from hashrec.model.losses import bit_penalty

    # all 16 patterns of 4 bits: each bit half +1 / half -1, every pair uncorrelated
    codes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)))
    assert float(bit_penalty(codes)) == pytest.approx(0.0, abs=1e-7)
    # a duplicated bit: covariance 16/15 between bits 0 and 3 -> 2 * (16/15)^2 / (4 * 3)
    dup = codes.clone()
    dup[:, 3] = dup[:, 0]
    assert float(bit_penalty(dup)) == pytest.approx(2 * (16 / 15) ** 2 / 12, rel=1e-5)
    # a constant bit: its mean is 1 -> 1 / 4 (no covariance, it does not vary)
    const = codes.clone()
    const[:, 2] = 1.0
    assert float(bit_penalty(const)) == pytest.approx(1 / 4, rel=1e-5)


def test_bit_reg_adds_a_weighted_bits_term_to_the_loss(synth_dataset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hashrec.model.hashgnn import HashGNN

    graph = synth_dataset.graph("train")
    users, items = graph.edges()
    rng = np.random.default_rng(0)
    args = (
        users[:32],
        items[:32],
        rng.integers(0, graph.n_items, (32, 4)),
        rng.integers(0, graph.n_items, 16),
    )
    cfg = TrainConfig.preset_config("default", DataConfig(path=str(tmp_path)), shared_negatives=16)
    for bit_reg in (0.0, 2.0):
        model = HashGNN(cfg.replace(emb_dim=8, bits=16, bit_reg=bit_reg), graph)
        out = model.loss(*args, 1.0, torch.Generator().manual_seed(1), torch.Generator().manual_seed(0))
        assert ("bits" in out) == (bit_reg > 0)
        weights = {
            "rec": cfg.rec_weight,
            "rank": cfg.rank_weight,
            "softmax": cfg.softmax_weight,
            "bits": bit_reg,
        }
        total = sum(weights[k] * float(v.detach()) for k, v in out.items() if k != "loss")
        assert float(out["loss"].detach()) == pytest.approx(total, rel=1e-5)
    assert float(out["bits"].detach()) > 0
