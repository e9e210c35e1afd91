"""Batch candidate export: top-C candidates (with scores and Hamming distances) for many users, streamed.

One generator feeds both ``POST /candidates/export`` (NDJSON over HTTP) and ``hashrec export-candidates``
(NDJSON or Parquet file), so the two always agree. Memory is bounded by one batch of users
(``batch`` x ``candidates`` results), whatever the number of users: rows are produced, written and dropped.

Row format (one JSON object per line, or one Parquet row)::

    {"user": "42", "version": "...", "items": ["7", "1207", ...], "scores": [3.1, 2.9, ...],
     "hamming": [4, 6, ...]}

``items``/``scores``/``hamming`` are parallel arrays sorted by re-rank score (descending, then item id);
a user with fewer than C unseen items gets shorter arrays.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def unknown_users(retriever: Any, users: Sequence[str]) -> list[int]:
    """Positions of ids the bundle does not know (checked before streaming starts, so a stream never fails
    half-way for a reason the client could have been told up front)."""
    return [pos for pos, u in enumerate(users) if not retriever.has_user(u)]


def iter_candidate_rows(
    bundle: Any,
    retriever: Any,
    users: Sequence[str] | None,
    candidates: int,
    *,
    exclude_seen: bool = True,
    batch: int = 512,
) -> Iterator[list[dict[str, Any]]]:
    """Yield lists of rows, ``batch`` users at a time, in the order given (all users: internal id order).

    ``users`` must all be known to the retriever (see :func:`unknown_users`); None means every user.
    """
    all_ids = bundle.users.raw if users is None else users
    total = len(all_ids)
    version = str(bundle.version)
    for start in range(0, total, batch):
        chunk = [str(u) for u in all_ids[start : start + batch]]
        recs = retriever.recommend(chunk, candidates, candidates, exclude_seen=exclude_seen)
        rows = []
        for user, rec in zip(chunk, recs, strict=True):
            if rec is None:
                raise KeyError(f"user {user!r} is not in bundle {version}")
            rows.append(
                {
                    "user": user,
                    "version": version,
                    "items": [str(i) for i in rec.items],
                    "scores": np.asarray(rec.scores, dtype=np.float64).tolist(),
                    "hamming": np.asarray(rec.hamming, dtype=np.int64).tolist(),
                }
            )
        yield rows


def rows_to_ndjson(rows: Sequence[dict[str, Any]]) -> bytes:
    """Rows as NDJSON bytes (one compact JSON object per line, each line ending in a newline)."""
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)


def write_candidates(
    bundle: Any,
    retriever: Any,
    out: Path,
    users: Sequence[str] | None,
    candidates: int,
    *,
    exclude_seen: bool = True,
    batch: int = 512,
    progress: bool = True,
) -> int:
    """Write the export to ``out`` (``.ndjson``/``.jsonl`` or ``.parquet``), atomically; returns the row count.

    Parquet needs pyarrow (the ``parquet`` extra); without it a clear ImportError is raised before any work.
    """
    from tqdm import tqdm

    suffix = out.suffix.lower()
    if suffix not in (".ndjson", ".jsonl", ".parquet"):
        raise ValueError(f"{out}: output must end in .ndjson, .jsonl or .parquet")
    if suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError(
                "writing Parquet needs pyarrow: pip install 'hashrec[parquet]' (or write .ndjson)"
            ) from err
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    total = len(bundle.users.raw) if users is None else len(users)
    rows_written = 0
    bar = tqdm(total=total, unit="user", desc="export", disable=not progress)
    try:
        if suffix == ".parquet":
            schema = pa.schema(
                [
                    ("user", pa.string()),
                    ("version", pa.string()),
                    ("items", pa.list_(pa.string())),
                    ("scores", pa.list_(pa.float32())),
                    ("hamming", pa.list_(pa.int32())),
                ]
            )
            with pq.ParquetWriter(tmp, schema) as writer:
                for rows in iter_candidate_rows(
                    bundle, retriever, users, candidates, exclude_seen=exclude_seen, batch=batch
                ):
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    rows_written += len(rows)
                    bar.update(len(rows))
        else:
            with open(tmp, "wb") as f:
                for rows in iter_candidate_rows(
                    bundle, retriever, users, candidates, exclude_seen=exclude_seen, batch=batch
                ):
                    f.write(rows_to_ndjson(rows))
                    rows_written += len(rows)
                    bar.update(len(rows))
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    log.info("exported %d users x %d candidates to %s", rows_written, candidates, out)
    return rows_written
