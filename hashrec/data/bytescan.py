"""Vectorised scanning of a block of text lines held as bytes: lines, fields, numbers and ids.

Every function here costs a fixed number of numpy calls per block (or per character position of the widest
field), never a Python call per line or per field. They follow the rules of the line-at-a-time parsers in
:mod:`hashrec.data.lineparse` (``str.split``, ``str.strip``, ``int``, ``float``) for plain input and say so
when the input is not plain (a number such as ``1e5``, unicode whitespace, NUL bytes): the caller then
parses that block line by line, which also finds and names the first bad line.

Offsets are into the block's bytes; a span ``[s, e)`` is a field or a line without its ``\\n``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: The ASCII bytes that ``str.split()`` and ``str.strip()`` treat as whitespace.
WHITESPACE = np.zeros(256, dtype=bool)
WHITESPACE[list(b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f ")] = True
_INLINE_SPACE = b"\t\x0b\x0c\r\x1c\x1d\x1e\x1f "
DIGIT = np.zeros(256, dtype=bool)
DIGIT[ord("0") : ord("9") + 1] = True
#: The non-ASCII characters ``str.isspace()`` accepts: invisible to a byte-level scan, so not plain.
UNICODE_SPACES = "\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_UNICODE_SPACE = re.compile(b"|".join(re.escape(c.encode()) for c in UNICODE_SPACES))  # on UTF-8 bytes
#: Ints of up to 18 digits and decimals of up to 15 digits are exact in int64 and float64.
MAX_INT_DIGITS = 18
MAX_DECIMAL_DIGITS = 15
_POW10 = np.array([float(10**k) for k in range(MAX_DECIMAL_DIGITS + 1)])


def is_plain(data: bytes) -> bool:
    """Whether a byte-level scan splits and strips ``data`` exactly as ``str`` methods do.

    Not plain: NUL bytes (numpy byte strings drop trailing NULs) and non-ASCII whitespace.
    """
    if b"\x00" in data:
        return False
    return data.isascii() or _UNICODE_SPACE.search(data) is None


@dataclass(frozen=True)
class Lines:
    """The lines of a block: ``buf[starts[i]:ends[i]]`` is line i, ``ends[i]`` the offset of its ``\\n``."""

    buf: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    is_data: np.ndarray  # neither blank nor a "#" comment
    spaces: bytes  # the whitespace bytes other than "\n" the block holds: what a strip may have to remove

    @property
    def skipped(self) -> int:
        """Blank and comment lines."""
        return len(self.ends) - int(np.count_nonzero(self.is_data))


def scan_lines(data: bytes) -> Lines:
    """Split a block (which ends with ``\\n``) into lines and mark the data lines (the block must be plain)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    starts = np.zeros_like(ends)
    starts[1:] = ends[:-1] + 1
    spaces = bytes(b for b in _INLINE_SPACE if b in data)  # a few memchr scans: cheaper than stripping
    first = lstrip(buf, starts, ends) if spaces else starts
    # buf[first] is the line's "\n" for a blank line: in range, and not "#".
    return Lines(buf, starts, ends, (first < ends) & (buf[first] != ord("#")), spaces)


