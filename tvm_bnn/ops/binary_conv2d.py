"""binary_conv2d: conv2d of channel-packed ±1 activations with packed ±1 weights, exact under zero padding.

Zero padding of a ±1 tensor inserts zeros, which one bit cannot hold. A tap that falls in the padding contributes 0
to the float convolution, so it is skipped here: ``dot = C * n_valid_taps - 2 * popcount over the valid taps``.
"""
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from . import epilogue, num_words


@dataclass(frozen=True)
class Conv2dGeometry:
    in_channels: int
    kernel: tuple  # (KH, KW)
    strides: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple = (1, 1)

    def output_hw(self, h: int, w: int) -> tuple:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilation
        pt, pl, pb, pr = self.padding
        return ((h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def _valid_taps(extent, out_extent, kernel, stride, pad, dil, name):
    k = te.reduce_axis((0, kernel), name="k")

    def count(o):
        i = o * stride - pad + k * dil
        return te.sum(tirx.Select(tirx.all(i >= 0, i < extent), 1, 0), axis=k)

    return te.compute((out_extent,), count, name=name)


def compute_dot(xp: te.Tensor, wp: te.Tensor, geo: Conv2dGeometry) -> te.Tensor:
    """uint64[N,H,W,CW] x uint64[O,KH,KW,CW] -> exact int32 dot, NHWC: int32[N, OH, OW, O]."""
    n_, h_, w_, cw_ = (int(d) for d in xp.shape)
    o_, kh_, kw_, _ = (int(d) for d in wp.shape)
    (sh, sw), (dh, dw) = geo.strides, geo.dilation
    pt, pl, _, _ = geo.padding
    oh_, ow_ = geo.output_hw(h_, w_)
    taps_h = _valid_taps(h_, oh_, kh_, sh, pt, dh, "taps_h")
    taps_w = _valid_taps(w_, ow_, kw_, sw, pl, dw, "taps_w")
    rkh = te.reduce_axis((0, kh_), name="rkh")
    rkw = te.reduce_axis((0, kw_), name="rkw")
    rcw = te.reduce_axis((0, cw_), name="rcw")

    def mismatches(n, oh, ow, o):
        ih = oh * sh - pt + rkh * dh
        iw = ow * sw - pl + rkw * dw
        valid = tirx.all(ih >= 0, ih < h_, iw >= 0, iw < w_)
        # if_then_else, not Select: the load must not happen for a tap in the padding
        pop = tirx.if_then_else(valid, tirx.popcount(xp[n, ih, iw, rcw] ^ wp[o, rkh, rkw, rcw]).astype("int32"), 0)
        return te.sum(pop, axis=[rkh, rkw, rcw])

    pop = te.compute((n_, oh_, ow_, o_), mismatches, name="popcount")
    c = geo.in_channels
    return te.compute((n_, oh_, ow_, o_), lambda n, oh, ow, o: taps_h[oh] * taps_w[ow] * c - 2 * pop[n, oh, ow, o],
                      name="dot")


def compute(xp, wp, scale, bias, geo: Conv2dGeometry) -> te.Tensor:
    """Float output, NCHW: ``dot * scale[o] + bias[o]`` as float32[N, O, OH, OW]."""
    dot = compute_dot(xp, wp, geo)
    n_, oh_, ow_, o_ = (int(d) for d in dot.shape)
    return te.compute((n_, o_, oh_, ow_),
                      lambda n, o, oh, ow: dot[n, oh, ow, o].astype("float32") * scale[o] + bias[o],
                      name="binary_conv2d")


def compute_bits(xp, wp, direction, threshold, geo: Conv2dGeometry) -> te.Tensor:
    """Bit output, NHWC-packed: ``dot * direction[o] >= threshold[o]`` as uint64[N, OH, OW, ceil(O/64)]."""
    return epilogue.bits_output(compute_dot(xp, wp, geo), direction, threshold, name="binary_conv2d_bits")


def reference_dot(x_pm1: np.ndarray, w_pm1: np.ndarray, geo: Conv2dGeometry) -> np.ndarray:
    """±1 float NCHW input and OIHW weights -> exact int64 conv with zero padding, NCHW (numpy reference)."""
    x = np.asarray(x_pm1, np.int64)
    w = np.asarray(w_pm1, np.int64)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    pt, pl, pb, pr = geo.padding
    (sh, sw), (dh, dw) = geo.strides, geo.dilation
    xpad = np.zeros((n, c, h + pt + pb, wd + pl + pr), np.int64)
    xpad[:, :, pt:pt + h, pl:pl + wd] = x
    oh, ow = geo.output_hw(h, wd)
    out = np.zeros((n, o, oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xpad[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def pack_weights(w_pm1: np.ndarray) -> np.ndarray:
    """OIHW ±1 (or ±alpha) weights -> uint64[O, KH, KW, ceil(I/64)], bit = (w >= 0)."""
    from .bitpack import pack_bits_last_axis

    return pack_bits_last_axis(np.transpose(np.asarray(w_pm1) >= 0, (0, 2, 3, 1)))


def packed_channels(channels: int) -> int:
    return num_words(channels)
