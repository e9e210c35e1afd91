"""The model's losses: two heads and distillation, consistent spaces, masked training positives, the
paper preset's official choices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashrec.data import BipartiteGraph, DataConfig, Dataset
from hashrec.model.config import TrainConfig
from hashrec.model.hashgnn import Batch, HashGNN, _Head
from hashrec.model.hashing import sign
from hashrec.model.losses import reconstruction_loss
from hashrec.model.sampling import shared_positive_pairs


def small_batch(graph: BipartiteGraph, b: int = 32, s: int = 16, seed: int = 0) -> Batch:
    users, items = graph.edges()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(users), b, replace=False)
    shared = rng.integers(0, graph.n_items, s)
    u = users[idx]
    return Batch(
        u, items[idx], rng.integers(0, graph.n_items, (b, 4)), shared, shared_positive_pairs(graph, u, shared)
    )


def model(graph: BipartiteGraph, tmp_path: object, preset: str = "default", **kw: object) -> HashGNN:
    cfg = TrainConfig.preset_config(preset, DataConfig(path=str(tmp_path)), shared_negatives=16, **kw)
    torch.manual_seed(0)
    return HashGNN(cfg.replace(emb_dim=8, dense_dim=8, bits=16, rerank_dim=8), graph)


def test_two_heads_train_both_and_distil_into_the_codes_only(
    synth_dataset: Dataset, tmp_path: object
) -> None:
    graph = synth_dataset.graph("train")
    m = model(graph, tmp_path)
    out = m.loss(small_batch(graph), 0.5, None, torch.Generator().manual_seed(1))
    heads = {"rec", "rank", "softmax"}
    assert set(out) == heads | {f"rerank_{t}" for t in heads} | {"distill", "loss"}
    # the distillation's gradient reaches the code head and never the teacher (the re-rank head)
    m.zero_grad()
    out["distill"].backward()
    assert float(m.user_hash.fc.weight.grad.abs().sum()) > 0
    assert m.user_rerank is not None and m.user_rerank.fc.weight.grad is None
    arrays = m.embed_all()
    assert arrays["user_z"].shape == (graph.n_users, 16) and arrays["user_vectors"].shape == (
        graph.n_users,
        8,
    )


@pytest.mark.parametrize("rerank_ste", [True, False])
def test_the_rerank_head_trains_on_its_codes_only_with_rerank_ste(
    synth_dataset: Dataset, tmp_path: object, rerank_ste: bool
) -> None:
    # at progress 1 a head on pure STE sees only sign(v): a nudge that flips no sign leaves its losses
    # unchanged; a continuous re-rank head sees v itself
    graph = synth_dataset.graph("train")
    m = model(graph, tmp_path, rerank_ste=rerank_ste)
    batch = small_batch(graph)

    def rerank_softmax() -> float:
        with torch.no_grad():
            return float(m.loss(batch, 1.0, None, torch.Generator().manual_seed(1))["rerank_softmax"])

    before = rerank_softmax()
    assert m.user_rerank is not None
    with torch.no_grad():
        m.user_rerank.fc.weight.mul_(1.001)  # with the bias: scales every pre-activation, flips no sign
        m.user_rerank.fc.bias.mul_(1.001)
    moved = abs(rerank_softmax() - before)
    assert (moved == 0.0) if rerank_ste else (moved > 1e-6)


def test_one_head_has_no_rerank_terms(synth_dataset: Dataset, tmp_path: object) -> None:
    graph = synth_dataset.graph("train")
    m = model(graph, tmp_path, rerank_head=False, distill_weight=0.0)
    out = m.loss(small_batch(graph), 0.5, None, torch.Generator().manual_seed(1))
    assert set(out) == {"rec", "rank", "softmax", "loss"}
    assert set(m.embed_all()) == {"user_z", "item_z"}


def test_an_example_is_scored_in_its_own_space(synth_dataset: Dataset, tmp_path: object) -> None:
    """Mixed draws: a code-space example meets the candidates' codes, a continuous one their z."""
    graph = synth_dataset.graph("train")
    m = model(graph, tmp_path)
    g = torch.Generator().manual_seed(3)
    z = _Head(
        torch.randn(6, 16, generator=g),
        torch.randn(6, 16, generator=g),
        torch.randn(6, 2, 16, generator=g),
        torch.randn(5, 16, generator=g),
    )
    draw = torch.tensor([[True], [False], [True], [False], [False], [True]])
    logits = m._logits(z, draw, 0.1, None)
    for r in range(6):
        code = bool(draw[r, 0])
        hu = sign(z.u[r]) if code else z.u[r]
        cand = torch.cat([z.pos[r : r + 1], z.shared])
        hc = sign(cand) if code else cand
        got = torch.cat([logits.pos[r : r + 1], logits.shared[r]])
        assert torch.allclose(got, hc @ hu / (16 * 0.1), atol=1e-5)
    # the log-sum-exp is the cross-entropy's: over the positive and the shared items together
    full = torch.cat([logits.pos[:, None], logits.shared], dim=1)
    ce = torch.nn.functional.cross_entropy(full, torch.zeros(6, dtype=torch.long))
    assert torch.allclose((logits.lse - logits.pos).mean(), ce, atol=1e-5)
    # per-bit draws: bit by bit
    bits = torch.rand(6, 16, generator=g) < 0.5
    logits = m._logits(z, bits, 0.1, None)
    hu = torch.where(bits, sign(z.u), z.u)
    for r in range(6):
        hs = torch.where(bits[r], sign(z.shared), z.shared)
        assert torch.allclose(logits.shared[r], hs @ hu[r] / (16 * 0.1), atol=1e-5)


