"""Write bundle versions from arrays and publish them: :func:`build_bundle`, :func:`publish`, :func:`prune`.

Publishing is atomic: files go to a hidden temporary directory inside ``BUNDLES_DIR``, each file and the
directory are fsynced, the directory is renamed to its version name, loaded back and fully verified
(:func:`hashrec.index.bundle.load_bundle`), and only then is the ``current`` symlink switched, with
``os.replace`` of a freshly made symlink (atomic on POSIX). A reader resolving ``current`` therefore sees
either the old or the new version, complete, and a version that fails verification never becomes
current. Old versions beyond ``keep`` are pruned (never the current one); a pruned directory is first
renamed to a hidden name, so no half-deleted directory is ever visible under a version name.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from hashrec.data import Dataset
from hashrec.data.codes import check_bits, pack

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
    load_bundle,
    sha256_file,
)

log = logging.getLogger(__name__)

LEASES = ".leases"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _float_rows(name: str, a: np.ndarray, n: int) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] != n:
        raise ValueError(f"{name} has shape {a.shape}, expected ({n}, d)")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _foldin_arrays(foldin: FoldIn, n_items: int, bits: int, dim: int) -> dict[str, np.ndarray]:
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in foldin.arrays().items()}
    f = arrays["foldin_item"].shape[1] if arrays["foldin_item"].ndim == 2 else -1
    want = {
        "foldin_item": (n_items, f),
        "foldin_code_weight": (bits, f),
        "foldin_code_bias": (bits,),
        "foldin_vector_weight": (dim, f),
        "foldin_vector_bias": (dim,),
    }
    for name, shape in want.items():
        if arrays[name].shape != shape or not np.isfinite(arrays[name]).all():
            raise ValueError(
                f"fold-in array {name} has shape {arrays[name].shape} (expected {shape}) or NaNs"
            )
    return arrays


def _seen_and_popularity(
    n_users: int, n_items: int, seen: sp.spmatrix | None, popularity: np.ndarray | None
) -> tuple[sp.csr_matrix, np.ndarray]:
    csr = sp.csr_matrix((n_users, n_items), dtype=np.float32) if seen is None else sp.csr_matrix(seen)
    if csr.shape != (n_users, n_items):
        raise ValueError(f"seen has shape {csr.shape}, expected {(n_users, n_items)}")
    csr.sum_duplicates()
    csr.sort_indices()
    pop = np.asarray((csr != 0).sum(axis=0)).ravel() if popularity is None else popularity
    pop = np.asarray(pop, dtype=np.int64)
    if pop.shape != (n_items,):
        raise ValueError(f"popularity has shape {pop.shape}, expected ({n_items},)")
    return csr, pop


def build_bundle(
    bundles_dir: str | Path,
    *,
    user_z: np.ndarray,
    item_z: np.ndarray,
    user_vectors: np.ndarray | None = None,
    item_vectors: np.ndarray | None = None,
    dataset: Dataset | None = None,
    seen: sp.spmatrix | None = None,
    user_ids: Sequence[str] | None = None,
    item_ids: Sequence[str] | None = None,
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
    """Write a new bundle version from arrays, verify it, publish it as ``current``, prune old versions.

    Args:
        bundles_dir: directory holding the versions (created if needed).
        user_z, item_z: the code head's outputs [n, bits]; the codes are ``sign(z)``.
        user_vectors, item_vectors: the re-rank vectors [n, dim] (default: ``user_z`` / ``item_z``).
        dataset: gives the raw ids, the seen items (train + valid), popularity and its fingerprint.
            Without it, ``user_ids``/``item_ids`` default to ``"0".."n-1"``, ``seen`` to empty and
            ``popularity`` to the column counts of ``seen``.
        foldin: optional fold-in arrays for users the model never saw.
        metrics: the run's evaluation metrics, copied into the manifest.
        index_type, index_params: see :mod:`hashrec.index.binary_index`.
        keep: versions kept after publishing (>= 1; the current one is never deleted).
        dtype: ``float32`` or ``float16`` storage of the vectors (served as float32 either way).

    Returns:
        The published version directory. Raises ValueError for inconsistent inputs, BundleError when the
        written version fails verification (it is removed and ``current`` is left as it was).
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    n_users, n_items = len(user_z), len(item_z)
    user_z, item_z = _float_rows("user_z", user_z, n_users), _float_rows("item_z", item_z, n_items)
    bits = check_bits(user_z.shape[1])
    if item_z.shape[1] != bits:
        raise ValueError(f"user_z has {bits} dims but item_z {item_z.shape[1]}")
    user_vectors = _float_rows("user_vectors", user_z if user_vectors is None else user_vectors, n_users)
    item_vectors = _float_rows("item_vectors", item_z if item_vectors is None else item_vectors, n_items)
    dim = user_vectors.shape[1]
    if item_vectors.shape[1] != dim:
        raise ValueError(f"user_vectors have {dim} dims but item_vectors {item_vectors.shape[1]}")
    if dataset is not None:
        if (dataset.n_users, dataset.n_items) != (n_users, n_items):
            raise ValueError(
                f"dataset has {dataset.n_users} users x {dataset.n_items} items, arrays {n_users} x {n_items}"
            )
        user_ids, item_ids = dataset.users.to_raw(range(n_users)), dataset.items.to_raw(range(n_items))
        seen, popularity = dataset.graph("known").user_items, dataset.item_popularity()
    user_ids = list(user_ids) if user_ids is not None else [str(i) for i in range(n_users)]
    item_ids = list(item_ids) if item_ids is not None else [str(i) for i in range(n_items)]
    if len(user_ids) != n_users or len(item_ids) != n_items:
        raise ValueError("user_ids / item_ids lengths must match the arrays")
    seen_csr, pop = _seen_and_popularity(n_users, n_items, seen, popularity)
    store = np.float16 if dtype == "float16" else np.float32
    arrays: dict[str, np.ndarray] = {
        "item_codes": pack(item_z),
        "user_codes": pack(user_z),
        "user_vectors": user_vectors.astype(store),
        "item_vectors": item_vectors.astype(store),
        "user_ids": np.asarray(user_ids, dtype=str),
        "item_ids": np.asarray(item_ids, dtype=str),
        "seen_indptr": seen_csr.indptr.astype(np.int64),
        "seen_indices": seen_csr.indices.astype(np.int32 if n_items < 2**31 else np.int64),
        "popularity": pop,
    }
    if foldin is not None:
        arrays.update(_foldin_arrays(foldin, n_items, bits, dim))
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_version": model_version,
        "dataset_fingerprint": dataset.fingerprint() if dataset is not None else None,
        "dataset_name": dataset.name if dataset is not None else None,
        "bits": bits,
        "dim": dim,
        "bit_order": "little: dimension j is bit j % 8 of byte j // 8; bit 1 iff z[j] >= 0",
        "vector_dtype": dtype,
        "counts": {"users": n_users, "items": n_items, "seen": int(seen_csr.nnz)},
        "foldin": {"dim": int(arrays["foldin_item"].shape[1]), "power": float(foldin.power)}
        if foldin
        else None,
        "metrics": metrics or {},
        **(extra or {}),
    }
    return write_version(bundles_dir, arrays, manifest, index_type, index_params, keep)


