"""Line-at-a-time parsers: the reference rules of both formats, and the reporter of the first bad line.

The readers parse whole blocks with numpy (:mod:`hashrec.data.bytescan`). A block that the vectorised scan
does not accept (a malformed line, or valid input outside its plain cases, such as ``+3`` or ``1e5``) is
parsed again here, one line at a time: this raises :class:`DataFormatError` for the first bad line, with
its number, or returns exactly what the vectorised scan would have returned for plain input.

Both parsers return a :class:`BlockPart`: the block's interactions and its count of skipped lines (blank or
``#`` comment).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataFormatError
from .layout import Layout, split_line
from .textio import TextBlock


@dataclass(frozen=True)
class BlockPart:
    """The interactions of one block: ids (int64 for adjacency lists, UTF-8 byte strings for delimited
    files), optional ratings and timestamps (float64), and the number of blank or comment lines."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None
    timestamps: np.ndarray | None
    skipped: int


def is_skipped(line: str) -> bool:
    """Blank lines and ``#`` comments carry no interaction."""
    return not line.strip() or line.lstrip().startswith("#")


def numbered_lines(block: TextBlock) -> Iterator[tuple[int, str]]:
    """The block's lines with their 1-based numbers in the file."""
    return enumerate(block.lines(), start=block.first_line)


def adjacency_block(path: str | Path, block: TextBlock) -> BlockPart:
    """Parse ``user item item ...`` lines (non-negative integer ids); raises at the first bad line."""
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    skipped = 0
    for no, line in numbered_lines(block):
        if is_skipped(line):
            skipped += 1
            continue
        ids = _integer_ids(path, no, line)
        items.append(ids[1:])
        users.append(np.full(len(ids) - 1, ids[0], dtype=np.int64))
    return BlockPart(_concat(users, np.int64), _concat(items, np.int64), None, None, skipped)


def _integer_ids(path: str | Path, no: int, line: str) -> np.ndarray:
    parts = line.split()
    try:
        ids = np.array(parts, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next((p for p in parts if not _is_int64(p)), line)
        raise DataFormatError(path, no, "integer ids 'user item item ...'", bad) from None
    if ids.min() < 0:
        raise DataFormatError(path, no, "non-negative integer ids", line)
    return ids


def _is_int64(tok: str) -> bool:
    try:
        np.array([tok], dtype=np.int64)
    except (ValueError, OverflowError):
        return False
    return True


def delimited_block(path: str | Path, block: TextBlock, layout: Layout, header_line: int | None) -> BlockPart:
    """Parse one interaction per line as ``layout`` says, skipping line ``header_line`` (a file line number).

    Raises DataFormatError at the first line with too few fields, an empty user or item id, or a rating or
    timestamp that ``float`` does not accept.
    """
    ui, ii = layout.index("user"), layout.index("item")
    assert ui is not None and ii is not None
    ri, ti = layout.index("rating"), layout.index("timestamp")
    users: list[bytes] = []
    items: list[bytes] = []
    ratings: list[float] = []
    stamps: list[float] = []
    skipped = 0
    for no, line in numbered_lines(block):
        if is_skipped(line):
            skipped += 1
            continue
        if no == header_line:
            continue
        parts = split_line(line, layout.sep)
        if len(parts) < layout.ncols:
            raise DataFormatError(path, no, layout.expected, line)
        if not parts[ui] or not parts[ii]:
            raise DataFormatError(path, no, "non-empty user and item ids", line)
        users.append(parts[ui].encode())
        items.append(parts[ii].encode())
        if ri is not None:
            ratings.append(_number(path, no, parts[ri], "a numeric rating"))
        if ti is not None:
            stamps.append(_number(path, no, parts[ti], "a numeric timestamp"))
    return BlockPart(
        np.array(users, dtype="S"),
        np.array(items, dtype="S"),
        np.array(ratings, dtype=np.float64) if ri is not None else None,
        np.array(stamps, dtype=np.float64) if ti is not None else None,
        skipped,
    )


def _number(path: str | Path, no: int, text: str, expected: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataFormatError(path, no, expected, text) from None


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
