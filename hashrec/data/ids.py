"""Bidirectional maps between raw ids (strings, as clients see them) and contiguous internal ids."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .setops import unique_inverse


class IdMap:
    """Raw id <-> internal id (0..n-1), both ways.

    Raw ids are always strings (``"42"``, ``"u_17"``). Internal ids follow the order of ``raw``; the loaders
    sort raw ids numerically when they are all integers (so a 0-based integer dataset keeps its ids) and
    lexicographically otherwise. Lookups of unknown raw ids return -1 (``to_internal``) so that callers decide
    what an unknown id means (dropped, fallback, error).

    The raw -> internal dictionary is built on the first look-up, not at construction: a reader that only
    turns internal ids into raw ones (a batch export over id ranges, which may hold a memory-mapped array
    of millions of ids) never pays for it. Uniqueness is checked when the dictionary is built.
    """

    __slots__ = ("_index", "raw")

    def __init__(self, raw: Sequence[str] | np.ndarray) -> None:
        arr = raw if isinstance(raw, np.ndarray) else np.asarray(list(raw), dtype=object)
        if arr.ndim != 1:
            raise ValueError("IdMap needs a 1-d sequence of raw ids")
        self.raw: np.ndarray = arr
        self._index: dict[str, int] | None = None

    def _lookup(self) -> dict[str, int]:
        if self._index is None:
            index = {str(r): i for i, r in enumerate(self.raw.tolist())}
            if len(index) != len(self.raw):
                raise ValueError("IdMap raw ids must be unique")
            self._index = index
        return self._index

    def __len__(self) -> int:
        return len(self.raw)

    def __contains__(self, raw_id: object) -> bool:
        return raw_id in self._lookup()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and len(self) == len(other) and bool(np.all(self.raw == other.raw))

    def get(self, raw_id: str) -> int | None:
        """Internal id of one raw id, or None when unknown."""
        return self._lookup().get(raw_id)

    def to_internal(self, raw_ids: Iterable[str]) -> np.ndarray:
        """Internal ids (int64) for raw ids; -1 where a raw id is unknown."""
        index = self._lookup()
        return np.fromiter((index.get(str(r), -1) for r in raw_ids), dtype=np.int64)

    def to_raw(self, internal: Iterable[int] | np.ndarray) -> list[str]:
        """Raw ids for internal ids. Raises IndexError for an id out of range."""
        idx = np.asarray(internal, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.raw)):
            raise IndexError(f"internal id out of range [0, {len(self.raw)})")
        return [str(x) for x in self.raw[idx].tolist()]

    def check_unique(self) -> None:
        """Raise ValueError unless the raw ids are unique (builds the look-up dictionary)."""
        self._lookup()

    @classmethod
    def factorize(cls, raw_ids: np.ndarray) -> tuple[IdMap, np.ndarray]:
        """Build a map from a column of raw ids and return it with the column's internal ids (int64).

        Integer-like ids sort numerically, others as strings; the result is deterministic.
        """
        arr = np.asarray(raw_ids)
        if arr.dtype.kind in "iu":
            uniq, inverse = unique_inverse(arr)
            return cls(uniq.astype(str).tolist()), inverse.astype(np.int64)
        strs = arr.astype(str, copy=False)
        uniq, inverse = unique_inverse(strs)
        if _all_int(uniq):
            order = np.argsort(np.array([int(u) for u in uniq], dtype=object), kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            uniq = uniq[order]
            inverse = rank[inverse]
            # canonical form: "007" and "7" would be different raw ids; keep them as written.
        return cls(list(uniq)), inverse.astype(np.int64)


def _all_int(strs: np.ndarray) -> bool:
    """Whether every string is an optionally signed run of digits (as ``_is_int`` says)."""
    chars = np.ascontiguousarray(strs).view(np.uint32)
    # A vectorised "no" for the usual case: ASCII text with a character that is neither digit nor sign.
    # Non-ASCII digits ("٣") are digits to str.isdigit, so such columns take the exact per-id check.
    if chars.max(initial=0) < 0x80 and not np.isin(chars, _INT_CHARS).all():
        return False
    return all(_is_int(u) for u in strs)


_INT_CHARS = np.array([0, *b"+-0123456789"], dtype=np.uint32)  # 0: the padding of shorter strings


def _is_int(s: str) -> bool:
    if not s:
        return False
    body = s[1:] if s[0] in "+-" else s
    return body.isdigit()
