"""Write bundles: from arrays (:func:`build_bundle`) or from a training run directory (:func:`export_run`).

Publishing is atomic: files go to a hidden temporary directory inside ``BUNDLES_DIR``, each file and the
directory are fsynced, the directory is renamed to its version name, and the ``current`` symlink is
switched with ``os.replace`` of a freshly made symlink (atomic on POSIX). A reader resolving ``current``
therefore sees either the old or the new version, complete. Old versions beyond ``keep`` are pruned
(never the current one); a pruned directory is first renamed to a hidden name, so no half-deleted
directory is ever visible under a version name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from hashrec.model.data import Dataset

from . import binary_index
from .bundle import (
    CURRENT,
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST,
    BundleError,
    FoldIn,
    fsync_dir,
    list_versions,
    sha256_file,
)
from .codes import check_bits, pack

log = logging.getLogger(__name__)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def build_bundle(
    bundles_dir: str | Path,
    *,
    user_z: np.ndarray,
    item_z: np.ndarray,
    dataset: Dataset | None = None,
    seen: sp.csr_matrix | None = None,
    user_ids: list[str] | None = None,
    item_ids: list[str] | None = None,
    popularity: np.ndarray | None = None,
    foldin: FoldIn | None = None,
    metrics: dict[str, Any] | None = None,
    model_version: str = "unversioned",
    index_type: str = "flat",
    index_params: dict[str, Any] | None = None,
    keep: int = 5,
    dtype: str = "float32",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a new bundle version from arrays, publish it as ``current`` and prune old versions.

    Args:
        bundles_dir: directory holding the versions (created if needed).
        user_z, item_z: continuous embeddings [n_users, K], [n_items, K]; codes are ``sign(z)``.
        dataset: gives the raw ids, the seen items (train + valid) and popularity, and its fingerprint.
            Without it, ``user_ids``/``item_ids`` default to ``"0".."n-1"``, ``seen`` to empty and
            ``popularity`` to the column sums of ``seen``.
        foldin: optional fold-in arrays for users the model never saw.
        metrics: the run's evaluation metrics, copied into the manifest.
        index_type, index_params: see :mod:`hashrec.index.binary_index`.
        keep: versions kept after publishing (>= 1; the current one is never deleted).
        dtype: ``float32`` or ``float16`` storage of the embeddings (served as float32 either way).

    Returns:
        The published version directory. Raises ValueError for inconsistent inputs.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    user_z = np.ascontiguousarray(user_z, dtype=np.float32)
    item_z = np.ascontiguousarray(item_z, dtype=np.float32)
    if user_z.ndim != 2 or item_z.ndim != 2 or user_z.shape[1] != item_z.shape[1]:
        raise ValueError(f"user_z {user_z.shape} and item_z {item_z.shape} must be 2-d with the same width")
    n_users, bits = user_z.shape
    n_items = item_z.shape[0]
    check_bits(bits)
    if not (np.isfinite(user_z).all() and np.isfinite(item_z).all()):
        raise ValueError("embeddings contain NaN or infinite values")
    if dataset is not None:
        if (dataset.n_users, dataset.n_items) != (n_users, n_items):
            raise ValueError(
                f"dataset has {dataset.n_users} users x {dataset.n_items} items, embeddings "
                f"{n_users} x {n_items}"
            )
        user_ids = [str(x) for x in dataset.users.raw]
        item_ids = [str(x) for x in dataset.items.raw]
        seen = dataset.graph("known").user_items
        popularity = dataset.item_popularity()
    user_ids = user_ids if user_ids is not None else [str(i) for i in range(n_users)]
    item_ids = item_ids if item_ids is not None else [str(i) for i in range(n_items)]
    if len(user_ids) != n_users or len(item_ids) != n_items:
        raise ValueError("user_ids / item_ids lengths must match the embeddings")
    seen = sp.csr_matrix((n_users, n_items), dtype=np.float32) if seen is None else sp.csr_matrix(seen)
    if seen.shape != (n_users, n_items):
        raise ValueError(f"seen has shape {seen.shape}, expected {(n_users, n_items)}")
    seen.sum_duplicates()
    seen.sort_indices()
    if popularity is None:
        popularity = np.asarray((seen != 0).sum(axis=0)).ravel()
    popularity = np.asarray(popularity, dtype=np.int64)
    if popularity.shape != (n_items,):
        raise ValueError(f"popularity has shape {popularity.shape}, expected ({n_items},)")

    bundles = Path(bundles_dir)
    bundles.mkdir(parents=True, exist_ok=True)
    tmp = bundles / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        item_codes, user_codes = pack(item_z), pack(user_z)
        index, params = binary_index.build_index(item_codes, index_type, index_params)
        binary_index.write_index(index, tmp / INDEX_FILE)
        _fsync_file(tmp / INDEX_FILE)
        store = np.float16 if dtype == "float16" else np.float32
        arrays: dict[str, np.ndarray] = {
            "item_codes": item_codes,
            "user_codes": user_codes,
            "user_z": user_z.astype(store),
            "item_z": item_z.astype(store),
            "user_ids": np.asarray(user_ids, dtype=str),
            "item_ids": np.asarray(item_ids, dtype=str),
            "seen_indptr": seen.indptr.astype(np.int64),
            "seen_indices": seen.indices.astype(np.int32 if n_items < 2**31 else np.int64),
            "popularity": popularity,
        }
        if foldin is not None:
            f_item = np.ascontiguousarray(foldin.item, dtype=np.float32)
            f_w = np.ascontiguousarray(foldin.weight, dtype=np.float32)
            f_b = np.ascontiguousarray(foldin.bias, dtype=np.float32).ravel()
            if f_item.shape[0] != n_items or f_w.shape != (bits, f_item.shape[1]) or f_b.shape != (bits,):
                raise ValueError(
                    f"fold-in arrays have shapes item {f_item.shape}, weight {f_w.shape}, bias {f_b.shape};"
                    f" expected [{n_items}, d], [{bits}, d], [{bits}]"
                )
            arrays.update(foldin_item=f_item, foldin_weight=f_w, foldin_bias=f_b)
        for name, arr in arrays.items():
            _save_npy(tmp / f"{name}.npy", arr)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:8]
        now = _dt.datetime.now(_dt.UTC)
        version = _unique_version(bundles, f"{now:%Y%m%dT%H%M%S.%fZ}-{content}")
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "version": version,
            "model_version": model_version,
            "created": now.isoformat(timespec="seconds"),
            "dataset_fingerprint": dataset.fingerprint() if dataset is not None else None,
            "dataset_name": dataset.name if dataset is not None else None,
            "bits": bits,
            "dim": bits,
            "bit_order": "little: dimension j is bit j % 8 of byte j // 8; bit 1 iff z[j] >= 0",
            "embedding_dtype": dtype,
            "index": {"type": index_type, "params": params, "bytes": (tmp / INDEX_FILE).stat().st_size},
            "counts": {"users": n_users, "items": n_items, "seen": int(seen.nnz)},
            "foldin": (
                {"dim": int(arrays["foldin_item"].shape[1]), "power": float(foldin.power)}
                if foldin is not None
                else None
            ),
            "metrics": metrics or {},
            "files": files,
            **(extra or {}),
        }
        mtmp = tmp / MANIFEST
        mtmp.write_text(json.dumps(manifest, indent=2, default=float) + "\n")
        _fsync_file(mtmp)
        fsync_dir(tmp)
        final = bundles / version
        os.rename(tmp, final)
        fsync_dir(bundles)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(bundles, version)
    prune(bundles, keep)
    log.info(
        "bundle %s: %d users, %d items, %d bits, index %s %s (%.1f s)",
        final,
        n_users,
        n_items,
        bits,
        index_type,
        params,
        time.perf_counter() - t0,
    )
    return final


def _unique_version(bundles: Path, base: str) -> str:
    name, n = base, 1
    while (bundles / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def publish(bundles_dir: str | Path, version: str) -> None:
    """Point ``current`` at ``version`` atomically (new symlink, then ``os.replace``)."""
    bundles = Path(bundles_dir)
    if not (bundles / version / MANIFEST).is_file():
        raise BundleError(f"{bundles / version}: not a bundle version (no {MANIFEST})")
    link = bundles / f".{CURRENT}-{uuid.uuid4().hex}"
    os.symlink(version, link)  # relative: the bundles directory can be moved or mounted elsewhere
    os.replace(link, bundles / CURRENT)
    fsync_dir(bundles)


def prune(bundles_dir: str | Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the current one; returns the deleted names."""
    bundles = Path(bundles_dir)
    cur = bundles / CURRENT
    current = os.readlink(cur) if cur.is_symlink() else None
    versions = list_versions(bundles)
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != current]
    for v in doomed:
        trash = bundles / f".trash-{v}-{uuid.uuid4().hex[:6]}"
        os.rename(bundles / v, trash)
        shutil.rmtree(trash, ignore_errors=True)
    if doomed:
        log.info("pruned %d old bundle version(s): %s", len(doomed), ", ".join(doomed))
    return doomed


