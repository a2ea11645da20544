"""binary_conv2d: conv2d of channel-packed ±1 activations with packed ±1 weights, exact under zero padding.

Zero padding of a ±1 tensor inserts zeros, which one bit cannot hold. A tap that falls in the padding contributes 0
to the float convolution, so it is skipped here: ``dot = C * n_valid_taps - 2 * popcount over the valid taps``.
"""
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from . import WORD_BITS, epilogue, num_words


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


# "channels": vectorise over output channels (weights transposed inside the kernel); "words": over the packed
# input words of a kernel row (a horizontal sum per output). Both are exact; "channels" measured faster on Zen 4.
VECTORIZE = "channels"


def _tap_classes(out_extent, kernel, stride, pad, dil, in_extent):
    """Output rows (or columns) grouped by which taps fall in the padding: the border ones are their own classes,
    the interior (no tap in the padding) is one class. Returns (class_of(o) -> expr, [representative o per class])."""
    border = [any(not 0 <= o * stride - pad + k * dil < in_extent for k in range(kernel)) for o in range(out_extent)]
    interior = [o for o in range(out_extent) if not border[o]]
    if not interior:
        return (lambda o: o), list(range(out_extent))
    lo, hi = interior[0], interior[-1] + 1
    assert all(not border[o] for o in range(lo, hi))  # border taps only grow towards both ends
    reps = list(range(lo)) + [lo] + list(range(hi, out_extent))

    def class_of(o):
        if lo == 0 and hi == out_extent:
            return tirx.const(0, "int32")
        inner = tirx.Select(o < hi, lo, o - (hi - lo) + 1) if hi < out_extent else lo
        return tirx.Select(o < lo, o, inner) if lo > 0 else inner

    return class_of, reps


def _pick(index, values):
    """The expression ``values[index]`` for a small Python list of ints."""
    expr = tirx.const(int(values[-1]), "int32")
    for i in range(len(values) - 2, -1, -1):
        expr = tirx.Select(index == i, tirx.const(int(values[i]), "int32"), expr)
    return expr


