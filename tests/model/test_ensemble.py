"""Serving two models as one (hashrec.model.ensemble): the sum of scores, exact fold-in (the trainer's
export of both models: tests/model/test_train.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_encoders import folded, random_graph

from hashrec.data import DataConfig
from hashrec.data.codes import pack
from hashrec.model import ensemble
from hashrec.model.config import TrainConfig
from hashrec.model.hashgnn import HashGNN


def _model_arrays(cfg: TrainConfig, graph, seed: int, user: int) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    model = HashGNN(cfg.replace(seed=seed), graph)
    with torch.no_grad():  # fold-in is exact for a user without an ID embedding
        model.encoder.user_emb.weight[user] = 0.0
    return {**model.embed_all(), **model.foldin(graph.user_items)}


def test_joined_models_score_as_the_sum_and_fold_in_exactly(tmp_path: Path) -> None:
    g = random_graph(20, 16, 0.3, 5)
    cfg = TrainConfig.preset_config("default", DataConfig(path=str(tmp_path)), bits=8, emb_dim=6, layers=3)
    u = 7
    a, b = _model_arrays(cfg, g, 0, u), _model_arrays(cfg.replace(rerank_dim=5), g, 1, u)
    assert not np.allclose(a["user_vectors"][:, :5], b["user_vectors"])  # two different models
    j = ensemble.join(a, b)
    assert np.array_equal(j["user_z"], a["user_z"]) and np.array_equal(j["item_z"], a["item_z"])
    assert j["user_vectors"].shape == (20, cfg.rerank_dim + 5)
    scores = j["user_vectors"] @ j["item_vectors"].T
    want = a["user_vectors"] @ a["item_vectors"].T + b["user_vectors"] @ b["item_vectors"].T
    assert np.allclose(scores, want, atol=1e-5)
    # the serving path's fold-in of the joined arrays: the first model's code, both models' vectors
    code, vector = folded(j, j, g.items_of(u))
    assert np.array_equal(code, pack(a["user_z"][u : u + 1])[0])
    assert np.allclose(vector, j["user_vectors"][u], atol=1e-5)


def test_join_refuses_models_that_do_not_fit_together(tmp_path: Path) -> None:
    g = random_graph(20, 16, 0.3, 5)
    cfg = TrainConfig.preset_config("default", DataConfig(path=str(tmp_path)), bits=8, emb_dim=6, layers=3)
    a, b = _model_arrays(cfg, g, 0, 7), _model_arrays(cfg, g, 1, 7)
    with pytest.raises(ValueError, match="fold-in powers differ"):
        ensemble.join(a, {**b, "foldin_power": np.float32(1.0)})
    with pytest.raises(ValueError, match="user rows differ"):
        ensemble.join(a, {**b, "user_vectors": b["user_vectors"][:-1]})
    # without fold-in arrays on one side, the joined model has none (one model's alone would not match)
    no_foldin = {k: v for k, v in b.items() if not k.startswith("foldin_")}
    assert not any(k.startswith("foldin_") for k in ensemble.join(a, no_foldin))
