"""The run directory: its layout, atomic writes, and :func:`load_run` for the other parts of hashrec.

Layout (docs/architecture.md)::

    RUN_DIR/
      config.json      the full TrainConfig (DataConfig included) + its fingerprint
      dataset/         Dataset.save(): the exact id maps and splits trained on
      last.pt          checkpoint after the last finished epoch (model, optimizer, RNG, schedule, counters)
      best.pt          model weights of the best validation result
      metrics.jsonl    one JSON object per epoch
      curves.png       training curves
      embeddings.npz   from best.pt: user_z [n_users, K], item_z [n_items, K] float32 (tanh outputs; codes are
                       sign(z)), plus the fold-in arrays foldin_item / foldin_weight / foldin_bias / foldin_power

Every file is written to a temporary name and moved into place with ``os.replace``, so a run killed at any
moment leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashrec.model.config import ConfigError, TrainConfig
from hashrec.model.data import DataError, Dataset

log = logging.getLogger(__name__)

CONFIG = "config.json"
DATASET = "dataset"
LAST = "last.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
EMBEDDINGS = "embeddings.npz"


class RunError(DataError):
    """A run directory cannot be used as asked (exists, incomplete, or from another config/dataset)."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then move ``tmp`` onto ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Atomic text write."""

    def write(tmp: Path) -> None:
        tmp.write_text(text)

    atomic_write(path, write)


def save_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Write ``config.json`` (the config, its fingerprint)."""
    body = {"config": cfg.to_json(), "fingerprint": cfg.fingerprint()}
    write_text(run_dir / CONFIG, json.dumps(body, indent=2) + "\n")


def read_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig of a run (ConfigError/RunError with the path when unreadable)."""
    path = Path(run_dir) / CONFIG
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{path}: cannot read the run's config: {err}") from err
    try:
        return TrainConfig.from_json(body["config"])
    except (KeyError, TypeError, ConfigError) as err:
        raise RunError(f"{path}: invalid config: {err}") from err


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl`` (flushed and fsynced: it survives a kill)."""
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of ``metrics.jsonl`` (a torn last line, from a kill mid-write, is ignored)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            log.warning("%s: ignoring a torn line", path)
    return out


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Keep only records with ``epoch <= last_epoch`` (on resume: drop epochs the checkpoint does not hold)."""
    kept = [r for r in read_metrics(run_dir) if r.get("epoch", 0) <= last_epoch]
    write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


def save_embeddings(run_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``embeddings.npz`` atomically (float32 arrays; see the module docstring)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    atomic_write(Path(run_dir) / EMBEDDINGS, write)


def plot_curves(run_dir: Path) -> None:
    """``curves.png``: losses, validation Recall@k of each mode, and the code probability, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(run_dir)
    if not recs:
        return
    ep = [r["epoch"] for r in recs]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("loss", "rec", "rank", "softmax"):
        ys = [r.get("losses", {}).get(key) for r in recs]
        if any(y is not None for y in ys):
            axes[0].plot(ep, [np.nan if y is None else y for y in ys], label=key)
    axes[0].set_title("training losses")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    vr = [r for r in recs if r.get("valid")]
    for mode in ("continuous", "hamming", "hierarchical"):
        key = f"{mode}_recall"
        pts = [(r["epoch"], r["valid"][key]) for r in vr if key in r["valid"]]
        if pts:
            axes[1].plot(*zip(*pts, strict=True), marker="o", label=mode)
    axes[1].set_title("validation Recall@20")
    axes[1].set_xlabel("epoch")
    axes[1].legend()
    axes[2].plot(ep, [r.get("code_prob", np.nan) for r in recs])
    axes[2].set_title("code probability (1 = pure STE)")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=80)

    atomic_write(Path(run_dir) / CURVES, write)
    plt.close(fig)


@dataclass
class Run:
    """A finished (or in-progress) training run, as the index and evaluation code need it."""

    path: Path
    config: TrainConfig
    dataset: Dataset
    user_z: np.ndarray
    item_z: np.ndarray
    foldin: dict[str, np.ndarray]
    metrics: list[dict[str, Any]]

    @property
    def bits(self) -> int:
        """Code length K."""
        return int(self.user_z.shape[1])


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory: config, dataset, embeddings (user_z, item_z, fold-in arrays), metrics.

    Raises RunError naming the missing or broken file (e.g. a run still training has no embeddings.npz).
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise RunError(f"{d}: no such run directory")
    cfg = read_config(d)
    ds = Dataset.load(d / DATASET)
    path = d / EMBEDDINGS
    if not path.exists():
        raise RunError(f"{path}: missing (training has not finished; embeddings are written at the end)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise RunError(f"{path}: cannot read: {err}") from err
    for key, n in (("user_z", ds.n_users), ("item_z", ds.n_items)):
        if key not in arrays:
            raise RunError(f"{path}: missing array {key!r}")
        if arrays[key].ndim != 2 or arrays[key].shape[0] != n:
            raise RunError(f"{path}: {key} has shape {arrays[key].shape}, expected ({n}, K)")
    foldin = {k: v for k, v in arrays.items() if k.startswith("foldin_")}
    return Run(
        d,
        cfg,
        ds,
        arrays["user_z"].astype(np.float32),
        arrays["item_z"].astype(np.float32),
        foldin,
        read_metrics(d),
    )
