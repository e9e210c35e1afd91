"""CSR graph invariants and the synthetic generator's determinism and planted structure."""

from __future__ import annotations

import numpy as np
import pytest

from hashrec.data import BipartiteGraph, Dataset
from hashrec.data.synthetic import SyntheticConfig, generate


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_csr_both_directions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nu, ni = 30, 20
    u = rng.integers(0, nu, 200)
    i = rng.integers(0, ni, 200)
    g = BipartiteGraph.from_edges(u, i, nu, ni)
    dense = np.zeros((nu, ni), dtype=bool)
    dense[u, i] = True
    assert g.n_edges == dense.sum()
    assert (g.user_items.toarray() == dense).all()
    assert (g.item_users.toarray() == dense.T).all()
    assert g.user_degree.tolist() == dense.sum(1).tolist()
    assert g.item_degree.tolist() == dense.sum(0).tolist()
    for user in range(nu):
        assert g.items_of(user).tolist() == np.flatnonzero(dense[user]).tolist()
    eu, ei = g.edges()
    assert set(zip(eu.tolist(), ei.tolist(), strict=True)) == set(zip(*np.nonzero(dense), strict=True))
    a = g.normalized_adjacency().toarray()
    du, di = dense.sum(1), dense.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = np.where(dense, 1 / np.sqrt(np.outer(du, di)), 0)
    np.testing.assert_allclose(a, ref, rtol=1e-6)


def test_graph_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        BipartiteGraph.from_edges(np.array([0, 5]), np.array([0, 1]), 3, 3)


def test_synthetic_is_deterministic() -> None:
    cfg = SyntheticConfig(n_users=200, n_items=100, n_communities=5, seed=3)
    a, b = generate(cfg), generate(cfg)
    c = generate(SyntheticConfig(n_users=200, n_items=100, n_communities=5, seed=4))
    assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
    assert np.array_equal(a.ratings, b.ratings) and np.array_equal(a.timestamps, b.timestamps)
    assert not np.array_equal(a.items, c.items)


def test_synthetic_has_planted_structure() -> None:
    cfg = SyntheticConfig(n_users=500, n_items=300, n_communities=6, seed=0)
    d = generate(cfg)
    same = (d.user_community[d.users] == d.item_community[d.items]).mean()
    assert same > 0.5  # far above the 1/6 expected without communities
    # popularity is skewed: the top 10% of items take a large share of interactions
    counts = np.sort(np.bincount(d.items, minlength=cfg.n_items))[::-1]
    assert counts[: cfg.n_items // 10].sum() > 0.25 * counts.sum()
    # no duplicate pair per user
    assert len(set(zip(d.users.tolist(), d.items.tolist(), strict=True))) == len(d.users)


def test_synth_fixture_loads_through_csv(synth_dataset: Dataset) -> None:
    assert synth_dataset.n_users == 600
    assert synth_dataset.users.raw[0].startswith("u")
    assert len(synth_dataset.test) > 0 and len(synth_dataset.valid) > 0