def export_run(run_dir: str | Path, bundles_dir: str | Path, **kw: Any) -> Path:
    """Export a training run (RUN_DIR/dataset, embeddings.npz, optional eval.json) as a new bundle.

    Reads the run with :func:`hashrec.model.run.load_run` (which validates config, dataset and embeddings;
    its RunError names the broken file). ``kw`` goes to :func:`build_bundle` (index_type, index_params,
    keep, dtype, model_version, ...). The model version defaults to the run directory's name plus the
    embeddings' sha256 prefix. The manifest's metrics are ``eval.json`` (when present) and the last
    validation record of ``metrics.jsonl``.
    """
    from hashrec.model.run import load_run

    run = load_run(run_dir)
    emb = run.path / "embeddings.npz"
    foldin = None
    fkeys = {"foldin_item", "foldin_weight", "foldin_bias", "foldin_power"}
    if fkeys <= set(run.foldin):
        f = run.foldin
        foldin = FoldIn(f["foldin_item"], f["foldin_weight"], f["foldin_bias"], float(f["foldin_power"]))
    elif run.foldin:
        log.warning("%s: incomplete fold-in arrays %s; exporting without fold-in", emb, sorted(run.foldin))
    metrics: dict[str, Any] = {}
    ev = run.path / "eval.json"
    if ev.is_file():
        try:
            metrics["eval"] = json.loads(ev.read_text())
        except ValueError as err:
            raise BundleError(f"{ev}: not valid JSON ({err})") from err
    if run.metrics:
        metrics["last_epoch"] = run.metrics[-1]
    kw.setdefault("model_version", f"{run.path.resolve().name}@{sha256_file(emb)[:12]}")
    kw.setdefault("foldin", foldin)
    return build_bundle(
        bundles_dir,
        user_z=run.user_z,
        item_z=run.item_z,
        dataset=run.dataset,
        metrics=metrics,
        extra={"run_dir": str(run.path.resolve())},
        **kw,
    )
