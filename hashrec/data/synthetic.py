"""A seeded synthetic implicit-feedback dataset with planted structure, for the demo and the tests.

Generative story (all vectorised, deterministic for a seed):

- items belong to one of ``n_communities`` communities and have a power-law popularity
  ``pop_i ~ rank^-popularity_exponent`` (a random permutation decides which items are popular);
- each user has a home community and interacts with ``n_u`` items (log-normal around
  ``mean_interactions``, at least ``min_interactions``), drawn without replacement from
  ``p(i | u) ~ pop_i * (affinity if community(i) == home(u) else 1)``;
- each interaction gets a timestamp and a 1-5 rating (higher inside the home community).

A model that learns anything beats popularity ranking by a wide margin on this data, which makes it a
test that fails when training is broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import DataConfig, Dataset, load_dataset


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and structure of the synthetic data (defaults: a few seconds to train on a laptop CPU)."""

    n_users: int = 2000
    n_items: int = 1000
    n_communities: int = 20
    mean_interactions: float = 25.0
    min_interactions: int = 5
    affinity: float = 40.0  # how much more likely an in-community item is than an outside one
    popularity_exponent: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_users < 2 or self.n_items < 2:
            raise ValueError("n_users and n_items must be >= 2")
        if self.n_communities < 1 or self.n_communities > self.n_items:
            raise ValueError("n_communities must be in [1, n_items]")
        if not 1 <= self.min_interactions < self.n_items:
            raise ValueError("min_interactions must be in [1, n_items)")
        if self.mean_interactions < self.min_interactions:
            raise ValueError("mean_interactions must be >= min_interactions")


@dataclass(frozen=True)
class SyntheticData:
    """Generated interactions (internal int ids) with their planted labels."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    user_community: np.ndarray
    item_community: np.ndarray
    item_popularity: np.ndarray


def generate(cfg: SyntheticConfig = SyntheticConfig()) -> SyntheticData:
    """Draw a dataset. Same config (seed included) -> identical arrays."""
    rng = np.random.default_rng(cfg.seed)
    item_comm = rng.integers(0, cfg.n_communities, cfg.n_items)
    user_comm = rng.integers(0, cfg.n_communities, cfg.n_users)
    ranks = rng.permutation(cfg.n_items) + 1
    pop = ranks.astype(np.float64) ** -cfg.popularity_exponent
    sigma = 0.6
    mu = np.log(cfg.mean_interactions) - sigma**2 / 2
    deg = np.clip(np.rint(rng.lognormal(mu, sigma, cfg.n_users)), cfg.min_interactions, cfg.n_items // 2)
    deg = deg.astype(np.int64)
    # Gumbel top-k: sampling without replacement proportional to weights, for all users at once.
    logw = np.log(pop)[None, :] + np.where(
        user_comm[:, None] == item_comm[None, :], np.log(cfg.affinity), 0.0
    )
    keys = logw + rng.gumbel(size=(cfg.n_users, cfg.n_items))
    order = np.argsort(-keys, axis=1, kind="stable")
    take = np.arange(cfg.n_items)[None, :] < deg[:, None]
    users = np.repeat(np.arange(cfg.n_users), deg)
    items = order[take]
    same = user_comm[users] == item_comm[items]
    ratings = np.clip(np.rint(rng.normal(np.where(same, 4.2, 2.8), 0.8)), 1, 5).astype(np.int64)
    timestamps = 1_600_000_000 + rng.integers(0, 10_000_000, len(users))
    return SyntheticData(users, items, ratings, timestamps, user_comm, item_comm, pop)


def write_csv(data: SyntheticData, path: str | Path) -> Path:
    """Write ``user_id,item_id,rating,timestamp`` with a header and string ids (``u0001``, ``i0042``).

    String ids on purpose: the demo then exercises the raw <-> internal id mapping end to end.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    uw = len(str(int(data.users.max()) + 1)) if len(data.users) else 1
    iw = len(str(int(data.items.max()) + 1)) if len(data.items) else 1
    lines = [
        f"u{u:0{uw}d},i{i:0{iw}d},{r},{t}"
        for u, i, r, t in zip(
            data.users.tolist(),
            data.items.tolist(),
            data.ratings.tolist(),
            data.timestamps.tolist(),
            strict=True,
        )
    ]
    p.write_text("user_id,item_id,rating,timestamp\n" + "\n".join(lines) + "\n")
    return p


def synthetic_dataset(
    cfg: SyntheticConfig = SyntheticConfig(), workdir: str | Path | None = None, **data_overrides: object
) -> Dataset:
    """Generate, write as CSV under ``workdir`` (a temp dir when None) and load through the real loader."""
    import tempfile

    base = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="hashrec-synth-"))
    path = write_csv(generate(cfg), base / "interactions.csv")
    dc = DataConfig(path=str(path), seed=cfg.seed, **data_overrides)  # type: ignore[arg-type]
    return load_dataset(dc)