def write_version(
    bundles_dir: str | Path,
    arrays: dict[str, np.ndarray],
    manifest: dict[str, Any],
    index_type: str,
    index_params: dict[str, Any] | None,
    keep: int,
) -> Path:
    """Write ``arrays`` + the FAISS index of ``item_codes`` as a new version, verify, publish, prune."""
    bundles = Path(bundles_dir)
    bundles.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = bundles / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    final: Path | None = None
    try:
        index, params = binary_index.build_index(arrays["item_codes"], index_type, index_params)
        binary_index.write_index(index, tmp / INDEX_FILE)
        _fsync_file(tmp / INDEX_FILE)
        for name, arr in arrays.items():
            _save_npy(tmp / f"{name}.npy", arr)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:8]
        now = _dt.datetime.now(_dt.UTC)
        version = _unique_version(bundles, f"{now:%Y%m%dT%H%M%S.%fZ}-{content}")
        full = {
            **manifest,
            "version": version,
            "created": now.isoformat(timespec="seconds"),
            "index": {"type": index_type, "params": params, "bytes": (tmp / INDEX_FILE).stat().st_size},
            "files": files,
        }
        mtmp = tmp / MANIFEST
        mtmp.write_text(json.dumps(full, indent=2, default=float) + "\n")
        _fsync_file(mtmp)
        fsync_dir(tmp)
        final = bundles / version
        os.rename(tmp, final)
        fsync_dir(bundles)
        load_bundle(final)  # the full check a server would make: a broken version never becomes current
    except BaseException:
        shutil.rmtree(final if final is not None and final.exists() else tmp, ignore_errors=True)
        raise
    publish(bundles, version)
    prune(bundles, keep)
    log.info("bundle %s published (%.1f s)", final, time.perf_counter() - t0)
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


def write_lease(bundles_dir: str | Path, holder: str, version: str, ttl_s: float) -> None:
    """Record that ``holder`` (a serving process) serves ``version`` for the next ``ttl_s`` seconds.

    Leases live in ``BUNDLES_DIR/.leases/<holder>.json`` (atomic replace); :func:`prune` keeps every version
    with a live lease, so a replica that has not switched yet never loses the files it serves. Raises
    OSError when the directory is not writable (the caller decides how loud to be).
    """
    d = Path(bundles_dir) / LEASES
    d.mkdir(exist_ok=True)
    tmp = d / f".{holder}.{uuid.uuid4().hex[:6]}"
    tmp.write_text(json.dumps({"version": version, "expires": time.time() + ttl_s}))
    os.replace(tmp, d / f"{holder}.json")


def drop_lease(bundles_dir: str | Path, holder: str) -> None:
    """Remove ``holder``'s lease (a clean shutdown); missing is fine."""
    (Path(bundles_dir) / LEASES / f"{holder}.json").unlink(missing_ok=True)


def leased_versions(bundles_dir: str | Path) -> set[str]:
    """Versions with at least one unexpired lease (unreadable or expired lease files are ignored)."""
    now, out = time.time(), set()
    for f in (Path(bundles_dir) / LEASES).glob("*.json"):
        try:
            body = json.loads(f.read_text())
            if float(body["expires"]) > now:
                out.add(str(body["version"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def prune(bundles_dir: str | Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the current one nor one that a live replica
    serves (:func:`leased_versions`); returns the deleted names."""
    bundles = Path(bundles_dir)
    cur = bundles / CURRENT
    current = os.readlink(cur) if cur.is_symlink() else None
    versions = list_versions(bundles)
    protected = leased_versions(bundles) | {current}
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v not in protected]
    for v in doomed:
        trash = bundles / f".trash-{v}-{uuid.uuid4().hex[:6]}"
        os.rename(bundles / v, trash)
        shutil.rmtree(trash, ignore_errors=True)
    if doomed:
        log.info("pruned %d old bundle version(s): %s", len(doomed), ", ".join(doomed))
    return doomed
