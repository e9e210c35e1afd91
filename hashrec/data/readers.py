"""Parsers for interaction files. They only read: mapping ids and splitting live in ``dataset.py``.

Three formats:

- the LightGCN / NGCF "adjacency list" format: one line per user, ``user item item ...`` (whitespace
  separated, ids as written), in ``train.txt`` / ``train.txt.gz`` and ``test.txt``;
- delimited interaction files: one interaction per line, ``user<sep>item[<sep>rating[<sep>timestamp]]``
  with ``sep`` one of tab, comma, ``::``, ``;``, ``|`` or whitespace (MovieLens ``u.data``, ``ratings.dat``,
  most CSV exports). An optional header line names the columns (:mod:`hashrec.data.layout`);
- Parquet tables with the same columns (:func:`hashrec.data.parquet.read_parquet`).

Text files are parsed a block of lines at a time with numpy (:mod:`hashrec.data.bytescan`): no Python call
per line or per interaction, so that millions of interactions load in about a second. A block the
vectorised scan does not accept is parsed again line by line (:mod:`hashrec.data.lineparse`), which raises
:class:`DataFormatError` naming the file, the first bad line and what was expected.
Blank lines and lines starting with ``#`` are skipped (counted in ``RawInteractions.skipped_lines``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import bytescan as bs
from . import lineparse
from .errors import DataError
from .layout import CANONICAL, HEADER_ALIASES, SEPARATORS, Layout, resolve_layout, sniff_separator
from .lineparse import BlockPart
from .rawids import ids_from_utf8
from .textio import TextBlock, read_blocks

__all__ = [
    "CANONICAL",
    "HEADER_ALIASES",
    "SEPARATORS",
    "RawInteractions",
    "read_adjacency_lists",
    "read_delimited",
    "sniff_separator",
]

log = logging.getLogger(__name__)


@dataclass
class RawInteractions:
    """Interactions as read from a file: raw ids (int64, or str when any id is not a canonical integer),
    optional rating and timestamp columns (float64)."""

    path: str
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    skipped_lines: int = 0

    def __len__(self) -> int:
        return len(self.users)


# -- the adjacency-list format ----------------------------------------------------------------------------


def read_adjacency_lists(path: str | Path) -> RawInteractions:
    """Read the LightGCN/NGCF format: each line ``user item item ...`` (integer ids), in file order.

    A user with no items (a line with the user id alone) is allowed and contributes no interaction.
    Non-integer or negative tokens raise :class:`DataFormatError` with the file and line.
    """
    parts = [_adjacency_block(path, block) for block in read_blocks(path)]
    return RawInteractions(
        str(path),
        _concat([p.users for p in parts], np.int64),
        _concat([p.items for p in parts], np.int64),
        skipped_lines=sum(p.skipped for p in parts),
    )


def _adjacency_block(path: str | Path, block: TextBlock) -> BlockPart:
    """One block, vectorised; line by line when it is not plain or holds a bad token."""
    if bs.is_plain(block.data):
        lines = bs.scan_lines(block.data)
        fields = bs.whitespace_fields(lines, np.flatnonzero(lines.is_data))
        s, e, heads = fields.row_major()
        ids, ok = bs.parse_uint(lines.buf, s, e)
        if ok.all():
            is_item = np.ones(len(ids), dtype=bool)
            is_item[heads] = False
            # each line's first token is its user, owning the count - 1 items after it
            users = np.repeat(ids[heads], fields.count - 1)
            return BlockPart(users, ids[is_item], None, None, lines.skipped)
    _log_fallback(path, block)
    return lineparse.adjacency_block(path, block)


# -- delimited files --------------------------------------------------------------------------------------


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

    Returns:
        The interactions in file order. Ids are int64 when every id of the column is a canonical integer
        (``42``, ``-7``; not ``007`` nor ``+7``, which stay distinct strings), else str.

    Raises:
        DataError: missing user or item column, no data lines, or a malformed line (file and line named).
    """
    layout: Layout | None = None
    header_line: int | None = None
    parts: list[BlockPart] = []
    skipped = 0
    for block in read_blocks(path):
        if layout is None:
            found = _first_data_line(block)
            if found is None:
                skipped += block.n_lines
                continue
            layout = resolve_layout(path, found[0], found[1], sep, columns, header)
            header_line = found[0] if layout.header else None
        parts.append(_delimited_block(path, block, layout, header_line))
    if layout is None:
        raise DataError(f"{path}: no interactions (the file is empty)")
    if not any(len(p.users) for p in parts):
        raise DataError(f"{path}: no interactions (only a header)")
    return RawInteractions(
        str(path),
        ids_from_utf8(np.concatenate([p.users for p in parts])),
        ids_from_utf8(np.concatenate([p.items for p in parts])),
        _concat_optional([p.ratings for p in parts]),
        _concat_optional([p.timestamps for p in parts]),
        skipped_lines=skipped + sum(p.skipped for p in parts),
    )


def _first_data_line(block: TextBlock) -> tuple[int, str] | None:
    """The number and text of the block's first line that is neither blank nor a comment."""
    for no, line in block.iter_lines():
        if not lineparse.is_skipped(line):
            return no, line
    return None


def _delimited_block(
    path: str | Path, block: TextBlock, layout: Layout, header_line: int | None
) -> BlockPart:
    """One block, vectorised; line by line when it is not plain or a line breaks a rule."""
    part = _delimited_vectorised(block, layout, header_line) if bs.is_plain(block.data) else None
    if part is None:
        _log_fallback(path, block)
        part = lineparse.delimited_block(path, block, layout, header_line)
    return part


def _log_fallback(path: str | Path, block: TextBlock) -> None:
    # Slow but exact: worth a note when a valid file loads slowly (numbers such as "1e5", unicode spaces).
    log.debug("%s:%d: a block of %d lines is parsed line by line", path, block.first_line, block.n_lines)


def _delimited_vectorised(block: TextBlock, layout: Layout, header_line: int | None) -> BlockPart | None:
    """The block's interactions, or None when some data line is not plain and valid."""
    lines = bs.scan_lines(block.data)
    rows = np.flatnonzero(lines.is_data)
    if header_line is not None:
        rows = rows[rows != header_line - block.first_line]
    fields = _fields(lines, rows, layout.sep)
    if fields is None or (len(rows) and fields.count.min() < layout.ncols):
        return None
    ids = [fields.span(layout.columns.index(c)) for c in ("user", "item")]
    if any(np.any(e == s) for s, e in ids):
        return None
    numbers: list[np.ndarray | None] = []
    for name in ("rating", "timestamp"):
        j = layout.index(name)
        values, ok = bs.parse_decimal(lines.buf, *fields.span(j)) if j is not None else (None, np.True_)
        if not ok.all():
            return None
        numbers.append(values)
    users, items = (bs.gather(lines.buf, s, e) for s, e in ids)
    return BlockPart(users, items, numbers[0], numbers[1], lines.skipped)


def _fields(lines: bs.Lines, rows: np.ndarray, sep: str) -> bs.Fields | None:
    if sep == " ":
        return bs.whitespace_fields(lines, rows)
    return bs.separated_fields(lines, rows, sep.encode())


def _concat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)


def _concat_optional(arrays: list[np.ndarray | None]) -> np.ndarray | None:
    present = [a for a in arrays if a is not None]
    return np.concatenate(present) if present else None
