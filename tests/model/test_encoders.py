"""Encoders on tiny random bipartite graphs: shapes, neighbour sampling, propagation maths, fold-in."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hashrec.data import BipartiteGraph, DataConfig
from hashrec.data.codes import pack
from hashrec.index.bundle import FoldIn
from hashrec.index.retriever import Retriever
from hashrec.model.config import TrainConfig
from hashrec.model.encoders import (
    LightGCNEncoder,
    SageEncoder,
    normalized_adjacency,
    sample_neighbours,
    svd_init,
)
from hashrec.model.hashgnn import HashGNN
from hashrec.model.sampling import NegativeSampler


def random_graph(n_users: int, n_items: int, density: float, seed: int) -> BipartiteGraph:
    rng = np.random.default_rng(seed)
    m = rng.random((n_users, n_items)) < density
    m[0, :] = False  # a user without items
    m[1:, 0] = False
    m[1, 0] = True  # item 0 has exactly one user
    m[:, -1] = False  # an item without users
    u, i = np.nonzero(m)
    return BipartiteGraph.from_edges(u, i, n_users, n_items)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_neighbours_are_real_neighbours(seed: int) -> None:
    g = random_graph(30, 20, 0.2, seed)
    r = g.user_items
    nodes = np.arange(30)
    gen = torch.Generator().manual_seed(seed)
    nb_t, ok_t = sample_neighbours(
        torch.from_numpy(r.indptr.astype(np.int64)),
        torch.from_numpy(r.indices.astype(np.int64)),
        torch.from_numpy(nodes),
        7,
        gen,
    )
    nb, ok = nb_t.numpy(), ok_t.numpy()
    assert nb.shape == ok.shape == (30, 7)
    dense = r.toarray() > 0
    assert bool(dense[np.repeat(nodes, 7)[ok.ravel()], nb.ravel()[ok.ravel()]].all())
    assert not ok[0].any()  # user 0 has no items
    assert bool(ok[np.diff(r.indptr) > 0].all())


def test_sampling_is_uniform_over_a_nodes_neighbours() -> None:
    # One user with 3 items: 30,000 draws must hit each about a third of the time (offsets never reach deg).
    g = BipartiteGraph.from_edges(np.zeros(3, np.int64), np.array([2, 5, 7]), 1, 9)
    r = g.user_items
    nb, ok = sample_neighbours(
        torch.from_numpy(r.indptr.astype(np.int64)),
        torch.from_numpy(r.indices.astype(np.int64)),
        torch.zeros(1, dtype=torch.int64),
        30_000,
        torch.Generator().manual_seed(0),
    )
    assert bool(ok.all())
    counts = np.bincount(nb.numpy().ravel(), minlength=9)
    assert set(np.flatnonzero(counts)) == {2, 5, 7}
    assert np.abs(counts[[2, 5, 7]] / 30_000 - 1 / 3).max() < 0.02


def test_sage_shapes_and_deterministic_inference() -> None:
    g = random_graph(25, 15, 0.3, 0)
    torch.manual_seed(0)
    enc = SageEncoder(g, emb_dim=12, dense_dim=8, user_fanouts=(4, 3), item_fanouts=(5,))
    hu, hi = enc(np.array([0, 3, 3, 24]), np.array([1, 14]), torch.Generator().manual_seed(0))
    assert hu.shape == (4, 8) and hi.shape == (2, 8)
    assert torch.isfinite(hu).all() and torch.isfinite(hi).all()
    (hu.sum() + hi.sum()).backward()
    assert enc.user_emb.weight.grad is not None
    fu, fi = enc.full()
    fu2, fi2 = enc.full()
    assert fu.shape == (25, 8) and fi.shape == (15, 8)
    assert torch.equal(fu, fu2) and torch.equal(fi, fi2)


def test_sage_with_full_fanout_equals_full_mean() -> None:
    # Each item has one user and each sampled slot is that user, so sampling and full averaging agree.
    u = np.arange(6)
    i = np.arange(6)
    g = BipartiteGraph.from_edges(u, i, 6, 6)
    torch.manual_seed(0)
    enc = SageEncoder(g, emb_dim=5, dense_dim=4, user_fanouts=(3, 2), item_fanouts=(3,))
    hu, hi = enc(u, i, torch.Generator().manual_seed(1))
    fu, fi = enc.full()
    assert torch.allclose(hu, fu, atol=1e-6) and torch.allclose(hi, fi, atol=1e-6)


def test_lightgcn_propagation_matches_dense_maths_and_gradient() -> None:
    g = random_graph(12, 9, 0.35, 3)
    enc = LightGCNEncoder(g, dim=5, layers=2, init="normal")
    a = normalized_adjacency(g).toarray().astype(np.float64)
    e0 = torch.cat([enc.user_emb.weight, enc.item_emb.weight]).detach().double().numpy()
    expect = (e0 + a @ e0 + a @ a @ e0) / 3
    u, i = enc.propagate()
    got = torch.cat([u, i]).detach().double().numpy()
    assert np.allclose(got, expect, atol=1e-5)
    # gradient of sum(w * out) w.r.t. E0 is (I + A + A^2)^T w / 3 (A symmetric)
    w = np.random.default_rng(0).normal(size=expect.shape)
    (torch.cat(enc.propagate()) * torch.from_numpy(w).float()).sum().backward()
    grad = torch.cat([enc.user_emb.weight.grad, enc.item_emb.weight.grad]).double().numpy()
    assert np.allclose(grad, (w + a @ w + a @ a @ w) / 3, atol=1e-5)


def test_svd_init_spans_the_top_singular_space() -> None:
    g = random_graph(40, 30, 0.25, 4)
    ue, ie = svd_init(g, 6, seed=0)
    assert ue.shape == (40, 6) and ie.shape == (30, 6)
    rn = g.normalized_adjacency().toarray().astype(np.float64)
    uu, s, vt = np.linalg.svd(rn)
    best = (uu[:, :6] * s[:6]) @ vt[:6]
    approx = ue.astype(np.float64) @ ie.T.astype(np.float64)
    # same rank-6 approximation up to the global scale svd_init applies
    scale = np.sum(best * approx) / np.sum(approx * approx)
    assert np.allclose(approx * scale, best, atol=1e-4)
    ue2, _ = svd_init(g, 6, seed=0)
    assert np.array_equal(ue, ue2)


def folded(
    arrays: dict[str, np.ndarray], emb: dict[str, np.ndarray], items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(code, re-rank vector) the serving path (Retriever.encode_new) computes for a new user with ``items``."""
    fi = FoldIn(
        item=arrays["foldin_item"],
        power=float(arrays["foldin_power"]),
        code_weight=arrays["foldin_code_weight"],
        code_bias=arrays["foldin_code_bias"],
        vector_weight=arrays["foldin_vector_weight"],
        vector_bias=arrays["foldin_vector_bias"],
    )
    r = Retriever.from_arrays(
        emb["user_z"],
        emb["item_z"],
        user_vectors=emb.get("user_vectors"),
        item_vectors=emb.get("item_vectors"),
        foldin=fi,
    )
    new = r.encode_new([[str(i) for i in items]])
    return new.codes[0], new.vectors[0]


