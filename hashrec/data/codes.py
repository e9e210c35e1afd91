"""Binary codes: from continuous z to bits, packing, and the Hamming distance of given pairs.

Bit convention (used everywhere: training, bundles, FAISS, the service):

- the code of a vector z (K dims) is ``b = sign(z)`` with ``sign(0) = +1``: bit j is 1 iff ``z[j] >= 0``;
- packed codes are ``uint8`` arrays of ``K // 8`` bytes; dimension j lives in byte ``j // 8`` at bit
  ``j % 8`` counted from the least significant bit (``np.packbits(..., bitorder="little")``). Hamming
  distance does not depend on the order, but anything that unpacks codes does, so it is fixed here;
- Hamming distance ``d(b_u, b_i) = (K - <b_u, b_i>) / 2`` for the +-1 vectors.

K must be a positive multiple of 8 (FAISS binary indexes work on whole bytes).
"""

from __future__ import annotations

import numpy as np


def check_bits(k: int) -> int:
    """Validate a code length; returns it."""
    if k <= 0 or k % 8:
        raise ValueError(f"code length must be a positive multiple of 8, got {k}")
    return k


def to_bits(z: np.ndarray) -> np.ndarray:
    """Bits (uint8 0/1, shape [n, K]) of continuous vectors: 1 where z >= 0."""
    return (np.asarray(z) >= 0).astype(np.uint8)


def to_signs(z: np.ndarray) -> np.ndarray:
    """+-1 codes (float32, shape [n, K]) of continuous vectors: +1 where z >= 0."""
    return np.where(np.asarray(z) >= 0, 1.0, -1.0).astype(np.float32)


def pack(z_or_bits: np.ndarray) -> np.ndarray:
    """Pack continuous vectors (or 0/1 bits) into uint8 codes of K/8 bytes, little bit order."""
    a = np.asarray(z_or_bits)
    check_bits(a.shape[1])
    bits = a if a.dtype == np.uint8 else to_bits(a)
    return np.packbits(bits, axis=1, bitorder="little")


def unpack(codes: np.ndarray, k: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack`: 0/1 bits (uint8, [n, K])."""
    bits = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, bitorder="little")
    return bits if k is None else bits[:, :k]


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed codes of equal shape (or broadcastable), row by row: int32.

    ``a`` [..., K/8] and ``b`` [..., K/8] uint8; the result drops the last axis. Not a search: it compares
    the pairs it is given (checks and tests use it to verify what an index returned).
    """
    a, b = np.asarray(a, dtype=np.uint8), np.asarray(b, dtype=np.uint8)
    if a.shape[-1] % 8 == 0 and a.strides[-1] == 1 and b.strides[-1] == 1:  # whole words: 8x fewer ops
        a, b = a.view(np.uint64), b.view(np.uint64)
    counts = np.bitwise_count(np.bitwise_xor(a, b))
    if counts.shape[-1] == 1:  # one word per code (64-bit codes): a copy is cheaper than a reduction
        return counts[..., 0].astype(np.int32)
    return counts.sum(axis=-1, dtype=np.int32)
