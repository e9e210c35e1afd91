"""The run directory: its layout, atomic writes, and :func:`load_run` for the other parts of hashrec.

Layout (docs/architecture.md)::

    RUN_DIR/
      config.json      the full TrainConfig (DataConfig included) + its fingerprint
      dataset/         Dataset.save(): the exact id maps and splits trained on
      last.pt          checkpoint after the last finished epoch of the phase in progress (model, optimizer,
                       every rank's RNG states, the phase's outcome so far, elapsed time)
      best.pt          the selected model (best validation epoch of the select phase)
      refit.pt         the refit model (train + validation, the selected number of epochs), when refitting
      selection.json   the selected epoch and value, why selection stopped, the refit's outcome
      metrics.jsonl    one JSON object per epoch and phase (losses, validation, timings)
      curves.png       training curves
      embeddings.npz   the served model (refit.pt, else best.pt) over the known graph: user_z / item_z
                       [n, K] float32 (the code head's tanh outputs; codes are sign(z)), user_vectors /
                       item_vectors (the re-rank head; absent when it is the code head), fold-in arrays
      valid_embeddings.npz  best.pt over the training graph only: what `evaluate --split valid` scores

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

from hashrec.data import DataError, Dataset
from hashrec.index.bundle import FoldIn
from hashrec.model.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)


class RunError(DataError):
    """A run cannot go on as asked (its directory, checkpoint, device, process group or data)."""


CONFIG = "config.json"
DATASET = "dataset"
LAST = "last.pt"
BEST = "best.pt"
REFIT = "refit.pt"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
EMBEDDINGS = "embeddings.npz"
VALID_EMBEDDINGS = "valid_embeddings.npz"
FOLDIN_KEYS = (
    "foldin_item",
    "foldin_power",
    "foldin_code_weight",
    "foldin_code_bias",
    "foldin_vector_weight",
    "foldin_vector_bias",
)


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


def truncate_metrics(run_dir: Path, phase: str, candidate: int, last_epoch: int) -> None:
    """On resume: keep the records of earlier phases and candidates and this ``phase``'s and
    ``candidate``'s up to ``last_epoch`` (the checkpoint's), drop the epochs the checkpoint does not hold."""

    def position(phase: str, candidate: int) -> tuple[int, int]:
        return (0, candidate) if phase == "select" else (1, 0)

    here = position(phase, candidate)
    kept = []
    for r in read_metrics(run_dir):
        at = position(r.get("phase", "select"), r.get("candidate", 0))
        if at < here or (at == here and r.get("epoch", 0) <= last_epoch):
            kept.append(r)
    write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


def save_embeddings(run_dir: Path, arrays: dict[str, np.ndarray], name: str = EMBEDDINGS) -> None:
    """Write ``embeddings.npz`` (or another set of arrays, ``name``) atomically (see the module docstring)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    atomic_write(Path(run_dir) / name, write)


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
    """A finished training run, as evaluation and export need it."""

    path: Path
    config: TrainConfig
    dataset: Dataset
    user_z: np.ndarray
    item_z: np.ndarray
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    foldin: FoldIn | None
    metrics: list[dict[str, Any]]

    @property
    def bits(self) -> int:
        """Code length K."""
        return int(self.user_z.shape[1])


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise RunError(f"{path}: missing (training has not finished; embeddings are written at the end)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as err:
        raise RunError(f"{path}: cannot read: {err}") from err


def _rows(
    path: Path, arrays: dict[str, np.ndarray], key: str, n: int, width: int | None = None
) -> np.ndarray:
    if key not in arrays:
        raise RunError(f"{path}: missing array {key!r}")
    a = arrays[key]
    if a.ndim != 2 or a.shape[0] != n or (width is not None and a.shape[1] != width):
        raise RunError(f"{path}: {key} has shape {a.shape}, expected ({n}, {width or 'K'})")
    if not np.isfinite(a).all():
        raise RunError(f"{path}: {key} contains NaN or infinite values")
    return a.astype(np.float32)


def _foldin(path: Path, arrays: dict[str, np.ndarray]) -> FoldIn | None:
    present = [k for k in FOLDIN_KEYS if k in arrays]
    if not present:
        return None
    if len(present) != len(FOLDIN_KEYS):
        log.warning("%s: incomplete fold-in arrays %s; no fold-in", path, present)
        return None
    return FoldIn(
        item=arrays["foldin_item"],
        power=float(arrays["foldin_power"]),
        code_weight=arrays["foldin_code_weight"],
        code_bias=arrays["foldin_code_bias"],
        vector_weight=arrays["foldin_vector_weight"],
        vector_bias=arrays["foldin_vector_bias"],
    )


def load_run(run_dir: str | Path, embeddings: str = EMBEDDINGS) -> Run:
    """Read a run directory: config, dataset, embeddings (codes' z, re-rank vectors, fold-in), metrics.

    ``embeddings``: which file of the run (``embeddings.npz``, or another set written beside it). Raises
    RunError naming the missing or broken file (e.g. a run still training has no embeddings.npz).
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise RunError(f"{d}: no such run directory")
    cfg = read_config(d)
    ds = Dataset.load(d / DATASET)
    path = d / embeddings
    arrays = _read_npz(path)
    user_z = _rows(path, arrays, "user_z", ds.n_users)
    if user_z.shape[1] % 8 or user_z.shape[1] == 0:
        raise RunError(
            f"{path}: user_z has {user_z.shape[1]} columns; a code length must be a positive multiple of 8"
        )
    item_z = _rows(path, arrays, "item_z", ds.n_items, user_z.shape[1])
    has_vectors = "user_vectors" in arrays or "item_vectors" in arrays
    user_vectors = _rows(path, arrays, "user_vectors", ds.n_users) if has_vectors else user_z
    item_vectors = (
        _rows(path, arrays, "item_vectors", ds.n_items, user_vectors.shape[1]) if has_vectors else item_z
    )
    return Run(d, cfg, ds, user_z, item_z, user_vectors, item_vectors, _foldin(path, arrays), read_metrics(d))
