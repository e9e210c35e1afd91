"""Set operations on id columns, with the results of numpy's but faster for the shapes loading meets.

- :func:`unique_inverse` is ``np.unique(x, return_inverse=True)``: one value per run of equal values (files
  grouped by user), dense non-negative ints by marking a table (no sort), strings by sorting 64-bit words
  (8 characters at a time) instead of strings;
- :func:`lookup` finds raw ids in a map's raw ids without a Python dictionary;
- :func:`contains` is ``np.isin`` by sorting once.
"""

from __future__ import annotations

import numpy as np


def unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values (ints numerically, strings by code point) and the index of each value in them."""
    values = np.asarray(values)
    n = len(values)
    changes = np.flatnonzero(values[1:] != values[:-1]) + 1
    if len(changes) < n // 4:  # long runs (a file grouped by user): factorise one value per run
        starts = np.r_[0, changes] if n else changes
        uniq, inverse = _unique_inverse(values[starts])
        return uniq, np.repeat(inverse, np.diff(np.r_[starts, n]))
    return _unique_inverse(values)


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if values.dtype.kind in "iu" and len(values) and values.min() >= 0 and values.max() < 4 * len(values):
        present = np.zeros(int(values.max()) + 1, dtype=bool)
        present[values] = True
        rank = np.cumsum(present) - 1
        return np.flatnonzero(present).astype(values.dtype), rank[values]
    if values.dtype.kind == "U" and len(values):
        words = _string_words(values)
        if words is not None:
            return _unique_rows(values, words)
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq, inverse.reshape(-1)


def _string_words(strings: np.ndarray) -> np.ndarray | None:
    """(n, k) uint64 keys that order rows as the strings order, or None past code point 255.

    Each character (code point < 256) becomes one byte, in big-endian 64-bit words: comparing the words in
    turn compares the strings, and the zero padding puts "ab" before "abc" as numpy does.
    """
    chars = np.ascontiguousarray(strings).view(np.uint32).reshape(len(strings), -1)
    if chars.max(initial=0) > 0xFF:
        return None
    k = -(-chars.shape[1] // 8)
    padded = np.zeros((len(strings), 8 * k), dtype=np.uint8)
    padded[:, : chars.shape[1]] = chars
    return padded.view(">u8").astype(np.uint64)


def _unique_rows(values: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique and inverse of ``values`` whose sort keys are the rows of ``words``."""
    if words.shape[1] == 1:
        _, inverse = np.unique(words[:, 0], return_inverse=True)
        first = np.empty(int(inverse.max()) + 1, dtype=np.intp)
        first[inverse[::-1]] = np.arange(len(values) - 1, -1, -1)  # the last write is the first occurrence
        return values[first], inverse
    order = np.lexsort(words.T[::-1])
    ranked = words[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (ranked[1:] != ranked[:-1]).any(axis=1)
    inverse = np.empty(len(order), dtype=np.intp)
    inverse[order] = np.cumsum(new) - 1
    return values[order[new]], inverse


def lookup(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Position (int64) of each query among ``keys`` (unique strings), -1 where absent; compared as str."""
    keys, queries = np.asarray(keys).astype(str), np.asarray(queries).astype(str)
    _, inverse = unique_inverse(np.concatenate([keys, queries]))
    where = np.full(len(keys) + len(queries), -1, dtype=np.int64)
    where[inverse[: len(keys)]] = np.arange(len(keys))
    return where[inverse[len(keys) :]]


def contains(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """``np.isin(needles, haystack)`` for int arrays, by one sort and a binary search."""
    ordered = np.sort(haystack)
    if len(ordered) == 0:
        return np.zeros(len(needles), dtype=bool)
    at = np.minimum(np.searchsorted(ordered, needles), len(ordered) - 1)
    return ordered[at] == needles
