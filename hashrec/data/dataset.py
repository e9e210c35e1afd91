"""Datasets for implicit feedback: load any supported file layout, map ids, split, and build graphs.

The entry point is :func:`load_dataset` with a :class:`DataConfig`. Decisions it makes, all counted in
``Dataset.report`` and logged (nothing is dropped silently):

- ratings below ``min_rating`` are dropped (when a threshold is given and the file has ratings);
- duplicate (user, item) pairs are collapsed to one (the earliest, when there are timestamps);
- with a given test file, ids are defined by the training file: test interactions whose user or item never
  occurs in training are dropped and counted (``test_dropped_unseen_user`` / ``test_dropped_unseen_item``),
  because a model cannot score ids it has never seen; test pairs that also occur in training are dropped
  and counted (``test_dropped_in_train``), since training items are masked at evaluation;
- the optional k-core filter drops users and items with fewer than k interactions, iteratively.

Splits: the dataset's own train/test when given (a folder with ``train.txt`` and ``test.txt``, or
``test_path``); otherwise a per-user random holdout (``test_ratio``, ``seed``) or temporal leave-last-n-out
(``split="temporal"``, needs timestamps). The validation split is always carved out of the training side,
per user, at random (``valid_ratio``): model selection uses it, never the test set.

Naming: ``train`` is what the model fits, ``valid`` the validation interactions, ``known`` = train + valid
(everything observed before test: masked at test time, the "seen" items of the service).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import DataError
from .graph import BipartiteGraph
from .ids import IdMap
from .parquet import read_parquet
from .readers import RawInteractions, read_adjacency_lists, read_delimited
from .setops import contains, lookup
from .splits import kcore, leave_last_out, random_holdout

log = logging.getLogger(__name__)

Format = Literal["auto", "adjacency", "delimited", "parquet"]
#: File name endings that ``fmt="auto"`` reads as Parquet.
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
SplitKind = Literal["auto", "given", "random", "temporal"]


@dataclass(frozen=True)
class DataConfig:
    """How to load and split a dataset. Validated on construction; serialisable with ``asdict``.

    Attributes:
        path: a folder (``train.txt[.gz]`` + ``test.txt``) or an interaction file.
        test_path: an explicit test file in the same format as ``path`` (optional).
        fmt: ``adjacency`` (``user item item ...`` lines), ``delimited`` (one interaction per line),
            ``parquet`` (a table with user and item columns), or ``auto``: adjacency for folders and files
            named ``train*.txt[.gz]``, parquet for ``*.parquet`` / ``*.pq`` / ``*.parq``, delimited otherwise.
        sep: separator of delimited files; None sniffs (``::``, tab, comma, ``;``, ``|``, whitespace).
        columns: column names of delimited files, e.g. ``["user", "item", "rating", "timestamp"]``.
        header: whether delimited files start with a header; None auto-detects.
        min_rating: keep only interactions with rating >= this (implicit positives); None keeps all.
        kcore: keep the k-core of the interactions (0 or 1 = no filter).
        split: ``given`` (needs a test file), ``random``, ``temporal`` or ``auto`` (given when a test file
            exists, else random).
        test_ratio: per-user fraction held out for test by the random split.
        leave_out: interactions per user held out for test by the temporal split.
        valid_ratio: per-user fraction of training interactions carved out for validation (0 = none).
        seed: seed of the random splits.
    """

    path: str
    test_path: str | None = None
    fmt: Format = "auto"
    sep: str | None = None
    columns: tuple[str, ...] | None = None
    header: bool | None = None
    min_rating: float | None = None
    kcore: int = 0
    split: SplitKind = "auto"
    test_ratio: float = 0.2
    leave_out: int = 1
    valid_ratio: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fmt not in ("auto", "adjacency", "delimited", "parquet"):
            raise DataError(f"fmt: expected auto, adjacency, delimited or parquet, got {self.fmt!r}")
        if self.split not in ("auto", "given", "random", "temporal"):
            raise DataError(f"split: expected auto, given, random or temporal, got {self.split!r}")
        if not 0.0 < self.test_ratio < 1.0:
            raise DataError(f"test_ratio: expected a value in (0, 1), got {self.test_ratio}")
        if not 0.0 <= self.valid_ratio < 1.0:
            raise DataError(f"valid_ratio: expected a value in [0, 1), got {self.valid_ratio}")
        if self.leave_out < 1:
            raise DataError(f"leave_out: expected >= 1, got {self.leave_out}")
        if self.kcore < 0:
            raise DataError(f"kcore: expected >= 0, got {self.kcore}")
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(self.columns))

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``DataConfig(**d)`` rebuilds it)."""
        d = asdict(self)
        d["columns"] = list(self.columns) if self.columns is not None else None
        return d


