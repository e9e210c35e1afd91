"""Bundles: one immutable, versioned directory with everything the Retriever needs, and its loader.

Layout of ``BUNDLES_DIR`` (written by :mod:`hashrec.index.publish`)::

    BUNDLES_DIR/
      20261127T081500.123456Z-3f2a9c1d/  one version (sortable: UTC time to the microsecond, then a
                                        short hash of the content); the manifest's ``version`` is this name
        manifest.json                   format version, model version, created, dataset fingerprint, bits,
                                        dim, index type + parameters, counts, run metrics, sha256 of files
        items.faissbin                  FAISS binary index over the item codes (internal ids = positions)
        item_codes.npy  user_codes.npy  uint8 [n, bits/8] packed codes (little bit order, hashrec.data.codes)
        item_vectors.npy user_vectors.npy  re-rank vectors [n, dim], float32 (or float16 when exported so)
        user_ids.npy  item_ids.npy      raw ids (unicode arrays): row i is internal id i
        seen_indptr.npy seen_indices.npy  CSR of known (train + valid) items per user
        popularity.npy                  int64 [n_items], known interactions per item
        foldin_*.npy                    optional: encode users the model never saw (see FoldIn)
      current -> 20261127T081500.123456Z-3f2a9c1d   symlink, switched atomically on publish

Codes and re-rank vectors are separate arrays: the codes decide the Hamming recall, the vectors the
re-rank, and their widths (``bits``, ``dim``) are independent.

Loading (:func:`load_bundle`) refuses, with a :class:`BundleError` naming the file and the reason: another
format version, a manifest whose version is not its directory's name, a file the loader reads that the
manifest does not list with its sha256, a checksum mismatch, wrong dtypes or shapes, an invalid seen-items
CSR, NaN or infinite vectors, and an index FAISS cannot read or that disagrees with the counts. Arrays
are memory-mapped when asked (``mmap=True``: ``.npy`` with ``mmap_mode="r"``, the flat index with
``IO_FLAG_MMAP_IFC``), so a large bundle opens fast and worker processes share its pages; float16
vectors are converted to float32 on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import scipy.sparse as sp

from hashrec.data import IdMap

from . import binary_index

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
INDEX_FILE = "items.faissbin"
CURRENT = "current"
VERSION_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}(-\d+)?$")

# name -> (dtypes allowed, shape spec); shape names refer to manifest["counts"], bits and dim
Spec = tuple[tuple[str, ...], tuple[str, ...]]
ARRAYS: dict[str, Spec] = {
    "item_codes": (("uint8",), ("items", "bytes")),
    "user_codes": (("uint8",), ("users", "bytes")),
    "user_vectors": (("float32", "float16"), ("users", "dim")),
    "item_vectors": (("float32", "float16"), ("items", "dim")),
    "user_ids": (("unicode",), ("users",)),
    "item_ids": (("unicode",), ("items",)),
    "seen_indptr": (("int64",), ("users+1",)),
    "seen_indices": (("int32", "int64"), ("seen",)),
    "popularity": (("int64",), ("items",)),
}
FOLDIN_ARRAYS: dict[str, Spec] = {
    "foldin_item": (("float32",), ("items", "foldin_dim")),
    "foldin_code_weight": (("float32",), ("bits", "foldin_dim")),
    "foldin_code_bias": (("float32",), ("bits",)),
    "foldin_vector_weight": (("float32",), ("dim", "foldin_dim")),
    "foldin_vector_bias": (("float32",), ("dim",)),
}


class BundleError(Exception):
    """A bundle cannot be used; ``str()`` names the file and the reason."""


@dataclass(frozen=True)
class FoldIn:
    """Arrays that encode a user the model never saw from the items they interacted with.

    ``x = sum_{i in I} item[i] / |I|^power``; the user's code is ``sign(tanh(code_weight @ x + code_bias))``
    and its re-rank vector ``tanh(vector_weight @ x + vector_bias)`` (the model's two heads applied to the
    pooled item features; for a one-head model both pairs are the same arrays).
    """

    item: np.ndarray  # float32 [n_items, f]
    power: float
    code_weight: np.ndarray  # float32 [bits, f]
    code_bias: np.ndarray  # float32 [bits]
    vector_weight: np.ndarray  # float32 [dim, f]
    vector_bias: np.ndarray  # float32 [dim]

    def arrays(self) -> dict[str, np.ndarray]:
        """The ``foldin_*`` arrays of a bundle (``power`` goes to the manifest)."""
        return {
            "foldin_item": self.item,
            "foldin_code_weight": self.code_weight,
            "foldin_code_bias": self.code_bias,
            "foldin_vector_weight": self.vector_weight,
            "foldin_vector_bias": self.vector_bias,
        }


@dataclass(frozen=True)
class Bundle:
    """Everything one model version serves. Arrays are read-only (memory-mapped where asked)."""

    path: Path
    version: str
    manifest: dict[str, Any]
    users: IdMap
    items: IdMap
    bits: int
    dim: int
    user_codes: np.ndarray
    item_codes: np.ndarray
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    seen: sp.csr_matrix
    popularity: np.ndarray
    index: faiss.IndexBinary
    foldin: FoldIn | None

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def index_type(self) -> str:
        return str(self.manifest["index"]["type"])

    def summary(self) -> dict[str, Any]:
        """A short description (for ``bundle verify`` and the service's /healthz)."""
        m = self.manifest
        return {
            "path": str(self.path),
            "version": self.version,
            "model_version": m.get("model_version"),
            "created": m.get("created"),
            "bits": self.bits,
            "dim": self.dim,
            "users": self.n_users,
            "items": self.n_items,
            "seen": int(self.seen.nnz),
            "index": m.get("index"),
            "vector_dtype": m.get("vector_dtype"),
            "foldin": self.foldin is not None,
            "dataset_fingerprint": m.get("dataset_fingerprint"),
            "metrics": m.get("metrics"),
        }


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_bundle_dir(path: str | Path) -> Path:
    """The version directory ``path`` designates: itself when it holds a manifest, else ``path/current``.

    Returns the resolved (symlink-free) version directory. Raises BundleError when neither exists.
    """
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p.resolve()
    cur = p / CURRENT
    if cur.is_symlink() or cur.exists():
        target = cur.resolve()
        if not (target / MANIFEST).is_file():
            raise BundleError(f"{cur}: points to {target}, which holds no {MANIFEST}")
        return target
    if not p.exists():
        raise BundleError(f"{p}: no such bundle or bundles directory")
    raise BundleError(f"{p}: neither a bundle version (no {MANIFEST}) nor a bundles directory (no {CURRENT})")


def read_manifest(vdir: Path) -> dict[str, Any]:
    """Parse and check a version directory's manifest (format version, required keys, version = name)."""
    mpath = vdir / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError as err:
        raise BundleError(f"{mpath}: missing") from err
    except (OSError, ValueError) as err:
        raise BundleError(f"{mpath}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath}: expected a JSON object")
    fv = manifest.get("format_version")
    if fv != FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: bundle format version {fv!r} is not supported (this hashrec reads version "
            f"{FORMAT_VERSION}); export the run again with `hashrec export RUN_DIR --out BUNDLES`"
        )
    for key in ("version", "bits", "dim", "counts", "index", "files"):
        if key not in manifest:
            raise BundleError(f"{mpath}: required key {key!r} is missing")
    if manifest["version"] != vdir.name:
        raise BundleError(
            f"{mpath}: version {manifest['version']!r} is not its directory's name {vdir.name!r} "
            "(a copied or renamed bundle would serve under a false version)"
        )
    counts = manifest["counts"]
    for key in ("users", "items", "seen"):
        if not isinstance(counts.get(key) if isinstance(counts, dict) else None, int):
            raise BundleError(f"{mpath}: counts.{key} must be an integer")
    if not isinstance(manifest["files"], dict) or not manifest["files"]:
        raise BundleError(f"{mpath}: 'files' must map file names to sha256 digests")
    return manifest


def expected_files(manifest: dict[str, Any]) -> list[str]:
    """The files the loader reads for this manifest: the index and every array (fold-in ones if any)."""
    names = [INDEX_FILE, *(f"{n}.npy" for n in ARRAYS)]
    if manifest.get("foldin"):
        names += [f"{n}.npy" for n in FOLDIN_ARRAYS]
    return names


def verify_files(vdir: Path, manifest: dict[str, Any], *, checksums: bool = True) -> None:
    """Every file the loader reads is listed in the manifest, exists, and (with ``checksums``) matches."""
    files = manifest["files"]
    for name in files:
        if "/" in name or name.startswith("."):
            raise BundleError(f"{vdir / MANIFEST}: bad file name {name!r} in 'files'")
    for name in expected_files(manifest):
        fpath = vdir / name
        if name not in files:
            raise BundleError(f"{fpath}: read by the loader but not listed with a checksum in {MANIFEST}")
        if not fpath.is_file():
            raise BundleError(f"{fpath}: missing (listed in {MANIFEST})")
        if checksums and sha256_file(fpath) != files[name]:
            raise BundleError(
                f"{fpath}: sha256 does not match {MANIFEST} (the file is corrupted or was changed)"
            )


def _dtype_kind(a: np.ndarray) -> str:
    return "unicode" if a.dtype.kind == "U" else str(a.dtype)


def _load_array(vdir: Path, name: str, spec: Spec, dims: dict[str, int], mmap: bool) -> np.ndarray:
    fpath = vdir / f"{name}.npy"
    try:
        mode: Literal["r"] | None = "r" if mmap else None
        arr = np.load(fpath, mmap_mode=mode, allow_pickle=False)
    except FileNotFoundError as err:
        raise BundleError(f"{fpath}: missing") from err
    except (OSError, ValueError) as err:
        raise BundleError(f"{fpath}: not a readable .npy array ({err})") from err
    kinds, shape_spec = spec
    if _dtype_kind(arr) not in kinds:
        raise BundleError(f"{fpath}: dtype {arr.dtype} is not one of {', '.join(kinds)}")
    want = tuple(dims[s] for s in shape_spec)
    if arr.shape != want:
        raise BundleError(f"{fpath}: shape {arr.shape} does not match the manifest ({want})")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise BundleError(f"{fpath}: contains NaN or infinite values")
    return arr


def load_bundle(path: str | Path, *, verify_checksums: bool = True, mmap: bool = False) -> Bundle:
    """Load and validate a bundle: a version directory, or a bundles directory (its ``current`` version).

    Raises BundleError naming the file and the reason (see the module docstring). When ``path`` is a
    bundles directory and the version it pointed to disappears while loading (pruned by a concurrent
    publish), the new ``current`` is loaded instead: a reader sees the old or the new version, never an error.
    """
    last: Exception | None = None
    for _attempt in range(5):
        vdir = resolve_bundle_dir(path)
        try:
            return _load_version(vdir, verify_checksums=verify_checksums, mmap=mmap)
        except BundleError as err:
            # retry only when the version directory itself vanished (a concurrent prune), never on bad content
            if vdir.exists() or (Path(path) / MANIFEST).is_file():
                raise
            last = err
    raise BundleError(f"{path}: the current version kept disappearing while loading ({last})")


def _dims(manifest: dict[str, Any], mpath: Path) -> dict[str, int]:
    bits, dim = int(manifest["bits"]), int(manifest["dim"])
    if bits <= 0 or bits % 8:
        raise BundleError(f"{mpath}: bits must be a positive multiple of 8, got {bits}")
    if dim <= 0:
        raise BundleError(f"{mpath}: dim must be positive, got {dim}")
    counts = manifest["counts"]
    return {
        "users": counts["users"],
        "items": counts["items"],
        "users+1": counts["users"] + 1,
        "seen": counts["seen"],
        "bytes": bits // 8,
        "bits": bits,
        "dim": dim,
        "foldin_dim": int((manifest.get("foldin") or {}).get("dim", 0) or 0),
    }


def _seen_csr(vdir: Path, indptr: np.ndarray, indices: np.ndarray, dims: dict[str, int]) -> sp.csr_matrix:
    if indptr[0] != 0 or indptr[-1] != dims["seen"] or np.any(np.diff(indptr) < 0):
        raise BundleError(
            f"{vdir / 'seen_indptr.npy'}: not a valid CSR row pointer for {dims['seen']} entries"
        )
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= dims["items"]):
        raise BundleError(f"{vdir / 'seen_indices.npy'}: item id out of range [0, {dims['items']})")
    return sp.csr_matrix(
        (np.ones(len(indices), dtype=np.bool_), indices, indptr), shape=(dims["users"], dims["items"])
    )


