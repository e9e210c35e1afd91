"""Parsers for interaction files. They only read: mapping ids and splitting live in ``dataset.py``.

Two families:

- the LightGCN / NGCF "adjacency list" format: one line per user, ``user item item ...`` (whitespace
  separated, ids as written), in ``train.txt`` / ``train.txt.gz`` and ``test.txt``;
- delimited interaction files: one interaction per line, ``user<sep>item[<sep>rating[<sep>timestamp]]``
  with ``sep`` one of tab, comma, ``::``, ``;``, ``|`` or whitespace (MovieLens ``u.data``, ``ratings.dat``,
  most CSV exports). An optional header line names the columns.

Every malformed line raises :class:`DataFormatError` naming the file, the line and what was expected.
Blank lines and lines starting with ``#`` are skipped (counted in ``RawInteractions.skipped_lines``).
"""

from __future__ import annotations

import gzip
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, DataFormatError

log = logging.getLogger(__name__)

#: Column names a header may use, mapped to our canonical names.
HEADER_ALIASES: dict[str, str] = {
    "user": "user",
    "user_id": "user",
    "userid": "user",
    "uid": "user",
    "customer_id": "user",
    "item": "item",
    "item_id": "item",
    "itemid": "item",
    "iid": "item",
    "movie_id": "item",
    "movieid": "item",
    "product_id": "item",
    "business_id": "item",
    "track_id": "item",
    "rating": "rating",
    "score": "rating",
    "stars": "rating",
    "weight": "rating",
    "value": "rating",
    "timestamp": "timestamp",
    "time": "timestamp",
    "ts": "timestamp",
    "date": "timestamp",
}
CANONICAL = ("user", "item", "rating", "timestamp")
SEPARATORS = ("::", "\t", ",", ";", "|")


@dataclass
class RawInteractions:
    """Interactions as read from a file: raw ids (strings or ints), optional rating and timestamp columns."""

    path: str
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    skipped_lines: int = 0

    def __len__(self) -> int:
        return len(self.users)


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a text file, transparently gunzipping ``*.gz``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if p.suffix == ".gz":
        return gzip.open(p, "rt", encoding="utf-8", newline="")
    return open(p, encoding="utf-8", newline="")


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    try:
        with open_text(path) as fh:
            for no, line in enumerate(fh, start=1):
                yield no, line.rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except (OSError, EOFError) as err:  # truncated gzip, unreadable file
        raise DataError(f"{path}: cannot be read: {err}") from err


def read_adjacency_lists(path: str | Path) -> RawInteractions:
    """Read the LightGCN/NGCF format: each line ``user item item ...`` (integer ids).

    A user with no items (a line with the user id alone) is allowed and contributes no interaction.
    Non-integer tokens raise :class:`DataFormatError` with the file and line.
    """
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    skipped = 0
    for no, line in _lines(path):
        if not line.strip() or line.lstrip().startswith("#"):
            skipped += 1
            continue
        parts = line.split()
        try:
            ids = np.array(parts, dtype=np.int64)
        except (ValueError, OverflowError):
            bad = next(p for p in parts if not _is_int_token(p))
            raise DataFormatError(path, no, "integer ids 'user item item ...'", bad) from None
        if ids.min() < 0:
            raise DataFormatError(path, no, "non-negative integer ids", line)
        items.append(ids[1:])
        users.append(np.full(len(ids) - 1, ids[0], dtype=np.int64))
    if not users:
        return RawInteractions(str(path), np.empty(0, np.int64), np.empty(0, np.int64), skipped_lines=skipped)
    return RawInteractions(str(path), np.concatenate(users), np.concatenate(items), skipped_lines=skipped)


def _is_int_token(tok: str) -> bool:
    try:
        int(tok)
        return True
    except ValueError:
        return False


def sniff_separator(sample: str) -> str:
    """Guess the separator from a data line: ``::``, tab, comma, ``;``, ``|``, else whitespace (``None``)."""
    for sep in SEPARATORS:
        if sep in sample:
            return sep
    return " "


def _split(line: str, sep: str) -> list[str]:
    return line.split() if sep == " " else [f.strip() for f in line.split(sep)]