def test_shared_items_that_are_the_users_positives_are_masked(synth_dataset: Dataset) -> None:
    graph = synth_dataset.graph("train")
    users, items = graph.edges()
    rng = np.random.default_rng(5)
    b_users = users[rng.choice(len(users), 300)]
    shared = np.concatenate([items[:50], rng.integers(0, graph.n_items, 200)])  # some are positives for sure
    rows, cols = shared_positive_pairs(graph, b_users, shared)
    dense = graph.user_items.toarray() > 0
    want = {(r, c) for r in range(len(b_users)) for c in range(len(shared)) if dense[b_users[r], shared[c]]}
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == want and want


def test_masked_pairs_do_not_count_as_negatives(synth_dataset: Dataset, tmp_path: object) -> None:
    graph = synth_dataset.graph("train")
    m = model(graph, tmp_path)
    z = _Head(torch.randn(2, 16), torch.randn(2, 16), torch.randn(2, 2, 16), torch.randn(3, 16))
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[1, 1] = True  # example 1's shared item 1 is one of its user's training items
    logits = m._logits(z, torch.ones(2, 1, dtype=torch.bool), 0.1, mask)
    assert logits.shared[1, 1] == -1e4 and logits.shared[0, 1] > -100
    probs = torch.softmax(torch.cat([logits.pos[:, None], logits.shared], dim=1), dim=1)
    assert probs[1, 2] == 0.0


def test_paper_preset_follows_the_official_code(tmp_path: object) -> None:
    cfg = TrainConfig.preset_config("paper", DataConfig(path=str(tmp_path)))
    assert cfg.rec_reduction == "mean" and cfg.score_scale is None and cfg.negative_draw == "own"
    assert not cfg.rerank_head and not cfg.refit and cfg.bits == 32 and cfg.negatives == 10
    pos, neg = torch.tensor([0.5, -1.0]), torch.tensor([[0.2, 0.1, -0.3], [1.0, 0.0, 2.0]])
    summed = reconstruction_loss(pos, neg, "sum")
    assert torch.allclose(reconstruction_loss(pos, neg, "mean") * 4, summed)  # 1 positive + 3 negatives


@pytest.mark.parametrize("scale", [None, 8.0])
def test_scores_are_raw_or_scaled(synth_dataset: Dataset, tmp_path: object, scale: float | None) -> None:
    m = model(synth_dataset.graph("train"), tmp_path, score_scale=scale)
    hu, hi = torch.ones(2, 16), torch.ones(2, 16)
    assert m.score(hu, hi).tolist() == ([16.0, 16.0] if scale is None else [8.0, 8.0])


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_code_grad_scale_scales_what_the_code_head_teaches_the_encoder(
    synth_dataset: Dataset, tmp_path: object, scale: float
) -> None:
    graph = synth_dataset.graph("train")
    batch = small_batch(graph)

    def encoder_grad(s: float) -> torch.Tensor:
        m = model(graph, tmp_path, code_grad_scale=s, distill_weight=0.0)
        out = m.loss(batch, 0.5, None, torch.Generator().manual_seed(1))
        (out["rec"] + out["rank"] + out["softmax"]).backward()  # the code head's terms only
        assert m.user_hash.fc.weight.grad is not None and float(m.user_hash.fc.weight.grad.abs().sum()) > 0
        w = m.encoder.user_emb.weight
        return torch.zeros_like(w) if w.grad is None else w.grad.clone()

    full = encoder_grad(1.0)
    assert torch.allclose(encoder_grad(scale), full * scale, atol=1e-6)


def test_code_negatives_subsample_only_the_code_heads_softmax(
    synth_dataset: Dataset, tmp_path: object
) -> None:
    graph = synth_dataset.graph("train")
    batch = small_batch(graph, s=16)

    def losses(n: int) -> dict[str, float]:
        out = model(graph, tmp_path, code_negatives=n).loss(
            batch, 0.5, None, torch.Generator().manual_seed(1)
        )
        return {k: float(v.detach()) for k, v in out.items()}

    full, part = losses(16), losses(4)
    assert part["rerank_softmax"] == pytest.approx(full["rerank_softmax"])  # the re-rank head sees all 16
    assert part["softmax"] < full["softmax"]  # 4 negatives: an easier softmax for the code head
    assert part["distill"] != pytest.approx(full["distill"])