@dataclass(frozen=True)
class Interactions:
    """Parallel arrays of internal user and item ids (int64)."""

    users: np.ndarray
    items: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def empty(cls) -> Interactions:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64))

    def concat(self, other: Interactions) -> Interactions:
        return Interactions(
            np.concatenate([self.users, other.users]), np.concatenate([self.items, other.items])
        )


@dataclass
class Dataset:
    """A loaded, id-mapped, split dataset. See the module docstring for the naming of the splits."""

    name: str
    users: IdMap
    items: IdMap
    train: Interactions
    valid: Interactions
    test: Interactions
    report: dict[str, int] = field(default_factory=dict)
    config: DataConfig | None = None
    #: Wall time of :func:`load_dataset` (None when restored by :meth:`load`).
    load_seconds: float | None = None
    #: Interactions in the files read, before thresholds, de-duplication and filters.
    interactions_read: int = 0

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def known(self) -> Interactions:
        """Train + validation: every interaction observed before the test period."""
        return self.train.concat(self.valid)

    def graph(self, which: Literal["train", "known", "valid", "test"] = "train") -> BipartiteGraph:
        """The bipartite CSR graph of one split (``known`` = train + valid)."""
        part = {"train": self.train, "known": self.known, "valid": self.valid, "test": self.test}[which]
        return BipartiteGraph.from_edges(part.users, part.items, self.n_users, self.n_items)

    def item_popularity(self) -> np.ndarray:
        """Number of known (train + valid) interactions of each item, int64."""
        return np.bincount(self.known.items, minlength=self.n_items).astype(np.int64)

    def fingerprint(self) -> str:
        """sha256 (hex) of the id maps and all splits: equal fingerprints mean the same data, ids and splits."""
        h = hashlib.sha256()
        for idmap in (self.users, self.items):
            h.update("\x1f".join(map(str, idmap.raw)).encode())
            h.update(b"\x1e")
        for part in (self.train, self.valid, self.test):
            h.update(np.ascontiguousarray(part.users, dtype=np.int64).tobytes())
            h.update(np.ascontiguousarray(part.items, dtype=np.int64).tobytes())
            h.update(b"\x1e")
        return h.hexdigest()

    def stats(self) -> dict[str, Any]:
        """Counts for ``hashrec data stats`` (all ints except density and the load figures).

        When the dataset was loaded from files, also ``load_seconds`` and ``interactions_per_s``
        (interactions read per second of :func:`load_dataset`).
        """
        n_known = len(self.train) + len(self.valid)
        deg = np.bincount(self.known.users, minlength=self.n_users)
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "train": n_known,
            "train_fit": len(self.train),
            "valid": len(self.valid),
            "test": len(self.test),
            "interactions": n_known + len(self.test),
            "test_users": len(np.unique(self.test.users)),
            "density": (n_known + len(self.test)) / max(1, self.n_users * self.n_items),
            "user_degree_min": int(deg.min()) if len(deg) else 0,
            "user_degree_median": float(np.median(deg)) if len(deg) else 0.0,
            "user_degree_max": int(deg.max()) if len(deg) else 0,
            **{f"report_{k}": v for k, v in self.report.items()},
            **self._load_rate(),
        }

    def _load_rate(self) -> dict[str, float]:
        if self.load_seconds is None:
            return {}
        rate = self.interactions_read / max(self.load_seconds, 1e-9)
        return {"load_seconds": round(self.load_seconds, 3), "interactions_per_s": round(rate)}

    # -- persistence (a run directory keeps the exact dataset it was trained on) -------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``dataset.npz`` + ``dataset.json`` into ``directory`` (no pickles)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {
            "user_raw": np.asarray(self.users.raw, dtype=str),
            "item_raw": np.asarray(self.items.raw, dtype=str),
        }
        for name in ("train", "valid", "test"):
            part: Interactions = getattr(self, name)
            arrays[f"{name}_users"] = part.users
            arrays[f"{name}_items"] = part.items
        np.savez(d / "dataset.npz", **arrays)  # type: ignore[arg-type]
        meta = {
            "name": self.name,
            "report": self.report,
            "config": self.config.to_json() if self.config else None,
            "fingerprint": self.fingerprint(),
        }
        (d / "dataset.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> Dataset:
        """Read what :meth:`save` wrote; verifies the fingerprint."""
        d = Path(directory)
        try:
            meta = json.loads((d / "dataset.json").read_text())
            with np.load(d / "dataset.npz", allow_pickle=False) as z:
                parts = {
                    n: Interactions(z[f"{n}_users"].astype(np.int64), z[f"{n}_items"].astype(np.int64))
                    for n in ("train", "valid", "test")
                }
                users, items = IdMap(list(z["user_raw"])), IdMap(list(z["item_raw"]))
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"{d}: saved dataset cannot be read: {err}") from err
        cfg = DataConfig(**meta["config"]) if meta.get("config") else None
        ds = cls(
            meta["name"], users, items, parts["train"], parts["valid"], parts["test"], meta["report"], cfg
        )
        if ds.fingerprint() != meta["fingerprint"]:
            raise DataError(f"{d / 'dataset.npz'}: fingerprint mismatch (the file was changed or corrupted)")
        return ds


