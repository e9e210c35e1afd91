"""Read interaction tables stored as Parquet (needs pyarrow: ``pip install 'hashrec[parquet]'``).

Columns are found by name with the aliases of delimited headers (``user_id``, ``movieId``, ``rating``, ``ts``
...; :data:`hashrec.data.layout.HEADER_ALIASES`): a user and an item column are required, a rating and a
timestamp column are read when present, other columns are not read at all. The first column matching a
name wins, as in a header.

Ids follow the rule of text files: integer columns give int64 ids, string columns give int64 ids when every
id is a canonical integer (``42``, not ``007``) and str ids otherwise. Ratings and timestamps become float64;
timestamp and date columns become seconds since the epoch. Nulls, empty ids and other column types raise
:class:`DataError` naming the file, the column and the first offending row (counted from 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .bytescan import gather
from .errors import DataError
from .layout import canonical_name
from .rawids import ids_from_utf8
from .readers import RawInteractions

#: Ticks per second of Arrow's timestamp units (dividing by it is exact where the result is).
_TICKS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def read_parquet(path: str | Path) -> RawInteractions:
    """Read a Parquet table of interactions (columns user, item[, rating, timestamp], matched by alias)."""
    pa, pq = _pyarrow(path)
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    try:
        names = _find_columns(p, pq.read_schema(p).names)
        table = pq.read_table(p, columns=list(names.values()))
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{p}: cannot be read as Parquet: {err}") from err
    cols = {key: _single_array(pa, table.column(name)) for key, name in names.items()}
    return RawInteractions(
        str(p),
        _ids(pa, p, names["user"], cols["user"]),
        _ids(pa, p, names["item"], cols["item"]),
        _numbers(pa, p, names["rating"], cols["rating"]) if "rating" in cols else None,
        _numbers(pa, p, names["timestamp"], cols["timestamp"]) if "timestamp" in cols else None,
    )


def _pyarrow(path: str | Path) -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, imported on first use: only Parquet files need them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'hashrec[parquet]'") from err
    return pa, pq


def _find_columns(path: Path, columns: list[str]) -> dict[str, str]:
    """Canonical name -> the table's column, for the first column matching each canonical name."""
    found: dict[str, str] = {}
    for name in columns:
        key = canonical_name(name)
        if key is not None and key not in found:
            found[key] = name
    if "user" not in found or "item" not in found:
        raise DataError(f"{path}: a user and an item column are required, got columns {columns}")
    return found


def _single_array(pa: Any, column: Any) -> Any:
    """One contiguous Arrow array for a (chunked) column, dictionaries decoded."""
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def _check_nulls(path: Path, name: str, arr: Any) -> None:
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"{path}: column {name!r} has {arr.null_count} missing values (the first at row {row})"
        )


def _ids(pa: Any, path: Path, name: str, arr: Any) -> np.ndarray:
    """Raw ids: int64 for integer columns; UTF-8 strings through the text-file rule."""
    _check_nulls(path, name, arr)
    if pa.types.is_integer(arr.type):
        try:
            return np.asarray(arr.cast(pa.int64()).to_numpy())
        except pa.ArrowException as err:  # uint64 past the int64 range
            raise DataError(f"{path}: column {name!r}: ids do not fit int64: {err}") from err
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        utf8 = _utf8(arr, np.int64 if pa.types.is_large_string(arr.type) else np.int32)
        empty = np.flatnonzero(np.char.str_len(utf8) == 0)
        if len(empty):
            raise DataError(f"{path}: column {name!r}: empty id at row {int(empty[0])}")
        return ids_from_utf8(utf8)
    raise DataError(f"{path}: column {name!r} has type {arr.type}; expected integer or string ids")


def _utf8(arr: Any, offset_type: type) -> np.ndarray:
    """A string array's values as numpy byte strings, straight from Arrow's offsets and data buffers."""
    _, offsets_buf, data_buf = arr.buffers()
    offsets: np.ndarray = np.frombuffer(offsets_buf, dtype=offset_type)[
        arr.offset : arr.offset + len(arr) + 1
    ]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return gather(data, offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64))


def _numbers(pa: Any, path: Path, name: str, arr: Any) -> np.ndarray:
    """A rating or timestamp column as float64 (timestamps and dates in seconds since the epoch)."""
    _check_nulls(path, name, arr)
    t = arr.type
    if pa.types.is_timestamp(t):
        return arr.cast(pa.int64()).to_numpy().astype(np.float64) / _TICKS[t.unit]
    if pa.types.is_date(t):
        days = arr.cast(pa.date32()).cast(pa.int32()).to_numpy()
        return days.astype(np.float64) * 86400.0
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
    raise DataError(f"{path}: column {name!r} has type {t}; expected numbers")
