"""Batch candidate export: top-C candidates (scores, Hamming distances) for many users, one batch at a time.

One per-batch function, :func:`candidates_for`, feeds every way to export: ``POST /candidates/export``
(NDJSON over HTTP), ``hashrec export-candidates`` (one NDJSON or Parquet file, :func:`write_candidates`) and
its Ray Data engine (a directory of Parquet files, :mod:`.ray_export`), so they always agree. Memory is
bounded by one batch of users (``batch`` x ``candidates`` results) whatever the number of users.

Row format (one JSON object per line, or one Parquet row)::

    {"user": "42", "version": "...", "items": ["7", "1207", ...], "scores": [3.1, 2.9, ...],
     "hamming": [4, 6, ...]}

``items``/``scores``/``hamming`` are parallel arrays sorted by re-rank score (descending, then item id);
a user with fewer than C eligible items gets shorter arrays.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .retriever import Retriever

log = logging.getLogger(__name__)

SUFFIXES = (".ndjson", ".jsonl", ".parquet")


@dataclass
class CandidateBatch:
    """The candidates of a batch of users, columnar: row r is user ``users[r]`` (raw id) with its first
    ``lengths[r]`` entries of ``items`` (raw ids), ``scores`` and ``hamming``."""

    version: str
    users: list[str]
    items: np.ndarray  # raw ids [n, C]
    scores: np.ndarray  # float32 [n, C]
    hamming: np.ndarray  # int32 [n, C]
    lengths: np.ndarray  # int64 [n]

    def __len__(self) -> int:
        return len(self.users)


def candidates_for(
    retriever: Retriever,
    users: np.ndarray,
    candidates: int,
    *,
    exclude_seen: bool = True,
    exclude_items: np.ndarray | None = None,
    include_items: np.ndarray | None = None,
) -> CandidateBatch:
    """Top-``candidates`` of internal user ids ``users`` through the Retriever's one path (C = k).

    ``exclude_items`` / ``include_items``: sorted internal item ids left out of / required of every row.
    """
    users = np.asarray(users, dtype=np.int64)
    codes, vectors = retriever.user_rows(users)
    exclude = [retriever.seen_items(int(u)) for u in users] if exclude_seen else None
    if exclude_items is not None and len(exclude_items):
        exclude = (
            [np.union1d(e, exclude_items) for e in exclude]
            if exclude is not None
            else [exclude_items] * len(users)
        )
    top, scores, ham = retriever.search(codes, vectors, candidates, candidates, exclude, include_items)
    b = retriever.bundle
    return CandidateBatch(
        version=b.version,
        users=[str(u) for u in b.users.raw[users].tolist()],
        items=b.items.raw[np.maximum(top, 0)],
        scores=scores,
        hamming=ham.astype(np.int32),
        lengths=np.count_nonzero(top >= 0, axis=1),
    )


def iter_batches(
    retriever: Retriever, users: np.ndarray | None, candidates: int, *, batch: int = 512, **kw: Any
) -> Iterator[CandidateBatch]:
    """:func:`candidates_for` (``kw``: its options) over ``users`` (internal ids; None = every user),
    ``batch`` users at a time."""
    ids = np.arange(retriever.bundle.n_users) if users is None else np.asarray(users, dtype=np.int64)
    for start in range(0, len(ids), batch):
        yield candidates_for(retriever, ids[start : start + batch], candidates, **kw)


def to_ndjson(cb: CandidateBatch) -> bytes:
    """The batch as NDJSON bytes (one compact JSON object per line, each ending in a newline)."""
    lines = []
    items, scores, ham = cb.items.tolist(), cb.scores.tolist(), cb.hamming.tolist()
    for r, (user, m) in enumerate(zip(cb.users, cb.lengths.tolist(), strict=True)):
        row = {
            "user": user,
            "version": cb.version,
            "items": items[r][:m],
            "scores": scores[r][:m],
            "hamming": ham[r][:m],
        }
        lines.append(json.dumps(row, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def arrow_schema() -> Any:
    """The Parquet schema of the rows (pyarrow)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("user", pa.string()),
            ("version", pa.string()),
            ("items", pa.list_(pa.string())),
            ("scores", pa.list_(pa.float32())),
            ("hamming", pa.list_(pa.int32())),
        ]
    )


def to_arrow(cb: CandidateBatch) -> Any:
    """The batch as a pyarrow Table (list columns built from the arrays: no Python object per item)."""
    import pyarrow as pa

    offsets = pa.array(np.concatenate([[0], np.cumsum(cb.lengths)]).astype(np.int32))
    keep = np.arange(cb.items.shape[1])[None, :] < cb.lengths[:, None]

    def lists(values: np.ndarray, kind: Any) -> Any:
        return pa.ListArray.from_arrays(offsets, pa.array(values[keep], type=kind))

    return pa.Table.from_arrays(
        [
            pa.array(cb.users, type=pa.string()),
            pa.array([cb.version] * len(cb), type=pa.string()),
            lists(cb.items.astype(str), pa.string()),
            lists(cb.scores, pa.float32()),
            lists(cb.hamming, pa.int32()),
        ],
        schema=arrow_schema(),
    )


def require_pyarrow() -> None:
    """Raise ImportError naming the extra when pyarrow is missing (before any work starts)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "Parquet output needs pyarrow: pip install 'hashrec[parquet]' (or write .ndjson)"
        ) from err


def write_candidates(
    retriever: Retriever,
    out: Path,
    users: np.ndarray | None,
    candidates: int,
    *,
    exclude_seen: bool = True,
    batch: int = 512,
    progress: bool = True,
) -> int:
    """Write the export to one file ``out`` (``.ndjson``/``.jsonl`` or ``.parquet``), atomically: it appears
    complete under its name or not at all. Returns the number of rows."""
    from tqdm import tqdm

    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{out}: output must end in {', '.join(SUFFIXES)}")
    if suffix == ".parquet":
        require_pyarrow()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    total = retriever.bundle.n_users if users is None else len(users)
    rows = 0
    bar = tqdm(total=total, unit="user", desc="export", disable=not progress)
    try:
        batches = iter_batches(retriever, users, candidates, exclude_seen=exclude_seen, batch=batch)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            with pq.ParquetWriter(tmp, arrow_schema()) as writer:
                for cb in batches:
                    writer.write_table(to_arrow(cb))
                    rows += len(cb)
                    bar.update(len(cb))
        else:
            with open(tmp, "wb") as f:
                for cb in batches:
                    f.write(to_ndjson(cb))
                    rows += len(cb)
                    bar.update(len(cb))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    log.info("exported %d users x %d candidates to %s", rows, candidates, out)
    return rows
