"""The layout of a delimited interaction file: separator, header and which column holds what.

A file's layout is decided once, from its first data line (the first line that is neither blank nor a ``#``
comment): the separator is sniffed from it, it is a header when it names both a user and an item column,
and the column names come from the header, from the caller, or default to ``user, item, rating,
timestamp``. Parquet tables match their column names with the same aliases (:func:`canonical_name`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

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


@dataclass(frozen=True)
class Layout:
    """How to read the data lines of a delimited file.

    Attributes:
        sep: the separator; ``" "`` means runs of any whitespace (``str.split()``).
        columns: the file's column names in order (canonical names, ``-`` or ``_ignoredN`` for skipped ones).
        header: whether the first data line is a header (and so not an interaction).
    """

    sep: str
    columns: tuple[str, ...]
    header: bool

    @property
    def ncols(self) -> int:
        """Fields a data line needs at least (more are allowed and ignored)."""
        return len(self.columns)

    def index(self, name: str) -> int | None:
        """Position of a canonical column, or None when the file has none."""
        return self.columns.index(name) if name in self.columns else None

    @property
    def expected(self) -> str:
        """What a data line must look like, for error messages."""
        return f"{self.ncols} fields separated by {self.sep!r} ({', '.join(self.columns)})"


def sniff_separator(sample: str) -> str:
    """Guess the separator from a data line: ``::``, tab, comma, ``;``, ``|``, else whitespace (``None``)."""
    for sep in SEPARATORS:
        if sep in sample:
            return sep
    return " "


def split_line(line: str, sep: str) -> list[str]:
    """The fields of one line: whitespace runs for ``sep == " "``, else split on ``sep`` and stripped."""
    return line.split() if sep == " " else [f.strip() for f in line.split(sep)]


def canonical_name(name: str) -> str | None:
    """The canonical column (user, item, rating, timestamp) a header or Parquet column name stands for."""
    return HEADER_ALIASES.get(name.strip().strip('"').lower())


def parse_header(fields: list[str]) -> list[str] | None:
    """Return canonical column names if ``fields`` looks like a header, else None."""
    names = [canonical_name(f) for f in fields]
    if "user" in names and "item" in names:
        return [n if n is not None else f"_ignored{i}" for i, n in enumerate(names)]
    return None


def resolve_layout(
    path: str | Path,
    line_no: int,
    first: str,
    sep: str | None = None,
    columns: list[str] | None = None,
    header: bool | None = None,
) -> Layout:
    """Decide the layout from the file's first data line ``first`` (line ``line_no``) and the caller's choices.

    ``sep``, ``columns`` and ``header`` are as in :func:`hashrec.data.readers.read_delimited` (None: from the
    file). Raises DataError for an empty separator (or one with a line break), a header naming no user and item, unknown column names
    and a missing user or item column.
    """
    if sep == "" or (sep is not None and ("\n" in sep or "\r" in sep)):
        raise DataError(f"{path}: the separator {sep!r} is empty or holds a line break")
    if sep is None:
        sep = sniff_separator(first)
    fields = split_line(first, sep)
    detected = parse_header(fields)
    if header is None:
        header = detected is not None
    if columns is None:
        if header and detected is None:
            raise DataError(
                f"{path}:{line_no}: the header {first!r} names no user and item columns; "
                "pass the column names (e.g. --columns user,item,rating)"
            )
        columns = detected if header else list(CANONICAL[: min(len(fields), 4)])
    assert columns is not None
    names = tuple(c.strip().lower() for c in columns)
    _check_columns(path, names)
    return Layout(sep, names, header)


def _check_columns(path: str | Path, names: tuple[str, ...]) -> None:
    for c in names:
        if c not in CANONICAL and c != "-" and not c.startswith("_ignored"):
            raise DataError(f"{path}: unknown column name {c!r} (use user, item, rating, timestamp or -)")
    if "user" not in names or "item" not in names:
        raise DataError(f"{path}: a user and an item column are required, got columns {list(names)}")