def lstrip(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Offset of the first non-whitespace byte of each span, or its end when it is all whitespace.

    One numpy pass per leading-whitespace byte, over the spans that still have one (usually none).
    """
    pos = starts.copy()
    todo = np.flatnonzero((pos < ends) & WHITESPACE[buf[pos]])
    while len(todo):
        pos[todo] += 1
        todo = todo[(pos[todo] < ends[todo]) & WHITESPACE[buf[pos[todo]]]]
    return pos


def rstrip(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """End offset of each span without its trailing whitespace (``starts`` where it is all whitespace)."""
    pos = ends.copy()
    todo = np.flatnonzero((pos > starts) & WHITESPACE[buf[pos - 1]])
    while len(todo):
        pos[todo] -= 1
        todo = todo[(pos[todo] > starts[todo]) & WHITESPACE[buf[pos[todo] - 1]]]
    return pos


@dataclass(frozen=True)
class Fields:
    """The fields of some lines (rows): field j of row r is field ``k = first[r] + j`` of the block.

    Field k ends at ``rights[k]``. It starts at ``lefts[k]`` (whitespace-separated fields), or, for fields
    split on a separator, just after the separator or newline that ends field k - 1. Only rows with
    ``count > j`` have a field j.
    """

    buf: np.ndarray
    rights: np.ndarray
    first: np.ndarray
    count: np.ndarray
    lefts: np.ndarray | None = None
    sep_width: int = 1
    stripped: bool = False  # whether fields must be stripped of surrounding whitespace

    def span(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Start and end offsets of every row's field ``j`` (every row must have one)."""
        k = self.first + j
        e = self.rights[k]
        if self.lefts is not None:
            s = self.lefts[k]
        else:
            before = self.rights[np.maximum(k - 1, 0)]
            if self.sep_width > 1:  # after a newline the next field starts one byte on, else sep_width
                before = before + np.where(self.buf[before] == ord("\n"), 1, self.sep_width)
            else:
                before = before + 1
            s = np.where(k > 0, before, 0)
        if self.stripped:
            s = lstrip(self.buf, s, e)
            e = rstrip(self.buf, s, e)
        return s, e

    def row_major(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start and end offsets of every field of every row, row after row, and where each row starts in
        them (whitespace-separated fields only)."""
        assert self.lefts is not None, "row_major needs fields with explicit starts"
        starts = np.cumsum(self.count) - self.count
        take = np.repeat(self.first - starts, self.count) + np.arange(int(self.count.sum()))
        return self.lefts[take], self.rights[take], starts


def whitespace_fields(lines: Lines, rows: np.ndarray) -> Fields:
    """Fields of ``rows`` separated by runs of whitespace, as ``str.split()`` makes them."""
    solid = ~WHITESPACE[lines.buf]
    edges = np.diff(solid.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    lefts, rights = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    first = np.searchsorted(lefts, lines.starts[rows])
    count = np.searchsorted(lefts, lines.ends[rows]) - first
    return Fields(lines.buf, rights, first, count, lefts=lefts)


def separated_fields(lines: Lines, rows: np.ndarray, sep: bytes) -> Fields | None:
    """Fields of ``rows`` split on ``sep``, as ``str.split(sep)`` makes them, then stripped.

    None when occurrences of ``sep`` overlap (``:::`` with ``::``), where the leftmost-first rule of
    ``str.split`` would need a sequential scan.
    """
    buf, m = lines.buf, len(sep)
    cut = buf == sep[0]
    if m > 1:
        stop = max(len(buf) - m + 1, 0)  # where a match may start
        hit = cut[:stop]
        for k in range(1, m):
            hit &= buf[k : stop + k] == sep[k]
        at = np.flatnonzero(hit)
        if len(at) > 1 and np.diff(at).min() < m:
            return None
        cut[:] = False
        cut[at] = True
    cut[lines.ends] = True
    rights = np.flatnonzero(cut)  # a field ends at a separator or at the end of its line
    first = np.searchsorted(rights, lines.starts[rows])
    count = np.searchsorted(rights, lines.ends[rows]) - first + 1
    # A field holds no single-byte separator: only other whitespace can need stripping (none in most files).
    stripped = bool(lines.spaces.replace(sep, b"") if m == 1 else lines.spaces)
    return Fields(buf, rights, first, count, sep_width=m, stripped=stripped)


def parse_uint(buf: np.ndarray, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values (int64) of the spans that are 1 to ``MAX_INT_DIGITS`` ASCII digits, and where that holds."""
    n = e - s
    ok = (n >= 1) & (n <= MAX_INT_DIGITS)
    values = np.zeros(len(s), dtype=np.int64)
    shortest, longest = int(n.min(initial=0)), min(int(n.max(initial=0)), MAX_INT_DIGITS)
    for k in range(longest):
        # Up to the shortest span every span has a k-th byte: no masks, in-place updates only.
        live = None if k < shortest else n > k
        at = s + k if live is None else np.minimum(s + k, len(buf) - 1)
        d = buf[at] - np.uint8(ord("0"))  # wraps below "0": d < 10 exactly for digits
        is_digit = d < 10
        if live is None:
            ok &= is_digit
            values *= 10
            values += d
        else:
            ok &= is_digit | ~live
            values = np.where(live, values * 10 + d, values)
    return values, ok


def parse_decimal(buf: np.ndarray, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values (float64) of spans ``[-]digits[.digits]`` with 1 to ``MAX_DECIMAL_DIGITS`` digits, and where.

    ``N / 10**f`` with exact ``N`` and ``10**f`` is one correctly rounded division: the same double as
    ``float(text)``. Other spellings (``1e5``, ``+3``, ``nan``) are reported as not handled.
    """
    ints, ok = parse_uint(buf, s, e)  # the common case: plain integers, at fewer operations per digit
    values = ints.astype(np.float64)
    ok &= e - s <= MAX_DECIMAL_DIGITS
    rest = np.flatnonzero(~ok)
    if len(rest):
        values[rest], ok[rest] = _parse_signed_decimal(buf, s[rest], e[rest])
    return values, ok


def _parse_signed_decimal(buf: np.ndarray, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    last = len(buf) - 1
    neg = (e > s) & (buf[np.minimum(s, last)] == ord("-"))
    s = s + neg
    n = e - s
    ok = n >= 1
    num = np.zeros(len(s), dtype=np.int64)
    digits = np.zeros(len(s), dtype=np.int64)
    decimals = np.zeros(len(s), dtype=np.int64)
    dot = np.zeros(len(s), dtype=bool)
    for k in range(min(int(n.max(initial=0)), MAX_DECIMAL_DIGITS + 1)):
        live = n > k
        c = buf[np.minimum(s + k, last)]
        is_digit = live & DIGIT[c]
        is_dot = live & (c == ord("."))
        ok &= is_digit | ~live | (is_dot & ~dot)
        num = np.where(is_digit, num * 10 + (c.astype(np.int64) - ord("0")), num)
        digits += is_digit
        decimals += is_digit & dot
        dot |= is_dot
    ok &= (digits >= 1) & (digits <= MAX_DECIMAL_DIGITS) & (n <= MAX_DECIMAL_DIGITS + 1)
    values = num / _POW10[np.minimum(decimals, MAX_DECIMAL_DIGITS)]
    return np.where(neg, -values, values), ok


def gather(buf: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """The spans as a numpy byte-string array (dtype ``S``), in one gather."""
    n = e - s
    width = max(int(n.max(initial=0)), 1)
    padded = np.concatenate([buf, np.zeros(width, dtype=np.uint8)])
    out = sliding_window_view(padded, width)[s]  # a copy: fancy indexing
    out[np.arange(width) >= n[:, None]] = 0
    return out.view(f"S{width}").reshape(len(s))
