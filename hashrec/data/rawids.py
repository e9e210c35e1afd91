"""Raw id columns from UTF-8 byte strings: canonical integers become int64, anything else stays a string.

"Canonical" is what ``str(int(text)) == text`` accepts: ``0``, ``42``, ``-7``, but not ``007``, ``+7``
or ``-0``, so that ``007`` and ``7`` stay two different raw ids. The decision is made for a whole column.
"""

from __future__ import annotations

import numpy as np

from .bytescan import DIGIT, MAX_INT_DIGITS, parse_uint


def ids_from_utf8(col: np.ndarray) -> np.ndarray:
    """int64 when every id of ``col`` (dtype ``S``, UTF-8) is a canonical integer, else str (dtype ``U``)."""
    col = np.ascontiguousarray(col)
    if len(col) == 0:
        return np.empty(0, dtype=np.int64)
    width = col.dtype.itemsize
    m = col.view(np.uint8).reshape(len(col), width)
    ints = _canonical_ints(col, m)
    if ints is not None:
        return ints
    if np.all(m < 0x80):  # ASCII: widening each byte to a code point is the decoding
        return m.astype(np.uint32).view(f"U{width}").reshape(len(col))
    uniq, inverse = np.unique(col, return_inverse=True)
    return np.array([u.decode("utf-8") for u in uniq.tolist()], dtype=str)[inverse]


def _canonical_ints(col: np.ndarray, m: np.ndarray) -> np.ndarray | None:
    """The ids as int64 when all are canonical integers, else None."""
    neg = m[:, 0] == ord("-")
    if not np.all(DIGIT[m[:, 0]] | neg):  # cheap early exit for ids such as "u17"
        return None
    length = np.char.str_len(col)
    k = np.arange(m.shape[1])
    inside = (k >= neg[:, None]) & (k < length[:, None])
    lead = m[np.arange(len(m)), np.minimum(neg, m.shape[1] - 1)]  # the first digit (clipped for "-")
    body = length - neg
    canonical = (DIGIT[m] | ~inside).all(axis=1) & (body >= 1) & ((lead != ord("0")) | ((body == 1) & ~neg))
    if not canonical.all():
        return None
    if body.max() > MAX_INT_DIGITS:  # may not fit int64: let numpy decide, as for any text
        return _exact_ints(col.astype(str))
    row = np.arange(len(m)) * m.shape[1]
    values, _ = parse_uint(m.ravel(), row + neg, row + length)
    return np.where(neg, -values, values)


def _exact_ints(strs: np.ndarray) -> np.ndarray | None:
    try:
        ints = strs.astype(np.int64)
    except (ValueError, OverflowError):
        return None
    return ints if np.array_equal(ints.astype(str), strs) else None