def compute_dot(xp: te.Tensor, wp: te.Tensor, geo: Conv2dGeometry, out_extent: int | None = None) -> te.Tensor:
    """uint64[N,H,W,CW] x uint64[O,KH,KW,CW] -> exact int32 dot, NHWC: int32[N, OH, OW, O].

    Implementation (laid out for the x86 schedule):

    * ``pad``: a zero-padded copy of the packed input, so the hot loop has no bounds checks. A tap in the padding
      then counts ``popcount(0 ^ w) = popcount(w)`` mismatches and adds ``C`` to the ``C * taps`` term; both are
      functions of the weights and of which taps fall in the padding only, so ``pad_adjust`` tabulates the
      correction per (row class, column class, o) (a handful of border classes plus one interior class, where it
      is 0), and ``dot = C*KH*KW - 2*popcount + pad_adjust``;
    * ``popcount`` runs over a flattened output-pixel axis ``p = oh*OW + ow`` (tiles need not divide OW) and, for
      dilation 1 along W, over one contiguous axis of ``KW*CW`` words per kernel row: ``x[n, ih, ow*sw + kw, cw]``
      and ``w[o, kh, kw, cw]`` are both contiguous in ``(kw, cw)`` in NHWC;
    * it accumulates in uint64 (``vpopcntq`` lanes) and ``out_extent`` may pad the output channels (to whole words
      for the bits output); channels past O reuse the last filter and are masked by the epilogue.
    """
    n_, h_, w_, cw_ = (int(d) for d in xp.shape)
    o_, kh_, kw_, _ = (int(d) for d in wp.shape)
    ext = o_ if out_extent is None else int(out_extent)
    (sh, sw), (dh, dw) = geo.strides, geo.dilation
    pt, pl, _, _ = geo.padding
    oh_, ow_ = geo.output_hw(h_, w_)
    c = int(geo.in_channels)
    hp, wpd = (oh_ - 1) * sh + (kh_ - 1) * dh + 1, (ow_ - 1) * sw + (kw_ - 1) * dw + 1
    cls_h, reps_h = _tap_classes(oh_, kh_, sh, pt, dh, h_)
    cls_w, reps_w = _tap_classes(ow_, kw_, sw, pl, dw, w_)
    needs_pad = len(reps_h) > 1 or len(reps_w) > 1 or any(
        not 0 <= reps_h[0] * sh - pt + k * dh < h_ for k in range(kh_)) or any(
        not 0 <= reps_w[0] * sw - pl + k * dw < w_ for k in range(kw_))
    if needs_pad or pt or pl:
        xs = te.compute((n_, hp, wpd, cw_), lambda n, i, j, q: tirx.if_then_else(
            tirx.all(i >= pt, i < pt + h_, j >= pl, j < pl + w_), xp[n, i - pt, j - pl, q], tirx.const(0, "uint64")),
            name="pad")
    else:
        xs = xp

    def oc(o):
        return o if ext == o_ else tirx.min(o, o_ - 1)

    rkh = te.reduce_axis((0, kh_), name="rkh")
    if VECTORIZE == "channels":
        # weights transposed to [KH, KW, CW, O]: output channels contiguous, so the kernel vectorises over them
        # (one broadcast input word ^ a vector of filters) and needs no horizontal sum
        wt = te.compute((kh_, kw_, cw_, ext), lambda i, j, q, o: wp[oc(o), i, j, q], name="weights_t")
        rkw = te.reduce_axis((0, kw_), name="rkw")
        rcw = te.reduce_axis((0, cw_), name="rcw")

        def mismatches(n, p, o):
            ih, iw = (p // ow_) * sh + rkh * dh, (p % ow_) * sw + rkw * dw
            return te.sum(tirx.popcount(xs[n, ih, iw, rcw] ^ wt[rkh, rkw, rcw, o]), axis=[rkh, rkw, rcw])
    elif dw == 1:
        rj = te.reduce_axis((0, kw_ * cw_), name="rj")

        def mismatches(n, p, o):
            ih, iw = (p // ow_) * sh + rkh * dh, (p % ow_) * sw + rj // cw_
            return te.sum(tirx.popcount(xs[n, ih, iw, rj % cw_] ^ wp[oc(o), rkh, rj // cw_, rj % cw_]),
                          axis=[rkh, rj])
    else:
        rkw = te.reduce_axis((0, kw_), name="rkw")
        rcw = te.reduce_axis((0, cw_), name="rcw")

        def mismatches(n, p, o):
            ih, iw = (p // ow_) * sh + rkh * dh, (p % ow_) * sw + rkw * dw
            return te.sum(tirx.popcount(xs[n, ih, iw, rcw] ^ wp[oc(o), rkh, rkw, rcw]), axis=[rkh, rkw, rcw])

    pop = te.compute((n_, oh_ * ow_, ext), mismatches, name="popcount")
    base = c * kh_ * kw_
    if not needs_pad:
        return te.compute((n_, oh_, ow_, ext), lambda n, oh, ow, o: base - 2 * pop[n, oh * ow_ + ow, o].astype(
            "int32"), name="dot")

    rc = te.reduce_axis((0, cw_), name="rc")
    if VECTORIZE == "channels":  # read the transposed copy: contiguous in o
        popw = te.compute((kh_, kw_, o_), lambda i, j, o: te.sum(tirx.popcount(wt[i, j, rc, o]).astype("int32"),
                                                                 axis=rc), name="popw")
    else:
        popw = te.compute((kh_, kw_, o_), lambda i, j, o: te.sum(tirx.popcount(wp[o, i, j, rc]).astype("int32"),
                                                                 axis=rc), name="popw")
    ak = te.reduce_axis((0, kh_), name="ak")
    aj = te.reduce_axis((0, kw_), name="aj")

    def adjust(ch, cwl, o):
        ih = _pick(ch, reps_h) * sh - pt + ak * dh
        iw = _pick(cwl, reps_w) * sw - pl + aj * dw
        outside = tirx.any(ih < 0, ih >= h_, iw < 0, iw >= w_)
        return te.sum(tirx.Select(outside, 2 * popw[ak, aj, o] - c, 0), axis=[ak, aj])

    adj = te.compute((len(reps_h), len(reps_w), o_), adjust, name="pad_adjust")
    return te.compute((n_, oh_, ow_, ext), lambda n, oh, ow, o: base - 2 * pop[n, oh * ow_ + ow, o].astype("int32")
                      + adj[cls_h(oh), cls_w(ow), oc(o)], name="dot")


def compute(xp, wp, scale, bias, geo: Conv2dGeometry) -> te.Tensor:
    """Float output, NCHW: ``dot * scale[o] + bias[o]`` as float32[N, O, OH, OW]."""
    dot = compute_dot(xp, wp, geo)
    n_, oh_, ow_, o_ = (int(d) for d in dot.shape)
    return te.compute((n_, o_, oh_, ow_),
                      lambda n, o, oh, ow: dot[n, oh, ow, o].astype("float32") * scale[o] + bias[o],
                      name="binary_conv2d")


def compute_bits(xp, wp, direction, threshold, geo: Conv2dGeometry) -> te.Tensor:
    """Bit output, NHWC-packed: ``dot * direction[o] >= threshold[o]`` as uint64[N, OH, OW, ceil(O/64)]."""
    padded = num_words(int(wp.shape[0])) * WORD_BITS
    return epilogue.bits_output(compute_dot(xp, wp, geo, padded), direction, threshold, name="binary_conv2d_bits")


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
