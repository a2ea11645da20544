"""binary_dense: rows of packed ±1 activations times packed ±1 weight rows, ``dot = K - 2 * popcount(a ^ w)``.

The TE is laid out for the x86 schedule: the mismatch count ``popcount`` accumulates in uint64 (the lane type of
``vpopcntq``, no narrowing inside the hot loop) and is narrowed to int32 in ``dot``. For the bits output the output
axis of ``popcount``/``dot`` is padded to whole 64-bit words (rows past N reuse the last weight row and are masked
off by the epilogue), so the epilogue can be tiled in word-aligned blocks without bounds checks.
"""
import numpy as np
from tvm import te, tirx

from . import WORD_BITS, epilogue, num_words


def compute_dot(xp: te.Tensor, wp: te.Tensor, k: int, out_extent: int | None = None) -> te.Tensor:
    """uint64[M, KW] x uint64[N, KW] -> int32[M, N] (or int32[M, out_extent], rows past N clamped to N-1)."""
    m_, kw_ = (int(d) for d in xp.shape)
    n_ = int(wp.shape[0])
    ext = n_ if out_extent is None else int(out_extent)
    r = te.reduce_axis((0, kw_), name="rkw")

    def row(n):
        return n if ext == n_ else tirx.min(n, n_ - 1)

    pop = te.compute((m_, ext), lambda m, n: te.sum(tirx.popcount(xp[m, r] ^ wp[row(n), r]), axis=r),
                     name="popcount")
    return te.compute((m_, ext), lambda m, n: int(k) - 2 * pop[m, n].astype("int32"), name="dot")


def compute(xp, wp, scale, bias, k: int) -> te.Tensor:
    return epilogue.float_output(compute_dot(xp, wp, k), scale, bias, channel_axis=1, name="binary_dense")


def compute_bits(xp, wp, direction, threshold, k: int) -> te.Tensor:
    padded = num_words(int(wp.shape[0])) * WORD_BITS
    return epilogue.bits_output(compute_dot(xp, wp, k, padded), direction, threshold, name="binary_dense_bits")


def reference_dot(x_pm1: np.ndarray, w_pm1: np.ndarray) -> np.ndarray:
    """±1 [M, K] and ±1 [N, K] -> exact int64 [M, N] (numpy reference)."""
    return np.asarray(x_pm1, np.int64) @ np.asarray(w_pm1, np.int64).T