def test_lightgcn_foldin_is_exact_for_a_user_without_id_embedding(tmp_path) -> None:  # type: ignore[no-untyped-def]
    g = random_graph(20, 16, 0.3, 5)
    cfg = TrainConfig.preset_config("default", DataConfig(path=str(tmp_path)), bits=8, emb_dim=6, layers=3)
    model = HashGNN(cfg, g)
    u = 7
    with torch.no_grad():  # fold-in assumes an unknown user has no ID embedding
        model.encoder.user_emb.weight[u] = 0.0
    emb = model.embed_all()
    code, vector = folded(model.foldin(g.user_items), emb, g.items_of(u))
    # both heads are exact: the code is the user's code, the vector its re-rank vector
    assert np.array_equal(code, pack(emb["user_z"][u : u + 1])[0])
    assert np.allclose(vector, emb["user_vectors"][u], atol=1e-5)


def test_sage_foldin_arrays_have_the_contract_shapes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    g = random_graph(20, 16, 0.3, 6)
    cfg = TrainConfig.preset_config("paper", DataConfig(path=str(tmp_path)), bits=8)
    model = HashGNN(cfg, g)
    arrays = model.foldin(g.user_items)
    assert arrays["foldin_item"].shape == (16, cfg.dense_dim)
    assert arrays["foldin_code_weight"].shape == (8, cfg.dense_dim)
    assert arrays["foldin_code_bias"].shape == (8,)
    assert arrays["foldin_power"].shape == ()
    _code, z = folded(arrays, model.embed_all(), np.array([1, 2, 3]))
    assert z.shape == (8,) and np.all(np.abs(z) < 1)


def test_negative_sampler_avoids_positives() -> None:
    g = random_graph(50, 200, 0.05, 7)
    s = NegativeSampler(g, rounds=10)
    users = np.repeat(np.arange(50), 20)
    neg = s.sample(users, 8, np.random.default_rng(0))
    assert neg.shape == (1000, 8)
    assert neg.min() >= 0 and neg.max() < 200
    dense = g.user_items.toarray() > 0
    assert not dense[users[:, None], neg].any()
    assert s.is_positive(np.array([1]), np.array([0])).tolist() == [True]
    assert sp.issparse(g.user_items)
