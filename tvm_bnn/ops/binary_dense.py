"""binary_dense: rows of packed ±1 activations times packed ±1 weight rows, ``dot = K - 2 * popcount(a ^ w)``."""
import numpy as np
from tvm import te, tirx

from . import epilogue


def compute_dot(xp: te.Tensor, wp: te.Tensor, k: int) -> te.Tensor:
    """uint64[M, KW] x uint64[N, KW] -> int32[M, N]."""
    m_, kw_ = (int(d) for d in xp.shape)
    n_ = int(wp.shape[0])
    r = te.reduce_axis((0, kw_), name="rkw")
    pop = te.compute((m_, n_), lambda m, n: te.sum(tirx.popcount(xp[m, r] ^ wp[n, r]).astype("int32"), axis=r),
                     name="popcount")
    return te.compute((m_, n_), lambda m, n: k - 2 * pop[m, n], name="dot")


def compute(xp, wp, scale, bias, k: int) -> te.Tensor:
    return epilogue.float_output(compute_dot(xp, wp, k), scale, bias, channel_axis=1, name="binary_dense")


def compute_bits(xp, wp, direction, threshold, k: int) -> te.Tensor:
    return epilogue.bits_output(compute_dot(xp, wp, k), direction, threshold, name="binary_dense_bits")


def reference_dot(x_pm1: np.ndarray, w_pm1: np.ndarray) -> np.ndarray:
    """±1 [M, K] and ±1 [N, K] -> exact int64 [M, N] (numpy reference)."""
    return np.asarray(x_pm1, np.int64) @ np.asarray(w_pm1, np.int64).T
