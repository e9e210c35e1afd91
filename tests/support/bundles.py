"""Bundles and run directories without training: random (clustered) vectors, for tests and benchmarks.

Serving cost depends on the shapes (users, items, bits, C, k), not on the vectors' quality, so load and
fault runs use these; quality tests train for real.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from hashrec.data import Dataset
from hashrec.index.bundle import FoldIn, load_bundle
from hashrec.index.publish import build_bundle
from hashrec.index.retriever import Retriever
from hashrec.model.config import TrainConfig
from hashrec.model.run import save_config, save_embeddings

ADMIN_TOKEN = "reliability-admin-token-0123456789"


def random_z(n: int, k: int, seed: int, clusters: int = 0) -> np.ndarray:
    """tanh of Gaussian vectors (optionally around ``clusters`` centres, so codes collide and tie)."""
    rng = np.random.default_rng(seed)
    if clusters:
        centres = rng.standard_normal((clusters, k))
        x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, k))
    else:
        x = rng.standard_normal((n, k))
    return np.tanh(x).astype(np.float32)


def random_foldin(n_items: int, bits: int, dim: int, seed: int, f: int = 16) -> FoldIn:
    """Fold-in arrays of the right shapes (random values)."""
    rng = np.random.default_rng(seed)
    return FoldIn(
        item=rng.standard_normal((n_items, f)).astype(np.float32),
        power=0.5,
        code_weight=rng.standard_normal((bits, f)).astype(np.float32),
        code_bias=(0.1 * rng.standard_normal(bits)).astype(np.float32),
        vector_weight=rng.standard_normal((dim, f)).astype(np.float32),
        vector_bias=(0.1 * rng.standard_normal(dim)).astype(np.float32),
    )


def make_bundle(
    bundles: Path,
    dataset: Dataset | None = None,
    *,
    seed: int = 1,
    bits: int = 32,
    n_users: int = 0,
    n_items: int = 0,
    seen_per_user: int = 20,
    foldin: bool = True,
) -> Path:
    """Publish a bundle of random clustered vectors (a different model per seed); returns its directory.

    With ``dataset``: its ids, seen items and popularity. Without: ``n_users`` x ``n_items`` named
    ``u<i>`` / ``i<j>``, ``seen_per_user`` random seen items each.
    """
    rng = np.random.default_rng(seed)
    if dataset is not None:
        n_users, n_items = dataset.n_users, dataset.n_items
        kw: dict[str, object] = {"dataset": dataset}
    else:
        rows = np.repeat(np.arange(n_users), seen_per_user)
        cols = rng.integers(0, n_items, n_users * seen_per_user)
        seen = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
        kw = {
            "seen": seen,
            "user_ids": [f"u{i}" for i in range(n_users)],
            "item_ids": [f"i{j}" for j in range(n_items)],
        }
    return build_bundle(
        bundles,
        user_z=random_z(n_users, bits, seed, clusters=32),
        item_z=random_z(n_items, bits, seed + 1000, clusters=32),
        foldin=random_foldin(n_items, bits, bits, seed) if foldin else None,
        model_version=f"random-seed{seed}",
        keep=10,
        **kw,  # type: ignore[arg-type]
    )


def write_run(run_dir: Path, ds: Dataset, bits: int = 32, seed: int = 0, foldin: bool = True) -> Path:
    """A run directory as ``hashrec train`` leaves it (config, dataset, embeddings), with random vectors."""
    run_dir.mkdir(parents=True, exist_ok=True)
    assert ds.config is not None
    save_config(run_dir, TrainConfig.preset_config("default", ds.config, bits=bits))
    ds.save(run_dir / "dataset")
    arrays = {
        "user_z": random_z(ds.n_users, bits, seed, clusters=16),
        "item_z": random_z(ds.n_items, bits, seed + 1, clusters=16),
    }
    if foldin:
        fi = random_foldin(ds.n_items, bits, bits, seed + 2, f=8)
        arrays.update({**fi.arrays(), "foldin_power": np.asarray(fi.power, np.float32)})
    save_embeddings(run_dir, arrays)
    return run_dir


def expected_answers(
    bundles: Path, versions: list[str], users: list[str], k: int, candidates: int, exclude_seen: bool = True
) -> dict[str, dict[str, list[str]]]:
    """The Retriever's own answers (item ids) per bundle version and user: the only answers a load run may
    accept (a response whose items differ from its version's answer is wrong or mixed-version)."""
    out: dict[str, dict[str, list[str]]] = {}
    for v in versions:
        r = Retriever(load_bundle(Path(bundles) / v), threads=1)
        recs = r.recommend(users, k, max(k, candidates), exclude_seen=exclude_seen)
        out[v] = {u: list(rec.items) for u, rec in zip(users, recs, strict=True) if rec is not None}
    return out
