"""``hashrec export``: a finished training run -> a published bundle (:func:`hashrec.index.publish.build_bundle`).

The run is read with :func:`hashrec.model.run.load_run` (which validates config, dataset and embeddings;
its RunError names the broken file); the bundle gets the run's codes (``sign`` of the code head), its
re-rank vectors, its fold-in arrays, its dataset's ids, seen items and popularity, and its metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hashrec.index.bundle import BundleError, sha256_file
from hashrec.index.publish import build_bundle

from .run import EMBEDDINGS, load_run

log = logging.getLogger(__name__)


def export_run(run_dir: str | Path, bundles_dir: str | Path, **kw: Any) -> Path:
    """Export a training run as a new bundle version and publish it; returns the version directory.

    ``kw`` goes to :func:`build_bundle` (index_type, index_params, keep, dtype, model_version, ...). The
    model version defaults to the run directory's name plus the embeddings' sha256 prefix. The manifest's
    metrics are ``eval.json`` (when present) and the last record of ``metrics.jsonl``.
    """
    run = load_run(run_dir)
    metrics: dict[str, Any] = {}
    ev = run.path / "eval.json"
    if ev.is_file():
        try:
            metrics["eval"] = json.loads(ev.read_text())
        except ValueError as err:
            raise BundleError(f"{ev}: not valid JSON ({err})") from err
    if run.metrics:
        metrics["last_epoch"] = run.metrics[-1]
    kw.setdefault("model_version", f"{run.path.resolve().name}@{sha256_file(run.path / EMBEDDINGS)[:12]}")
    return build_bundle(
        bundles_dir,
        user_z=run.user_z,
        item_z=run.item_z,
        user_vectors=run.user_vectors,
        item_vectors=run.item_vectors,
        dataset=run.dataset,
        foldin=run.foldin,
        metrics=metrics,
        extra={"run_dir": str(run.path.resolve())},
        **kw,
    )
