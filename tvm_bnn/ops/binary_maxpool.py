"""binary_maxpool: max-pool of ±1 activations is a bitwise OR of their packed bits.

max over a window of ±1 values is +1 as soon as one value is +1. Max-pool padding never wins a max (it is -inf), so
taps in the padding are skipped (OR with 0).
"""
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx


@dataclass(frozen=True)
class PoolGeometry:
    pool: tuple
    strides: tuple
    padding: tuple = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple = (1, 1)
    ceil_mode: bool = False

    def output_hw(self, h: int, w: int) -> tuple:
        def one(extent, k, s, p0, p1, d):
            eff = d * (k - 1) + 1
            span = extent + p0 + p1 - eff
            out = (span + (s - 1 if self.ceil_mode else 0)) // s + 1
            if self.ceil_mode and (out - 1) * s >= extent + p0:  # PyTorch: the last window must start inside
                out -= 1
            return out

        return (one(h, self.pool[0], self.strides[0], self.padding[0], self.padding[2], self.dilation[0]),
                one(w, self.pool[1], self.strides[1], self.padding[1], self.padding[3], self.dilation[1]))


_bitwise_or = te.comm_reducer(lambda a, b: a | b, lambda t: tirx.const(0, t), name="bitwise_or")


def compute(xp: te.Tensor, geo: PoolGeometry) -> te.Tensor:
    """uint64[N, H, W, CW] -> uint64[N, OH, OW, CW]."""
    n_, h_, w_, cw_ = (int(d) for d in xp.shape)
    oh_, ow_ = geo.output_hw(h_, w_)
    rh = te.reduce_axis((0, geo.pool[0]), name="rh")
    rw = te.reduce_axis((0, geo.pool[1]), name="rw")

    def window(n, oh, ow, cw):
        ih = oh * geo.strides[0] - geo.padding[0] + rh * geo.dilation[0]
        iw = ow * geo.strides[1] - geo.padding[1] + rw * geo.dilation[1]
        valid = tirx.all(ih >= 0, ih < h_, iw >= 0, iw < w_)
        return _bitwise_or(tirx.if_then_else(valid, xp[n, ih, iw, cw], tirx.const(0, "uint64")), axis=[rh, rw])

    return te.compute((n_, oh_, ow_, cw_), window, name="binary_maxpool")


def reference(x_pm1: np.ndarray, geo: PoolGeometry) -> np.ndarray:
    """Float max-pool of an NCHW ±1 tensor with -inf padding (numpy reference); returns NCHW ±1."""
    x = np.asarray(x_pm1, np.float32)
    n, c, h, w = x.shape
    pt, pl, pb, pr = geo.padding
    oh, ow = geo.output_hw(h, w)
    big = np.full((n, c, h + pt + pb + geo.strides[0] * 2 + geo.pool[0] * geo.dilation[0],
                   w + pl + pr + geo.strides[1] * 2 + geo.pool[1] * geo.dilation[1]), -np.inf, np.float32)
    big[:, :, pt:pt + h, pl:pl + w] = x
    out = np.full((n, c, oh, ow), -np.inf, np.float32)
    for i in range(geo.pool[0]):
        for j in range(geo.pool[1]):
            r0, c0 = i * geo.dilation[0], j * geo.dilation[1]
            patch = big[:, :, r0: r0 + geo.strides[0] * (oh - 1) + 1: geo.strides[0],
                        c0: c0 + geo.strides[1] * (ow - 1) + 1: geo.strides[1]]
            out = np.maximum(out, patch)
    return out