def _read_index(vdir: Path, manifest: dict[str, Any], dims: dict[str, int], mmap: bool) -> faiss.IndexBinary:
    ipath = vdir / INDEX_FILE
    itype = str(manifest["index"].get("type"))
    if itype not in binary_index.INDEX_TYPES:
        raise BundleError(f"{vdir / MANIFEST}: unknown index type {itype!r}")
    try:
        index = binary_index.read_index(ipath, itype, dict(manifest["index"].get("params", {})), mmap=mmap)
    except RuntimeError as err:
        raise BundleError(f"{ipath}: FAISS cannot read the index ({str(err).splitlines()[0]})") from err
    if index.ntotal != dims["items"] or index.d != dims["bits"]:
        raise BundleError(
            f"{ipath}: index holds {index.ntotal} codes of {index.d} bits, "
            f"manifest says {dims['items']} of {dims['bits']}"
        )
    return index


def _load_version(vdir: Path, *, verify_checksums: bool, mmap: bool) -> Bundle:
    manifest = read_manifest(vdir)
    verify_files(vdir, manifest, checksums=verify_checksums)
    dims = _dims(manifest, vdir / MANIFEST)
    arrs = {name: _load_array(vdir, name, spec, dims, mmap) for name, spec in ARRAYS.items()}
    seen = _seen_csr(vdir, arrs["seen_indptr"], arrs["seen_indices"], dims)
    foldin = None
    if manifest.get("foldin"):
        fa = {name: _load_array(vdir, name, spec, dims, mmap) for name, spec in FOLDIN_ARRAYS.items()}
        foldin = FoldIn(
            item=fa["foldin_item"],
            power=float(manifest["foldin"]["power"]),
            code_weight=fa["foldin_code_weight"],
            code_bias=fa["foldin_code_bias"],
            vector_weight=fa["foldin_vector_weight"],
            vector_bias=fa["foldin_vector_bias"],
        )
    index = _read_index(vdir, manifest, dims, mmap)
    # float16 storage is converted once here (served as float32); float32 stays as loaded
    user_vectors, item_vectors = (
        a if a.dtype == np.float32 else a.astype(np.float32)
        for a in (arrs["user_vectors"], arrs["item_vectors"])
    )
    return Bundle(
        path=vdir,
        version=str(manifest["version"]),
        manifest=manifest,
        users=IdMap(arrs["user_ids"]),
        items=IdMap(arrs["item_ids"]),
        bits=dims["bits"],
        dim=dims["dim"],
        user_codes=arrs["user_codes"],
        item_codes=arrs["item_codes"],
        user_vectors=user_vectors,
        item_vectors=item_vectors,
        seen=seen,
        popularity=arrs["popularity"],
        index=index,
        foldin=foldin,
    )


def list_versions(bundles_dir: str | Path) -> list[str]:
    """Version directory names under ``bundles_dir``, oldest first (names sort by creation time)."""
    d = Path(bundles_dir)
    if not d.is_dir():
        return []
    return sorted(
        p.name for p in d.iterdir() if p.is_dir() and not p.is_symlink() and VERSION_RE.match(p.name)
    )


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and new entries in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
