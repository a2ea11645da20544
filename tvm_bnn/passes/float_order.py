"""The float32 line as ordered integer keys: what the exact analyses bisect over.

``to_key`` maps float32 values to int64 keys in the same order (-0.0 and +0.0 share key 0), so "the next float" is
key + 1 and a bisection over keys finds a switching point exactly, in at most 32 steps.
"""
from __future__ import annotations

import numpy as np

MAX_KEY = 0x7F7FFFFF  # the key of the largest finite float32; -MAX_KEY is its negative


def to_key(values) -> np.ndarray:
    """float32 -> int64 keys in the same order (-0.0 and +0.0 share key 0)."""
    bits = np.asarray(values, np.float32).view(np.uint32).astype(np.int64)
    return np.where(bits >= 0x80000000, -(bits - 0x80000000), bits)


def from_key(keys) -> np.ndarray:
    keys = np.asarray(keys, np.int64)
    bits = np.where(keys < 0, 0x80000000 - keys, keys).astype(np.uint32)
    return bits.view(np.float32)


def first_true(pred, lo, hi) -> np.ndarray:
    """Per element, the smallest key in [lo, hi] where the monotone ``pred(keys)`` holds. ``pred`` is taken to hold
    at ``hi`` and is only evaluated strictly below it (``hi`` may be one past a piece or the float line)."""
    lo, hi = np.array(lo, np.int64), np.array(hi, np.int64)
    while np.any(lo < hi):
        mid = lo + (hi - lo) // 2
        ok = pred(mid) | (lo >= hi)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid + 1)
    return lo


def next_up(t) -> np.ndarray:
    return np.nextafter(np.asarray(t, np.float32), np.float32(np.inf)).astype(np.float32)


def negate_test(scale, threshold):
    """(scale', threshold') whose test ``x * scale' >= threshold'`` is the negation of ``x * scale >= threshold``."""
    scale, threshold = np.asarray(scale, np.float32), np.asarray(threshold, np.float32)
    flipped = next_up(-threshold)  # not (s x >= t)  <=>  -s x > -t  <=>  -s x >= next_up(-t)
    const = np.where(threshold <= 0, np.float32(1), np.float32(0))  # 0 >= t negated
    return (-scale).astype(np.float32), np.where(scale == 0, const, flipped).astype(np.float32)