# -- loading ----------------------------------------------------------------------------------------------


def _resolve(cfg: DataConfig) -> tuple[str, Path, Path | None]:
    """Return (format, train file, test file or None)."""
    p = Path(cfg.path)
    fmt: str
    if p.is_dir():
        train = next((p / n for n in ("train.txt", "train.txt.gz") if (p / n).is_file()), None)
        if train is None:
            raise DataError(
                f"{p}: a dataset folder must hold train.txt or train.txt.gz (LightGCN format); "
                "for a single interaction file pass the file itself"
            )
        test = next((p / n for n in ("test.txt", "test.txt.gz") if (p / n).is_file()), None)
        fmt = "adjacency" if cfg.fmt == "auto" else cfg.fmt
    elif p.is_file():
        train = p
        test = None
        auto = _file_format(p)
        fmt = auto if cfg.fmt == "auto" else cfg.fmt
        if auto == "adjacency" and cfg.test_path is None:  # train*.txt: look for its test.txt
            test = next((p.parent / n for n in ("test.txt", "test.txt.gz") if (p.parent / n).is_file()), None)
    else:
        raise DataError(f"{p}: no such file or folder")
    if cfg.test_path is not None:
        test = Path(cfg.test_path)
        if not test.is_file():
            raise DataError(f"{test}: no such test file")
    if cfg.split == "given" and test is None:
        raise DataError(f"{p}: split 'given' needs a test file (test.txt beside train, or test_path)")
    if cfg.split in ("random", "temporal"):
        test = None if cfg.test_path is None else test
        if cfg.test_path is not None:
            raise DataError(f"split {cfg.split!r} cannot be combined with an explicit test_path")
    return fmt, train, test


def _file_format(p: Path) -> str:
    """The format ``fmt="auto"`` reads a single file as."""
    name = p.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.startswith("train") and name.endswith((".txt", ".txt.gz")):
        return "adjacency"
    return "delimited"


def _read(cfg: DataConfig, fmt: str, path: Path) -> RawInteractions:
    if fmt == "adjacency":
        return read_adjacency_lists(path)
    if fmt == "parquet":
        return read_parquet(path)
    cols = list(cfg.columns) if cfg.columns is not None else None
    return read_delimited(path, sep=cfg.sep, columns=cols, header=cfg.header)


def _filter_rating(
    raw: RawInteractions, cfg: DataConfig, report: dict[str, int], key: str
) -> RawInteractions:
    if cfg.min_rating is None:
        return raw
    if raw.ratings is None:
        raise DataError(f"{raw.path}: min_rating={cfg.min_rating} given but the file has no rating column")
    keep = raw.ratings >= cfg.min_rating
    report[f"{key}_below_min_rating"] = int((~keep).sum())
    return RawInteractions(
        raw.path,
        raw.users[keep],
        raw.items[keep],
        raw.ratings[keep],
        raw.timestamps[keep] if raw.timestamps is not None else None,
        raw.skipped_lines,
    )