def _parse_header(fields: list[str]) -> list[str] | None:
    """Return canonical column names if ``fields`` looks like a header, else None."""
    names = [HEADER_ALIASES.get(f.strip().strip('"').lower()) for f in fields]
    if "user" in names and "item" in names:
        return [n if n is not None else f"_ignored{i}" for i, n in enumerate(names)]
    return None


def read_delimited(
    path: str | Path,
    sep: str | None = None,
    columns: list[str] | None = None,
    header: bool | None = None,
) -> RawInteractions:
    """Read a delimited interaction file.

    Args:
        path: the file (``.gz`` allowed).
        sep: the separator; ``None`` sniffs it from the first data line (``" "`` means any whitespace).
        columns: the names of the file's columns in order, from ``user``, ``item``, ``rating``,
            ``timestamp`` or ``-`` (ignored). Default: from the header when there is one, else
            ``user, item, rating, timestamp`` for as many fields as the first line has.
        header: whether the first line is a header. ``None`` auto-detects: the first line is a header when
            it names both a user and an item column (``user_id``, ``movieId``, ``item`` ...).

    Raises:
        DataError: missing user or item column, no data lines, or a malformed line (file and line named).
    """
    lines = _lines(path)
    first: tuple[int, str] | None = None
    skipped = 0
    for no, line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            first = (no, line)
            break
        skipped += 1
    if first is None:
        raise DataError(f"{path}: no interactions (the file is empty)")
    if sep is None:
        sep = sniff_separator(first[1])
    fields = _split(first[1], sep)
    detected = _parse_header(fields)
    if header is None:
        header = detected is not None
    pending: list[tuple[int, str]] = []
    if header:
        if columns is None:
            if detected is None:
                raise DataError(
                    f"{path}:{first[0]}: the header {first[1]!r} names no user and item columns; "
                    "pass the column names (e.g. --columns user,item,rating)"
                )
            columns = detected
    else:
        pending.append(first)
        if columns is None:
            columns = list(CANONICAL[: min(len(fields), 4)])
    columns = [c.strip().lower() for c in columns]
    for c in columns:
        if c not in CANONICAL and c != "-" and not c.startswith("_ignored"):
            raise DataError(f"{path}: unknown column name {c!r} (use user, item, rating, timestamp or -)")
    if "user" not in columns or "item" not in columns:
        raise DataError(f"{path}: a user and an item column are required, got columns {columns}")
    ncols = len(columns)
    ui, ii = columns.index("user"), columns.index("item")
    ri = columns.index("rating") if "rating" in columns else None
    ti = columns.index("timestamp") if "timestamp" in columns else None
    expected = f"{ncols} fields separated by {sep!r} ({', '.join(columns)})"

    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[float] = []

    def consume(no: int, line: str) -> None:
        parts = _split(line, sep)
        if len(parts) < ncols:
            raise DataFormatError(path, no, expected, line)
        u, i = parts[ui], parts[ii]
        if not u or not i:
            raise DataFormatError(path, no, "non-empty user and item ids", line)
        users.append(u)
        items.append(i)
        if ri is not None:
            try:
                ratings.append(float(parts[ri]))
            except ValueError:
                raise DataFormatError(path, no, "a numeric rating", parts[ri]) from None
        if ti is not None:
            try:
                stamps.append(float(parts[ti]))
            except ValueError:
                raise DataFormatError(path, no, "a numeric timestamp", parts[ti]) from None

    for no, line in pending:
        consume(no, line)
    for no, line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            skipped += 1
            continue
        consume(no, line)
    if not users:
        raise DataError(f"{path}: no interactions (only a header)")
    return RawInteractions(
        str(path),
        _as_ids(users),
        _as_ids(items),
        np.asarray(ratings, dtype=np.float64) if ri is not None else None,
        np.asarray(stamps, dtype=np.float64) if ti is not None else None,
        skipped_lines=skipped,
    )


def _as_ids(col: list[str]) -> np.ndarray:
    """Integer array when every id is a plain integer without leading zeros, else a string array."""
    arr = np.asarray(col, dtype=str)
    try:
        ints = arr.astype(np.int64)
    except (ValueError, OverflowError):
        return arr
    # "007" and "7" must stay different raw ids; only canonical integers become ints.
    if np.array_equal(ints.astype(str), arr):
        return ints
    return arr
