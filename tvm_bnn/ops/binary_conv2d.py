"""binary_conv2d: conv2d of channel-packed ±1 activations with packed ±1 weights, exact under any constant padding.

Zero padding of a ±1 tensor inserts zeros, which one bit cannot hold. A tap that falls in the padding contributes 0
to the float convolution, so it is skipped here: ``dot = C * n_valid_taps - 2 * popcount over the valid taps``.
Padding with +1 or -1 (``pad_value``; Larq's ``pad_values=1.0``, LCE's fastest path) is a constant bit: the padded
taps are ordinary ±1 inputs and need no correction at all.
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
    pad_value: int = 0  # the value of the padding taps: 0 (skipped exactly), +1 or -1 (constant bits)

    def __post_init__(self):
        if self.pad_value not in (0, 1, -1):
            raise ValueError(f"pad_value={self.pad_value!r}: a binary conv pads with 0, +1 or -1")

    @classmethod
    def from_params(cls, p: dict) -> "Conv2dGeometry":
        """The geometry of a kernel from its ``tvm_bnn.params`` (see passes/kernels.py)."""
        return cls(p["in_channels"], tuple(p["kernel"]), tuple(p["strides"]), tuple(p["padding"]),
                   tuple(p["dilation"]), int(p.get("pad_value", 0)))

    def params(self) -> dict:
        return dict(in_channels=int(self.in_channels), kernel=[int(k) for k in self.kernel],
                    strides=[int(v) for v in self.strides], padding=[int(v) for v in self.padding],
                    dilation=[int(v) for v in self.dilation], pad_value=int(self.pad_value))

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


@dataclass
class ConvFrame:
    """What every binary conv TE (this one, schedules/cortexm.py's) shares: the sizes, the padded input ``xs``
    (``xp`` itself when no tap ever falls in the padding), the border classes of output rows and columns, and the
    last step ``dot = C*KH*KW - 2*popcount (+ pad_adjust at the border classes, for zero padding only)``.

    The padding words are 0 (zero padding, corrected by ``pad_adjust``; -1 padding, which is exactly bit 0) or the
    word of +1 bits for the channels that word holds (+1 padding): constant-bit padding needs no correction."""

    xp: te.Tensor
    wp: te.Tensor
    geo: Conv2dGeometry
    out_extent: int | None = None

    def __post_init__(self):
        self.n, self.h, self.w, self.cw = (int(d) for d in self.xp.shape)
        self.o, self.kh, self.kw, _ = (int(d) for d in self.wp.shape)
        self.ext = self.o if self.out_extent is None else int(self.out_extent)
        (self.sh, self.sw), (self.dh, self.dw) = self.geo.strides, self.geo.dilation
        self.pt, self.pl, _, _ = self.geo.padding
        self.oh, self.ow = self.geo.output_hw(self.h, self.w)
        self.c = int(self.geo.in_channels)
        self.cls_h, self.reps_h = _tap_classes(self.oh, self.kh, self.sh, self.pt, self.dh, self.h)
        self.cls_w, self.reps_w = _tap_classes(self.ow, self.kw, self.sw, self.pl, self.dw, self.w)
        self.needs_pad = len(self.reps_h) > 1 or len(self.reps_w) > 1 or any(
            not 0 <= self.reps_h[0] * self.sh - self.pt + k * self.dh < self.h for k in range(self.kh)) or any(
            not 0 <= self.reps_w[0] * self.sw - self.pl + k * self.dw < self.w for k in range(self.kw))
        self.xs = self.xp
        if self.needs_pad or self.pt or self.pl:
            hp = (self.oh - 1) * self.sh + (self.kh - 1) * self.dh + 1
            wpd = (self.ow - 1) * self.sw + (self.kw - 1) * self.dw + 1
            pt, pl, h_, w_, xp = self.pt, self.pl, self.h, self.w, self.xp
            fill = _pad_word(self.geo.pad_value, self.c)
            self.xs = te.compute((self.n, hp, wpd, self.cw), lambda n, i, j, q: tirx.if_then_else(
                tirx.all(i >= pt, i < pt + h_, j >= pl, j < pl + w_), xp[n, i - pt, j - pl, q],
                fill(q)), name="pad")
        self.needs_adjust = self.needs_pad and self.geo.pad_value == 0

    def taps_inside(self) -> np.ndarray:
        """bool[row classes, column classes, KH, KW]: which taps of each border class's representative output pixel
        fall inside the image (the others are in the padding). The tables of the padding corrections are sums over
        them."""
        rows = np.asarray(self.reps_h)[:, None] * self.sh - self.pt + np.arange(self.kh)[None, :] * self.dh
        cols = np.asarray(self.reps_w)[:, None] * self.sw - self.pl + np.arange(self.kw)[None, :] * self.dw
        in_h, in_w = (rows >= 0) & (rows < self.h), (cols >= 0) & (cols < self.w)  # [classes, taps]
        return in_h[:, None, :, None] & in_w[None, :, None, :]

    def oc(self, o):
        """Output channel ``o`` of a padded channel axis: channels past O reuse the last filter."""
        return o if self.ext == self.o else tirx.min(o, self.o - 1)

    def dot(self, mismatches, weight_popcounts, adjust: te.Tensor | None = None) -> te.Tensor:
        """int32[N, OH, OW, ext] from ``mismatches(n, oh, ow, o)`` (the popcount over all taps of the padded input)
        and, at the border, ``weight_popcounts()`` -> int32[KH, KW, O] (popcount of each filter tap), of which the
        taps in the padding are taken back out: they were counted as mismatches against 0 words. ``adjust``: that
        table (``pad_adjust``) laid out at compile time (:func:`prepared_weights`) instead."""
        base = self.c * self.kh * self.kw
        if not self.needs_adjust:
            return te.compute((self.n, self.oh, self.ow, self.ext), lambda n, oh, ow, o: base - 2 * mismatches(
                n, oh, ow, o).astype("int32"), name="dot")
        if adjust is not None:
            return te.compute((self.n, self.oh, self.ow, self.ext), lambda n, oh, ow, o: base - 2 * mismatches(
                n, oh, ow, o).astype("int32") + adjust[self.cls_h(oh), self.cls_w(ow), self.oc(o)], name="dot")
        popw = weight_popcounts()
        ak = te.reduce_axis((0, self.kh), name="ak")
        aj = te.reduce_axis((0, self.kw), name="aj")

        def adjust(ch, cwl, o):
            ih = _pick(ch, self.reps_h) * self.sh - self.pt + ak * self.dh
            iw = _pick(cwl, self.reps_w) * self.sw - self.pl + aj * self.dw
            outside = tirx.any(ih < 0, ih >= self.h, iw < 0, iw >= self.w)
            return te.sum(tirx.Select(outside, 2 * popw[ak, aj, o] - self.c, 0), axis=[ak, aj])

        adj = te.compute((len(self.reps_h), len(self.reps_w), self.o), adjust, name="pad_adjust")
        return te.compute((self.n, self.oh, self.ow, self.ext), lambda n, oh, ow, o: base - 2 * mismatches(
            n, oh, ow, o).astype("int32") + adj[self.cls_h(oh), self.cls_w(ow), self.oc(o)], name="dot")


def _pad_word(pad_value: int, channels: int):
    """q -> the packed word of a padding tap: 0 for zero and -1 padding, the +1 bits of word q's channels for +1."""
    if pad_value != 1:
        return lambda q: tirx.const(0, "uint64")
    full, rest = divmod(channels, WORD_BITS)
    last = tirx.const((1 << rest) - 1 if rest else (1 << WORD_BITS) - 1, "uint64")
    if full == 0 or (full == 1 and rest == 0):
        return lambda q: last
    return lambda q: tirx.Select(q < full, tirx.const((1 << WORD_BITS) - 1, "uint64"), last)


def compute_dot(xp: te.Tensor, wp: te.Tensor, geo: Conv2dGeometry, out_extent: int | None = None,
                prepared: tuple | None = None) -> te.Tensor:
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

    ``prepared = (weights_t, pad_adjust or None)``: the weight stages laid out at compile time
    (:func:`prepared_weights`), read by the kernel as inputs; ``wp`` then only gives the filters' shape.
    """
    f = ConvFrame(xp, wp, geo, out_extent)
    if prepared is not None:
        wt, adjust = prepared
        xs, ow_, sh, sw, dh, dw = f.xs, f.ow, f.sh, f.sw, f.dh, f.dw
        rkh = te.reduce_axis((0, f.kh), name="rkh")
        rkw = te.reduce_axis((0, f.kw), name="rkw")
        rcw = te.reduce_axis((0, f.cw), name="rcw")
        pop = te.compute((f.n, f.oh * ow_, f.ext), lambda n, p, o: te.sum(tirx.popcount(
            xs[n, (p // ow_) * sh + rkh * dh, (p % ow_) * sw + rkw * dw, rcw] ^ wt[rkh, rkw, rcw, o]),
            axis=[rkh, rkw, rcw]), name="popcount")
        return f.dot(lambda n, oh, ow, o: pop[n, oh * ow_ + ow, o], None, adjust)
    xs, oc, ext, o_, ow_ = f.xs, f.oc, f.ext, f.o, f.ow
    kh_, kw_, cw_, sh, sw, dh, dw = f.kh, f.kw, f.cw, f.sh, f.sw, f.dh, f.dw
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

    pop = te.compute((f.n, f.oh * ow_, ext), mismatches, name="popcount")
    rc = te.reduce_axis((0, cw_), name="rc")

    def weight_popcounts():
        if VECTORIZE == "channels":  # read the transposed copy: contiguous in o
            return te.compute((kh_, kw_, o_), lambda i, j, o: te.sum(
                tirx.popcount(wt[i, j, rc, o]).astype("int32"), axis=rc), name="popw")
        return te.compute((kh_, kw_, o_), lambda i, j, o: te.sum(
            tirx.popcount(wp[o, i, j, rc]).astype("int32"), axis=rc), name="popw")

    return f.dot(lambda n, oh, ow, o: pop[n, oh * ow_ + ow, o], weight_popcounts)


def compute(xp, wp, scale, bias, geo: Conv2dGeometry, prepared: tuple | None = None,
            acc: te.Tensor | None = None) -> te.Tensor:
    """Float output, NCHW: ``dot * scale[o] + bias[o] (+ acc[n, o, oh, ow])`` as float32[N, O, OH, OW]."""
    return epilogue.conv_float_output(compute_dot(xp, wp, geo, prepared=prepared), scale, bias, acc, staged=True)


def compute_bits(xp, wp, direction, threshold, geo: Conv2dGeometry, prepared: tuple | None = None) -> te.Tensor:
    """Bit output, NHWC-packed: ``dot * direction[o] >= threshold[o]`` as uint64[N, OH, OW, ceil(O/64)]."""
    padded = num_words(int(wp.shape[0])) * WORD_BITS
    return epilogue.bits_output(compute_dot(xp, wp, geo, padded, prepared), direction, threshold,
                                name="binary_conv2d_bits")


def bits_extent(out_channels: int) -> int:
    """The output-channel extent of ``compute_bits``' dot: whole words."""
    return num_words(out_channels) * WORD_BITS


def prepared_weights(wp: np.ndarray, geo: Conv2dGeometry, in_hw: tuple, out_extent: int | None = None) -> tuple:
    """What :func:`compute_dot`'s weight stages compute on every call, done once at compile time (numpy):
    ``weights_t`` uint64[KH, KW, CW, ext] (the filters with output channels innermost; channels past O repeat the
    last filter) and ``pad_adjust`` int32[row classes, column classes, O] (the zero-padding correction per border
    class: ``sum over the taps in the padding of 2 * popcount(w tap) - C``), or None when no tap is ever in zero
    padding. The kernel reading them (``compute_dot(..., prepared=...)``) equals the one computing them."""
    wp = np.ascontiguousarray(wp, dtype=np.uint64)
    o, kh, kw, cw = wp.shape
    h, w = (int(v) for v in in_hw)
    f = ConvFrame(te.placeholder((1, h, w, cw), "uint64"), te.placeholder(wp.shape, "uint64"), geo, out_extent)
    wt = np.ascontiguousarray(np.transpose(wp[np.minimum(np.arange(f.ext), o - 1)], (1, 2, 3, 0)))
    if not f.needs_adjust:
        return wt, None
    popw = np.unpackbits(wp.view(np.uint8), axis=-1).reshape(o, kh, kw, -1).sum(axis=-1).astype(np.int64)
    outside = (~f.taps_inside()).astype(np.int64)
    return wt, np.einsum("abij,oij->abo", outside, 2 * popw - f.c).astype(np.int32)


def reference_dot(x_pm1: np.ndarray, w_pm1: np.ndarray, geo: Conv2dGeometry) -> np.ndarray:
    """±1 float NCHW input and OIHW weights -> exact int64 conv padded with ``geo.pad_value``, NCHW (numpy
    reference)."""
    x = np.asarray(x_pm1, np.int64)
    w = np.asarray(w_pm1, np.int64)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    pt, pl, pb, pr = geo.padding
    (sh, sw), (dh, dw) = geo.strides, geo.dilation
    xpad = np.full((n, c, h + pt + pb, wd + pl + pr), geo.pad_value, np.int64)
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