def _dedup(
    users: np.ndarray, items: np.ndarray, stamps: np.ndarray | None, n_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Collapse duplicate (user, item) pairs, keeping the earliest (or first) occurrence; returns the count."""
    key = users * np.int64(max(n_items, 1)) + items
    ordered = np.sort(key)
    if not np.any(ordered[1:] == ordered[:-1]):  # the usual case, found with one sort of integers
        return users, items, stamps, 0
    order = np.lexsort((stamps,)) if stamps is not None else np.arange(len(key))
    _, first = np.unique(key[order], return_index=True)
    keep = np.sort(order[first])
    dropped = len(key) - len(keep)
    return users[keep], items[keep], (stamps[keep] if stamps is not None else None), dropped


@dataclass
class _Mapped:
    """Training interactions with their id maps: internal ids, optional timestamps."""

    users: IdMap
    items: IdMap
    u: np.ndarray
    i: np.ndarray
    ts: np.ndarray | None


def _map_train(raw: RawInteractions, cfg: DataConfig, report: dict[str, int]) -> _Mapped:
    """Threshold, check, map ids, de-duplicate and k-core filter the training file's interactions."""
    raw = _filter_rating(raw, cfg, report, "train")
    report["skipped_blank_or_comment_lines"] = raw.skipped_lines
    if len(raw) == 0:
        raise DataError(
            f"{raw.path}: no interactions" + (" after the rating threshold" if cfg.min_rating else "")
        )
    if cfg.split == "temporal" and raw.timestamps is None:
        raise DataError(f"{raw.path}: split 'temporal' needs a timestamp column")
    users_map, u = IdMap.factorize(raw.users)
    items_map, i = IdMap.factorize(raw.items)
    u, i, ts, dup = _dedup(u, i, raw.timestamps, len(items_map))
    report["duplicates_removed"] = dup
    data = _Mapped(users_map, items_map, u, i, ts)
    return _kcore(data, cfg.kcore, report, raw.path) if cfg.kcore > 1 else data


def _kcore(data: _Mapped, k: int, report: dict[str, int], path: str) -> _Mapped:
    keep = kcore(data.u, data.i, k)
    report["kcore_removed"] = int((~keep).sum())
    if not keep.any():
        raise DataError(f"{path}: no interactions left after the {k}-core filter")
    # re-index so that ids stay contiguous
    uu, u = np.unique(data.u[keep], return_inverse=True)
    ii, i = np.unique(data.i[keep], return_inverse=True)
    ts = data.ts[keep] if data.ts is not None else None
    return _Mapped(IdMap(data.users.raw[uu]), IdMap(data.items.raw[ii]), u, i, ts)


def _given_test(traw: RawInteractions, data: _Mapped, report: dict[str, int]) -> Interactions:
    """The test file's interactions on training ids: unseen ids, duplicates and training pairs dropped."""
    tu = lookup(data.users.raw, traw.users)
    ti = lookup(data.items.raw, traw.items)
    report["test_dropped_unseen_user"] = int((tu < 0).sum())
    report["test_dropped_unseen_item"] = int(((tu >= 0) & (ti < 0)).sum())
    ok = (tu >= 0) & (ti >= 0)
    n_items = np.int64(len(data.items))
    tu, ti, _tts, tdup = _dedup(
        tu[ok], ti[ok], traw.timestamps[ok] if traw.timestamps is not None else None, len(data.items)
    )
    report["test_duplicates_removed"] = tdup
    in_train = contains(data.u * n_items + data.i, tu * n_items + ti)
    report["test_dropped_in_train"] = int(in_train.sum())
    return Interactions(tu[~in_train], ti[~in_train])


def load_dataset(cfg: DataConfig | str | Path, **overrides: Any) -> Dataset:
    """Load, map, de-duplicate, filter and split a dataset as ``cfg`` says.

    ``cfg`` may be a path (then ``overrides`` are further DataConfig fields). Raises :class:`DataError`
    with the file (and line) for anything malformed or empty. The result knows how long this took
    (``Dataset.load_seconds``) and how many interactions the files held (``Dataset.interactions_read``).
    """
    t0 = time.perf_counter()
    if not isinstance(cfg, DataConfig):
        cfg = DataConfig(path=str(cfg), **overrides)
    fmt, train_path, test_path = _resolve(cfg)
    report: dict[str, int] = {}
    raw = _read(cfg, fmt, train_path)
    n_read = len(raw)
    data = _map_train(raw, cfg, report)
    if test_path is not None and cfg.split in ("auto", "given"):
        traw = _read(cfg, fmt, test_path)
        n_read += len(traw)
        test = _given_test(_filter_rating(traw, cfg, report, "test"), data, report)
        train_u, train_i = data.u, data.i
    else:
        if cfg.split == "temporal":
            assert data.ts is not None
            held = leave_last_out(data.u, data.ts, cfg.leave_out, data.i)
        else:
            held = random_holdout(data.u, cfg.test_ratio, cfg.seed)
        test = Interactions(data.u[held], data.i[held])
        train_u, train_i = data.u[~held], data.i[~held]

    vmask = random_holdout(train_u, cfg.valid_ratio, cfg.seed + 1)
    ds = Dataset(
        name=Path(cfg.path).name or str(cfg.path),
        users=data.users,
        items=data.items,
        train=Interactions(train_u[~vmask], train_i[~vmask]),
        valid=Interactions(train_u[vmask], train_i[vmask]),
        test=test,
        report=report,
        config=cfg,
        load_seconds=time.perf_counter() - t0,
        interactions_read=n_read,
    )
    if len(ds.test) == 0:
        log.warning("%s: the test split is empty", cfg.path)
    for k, v in report.items():
        if v and k != "skipped_blank_or_comment_lines":
            log.info("%s: %s = %d", ds.name, k, v)
    log.debug("%s: %d interactions read in %.2f s", ds.name, n_read, ds.load_seconds)
    return ds
