"""Helpers of the index tests: random embeddings, a run directory written without training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashrec.model.config import TrainConfig
from hashrec.model.data import Dataset
from hashrec.model.run import save_config, save_embeddings


def random_z(n: int, k: int, seed: int, clusters: int = 0) -> np.ndarray:
    """tanh of Gaussian vectors (optionally around ``clusters`` centres, so codes collide and tie)."""
    rng = np.random.default_rng(seed)
    if clusters:
        centres = rng.standard_normal((clusters, k))
        x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, k))
    else:
        x = rng.standard_normal((n, k))
    return np.tanh(x).astype(np.float32)


def write_run(run_dir: Path, ds: Dataset, bits: int = 32, seed: int = 0, foldin: bool = True) -> Path:
    """A run directory as ``hashrec train`` leaves it (config, dataset, embeddings), with random embeddings."""
    run_dir.mkdir(parents=True, exist_ok=True)
    assert ds.config is not None
    save_config(run_dir, TrainConfig.preset_config("default", ds.config, bits=bits))
    ds.save(run_dir / "dataset")
    arrays = {
        "user_z": random_z(ds.n_users, bits, seed, clusters=16),
        "item_z": random_z(ds.n_items, bits, seed + 1, clusters=16),
    }
    if foldin:
        rng = np.random.default_rng(seed + 2)
        arrays.update(
            foldin_item=rng.standard_normal((ds.n_items, 8)).astype(np.float32),
            foldin_weight=rng.standard_normal((bits, 8)).astype(np.float32),
            foldin_bias=rng.standard_normal(bits).astype(np.float32),
            foldin_power=np.asarray(0.5, np.float32),
        )
    save_embeddings(run_dir, arrays)
    return run_dir
