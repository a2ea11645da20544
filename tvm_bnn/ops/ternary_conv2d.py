"""ternary_conv2d: conv2d of channel-packed ±1 activations with ternary weights {-1, 0, +1}, one popcount per word.

A ternary filter is kept as two bit planes: ``sign`` (bit = w > 0) and ``mask`` (bit = w != 0), packed like
binary_conv2d's filters and stacked: uint64[2, O, KH, KW, CW]. A tap contributes ``sum_c m * x * s``, which is
``popcount(m) - 2 * popcount((x ^ s) & m)``: one popcount per (input word, filter word), where the same layer as two
±1 weight planes (ternary = (w1 + w2) / 2, passes/weights.weight_planes) takes two.

``dot = corr[row class, column class, o] - 2 * popcount`` over the zero-padded input (``ConvFrame``): ``corr`` holds,
per border class of output pixels, the nonzero weights of the taps inside the image plus twice the mismatches a
padding word (0) was counted for on the others (``2 * popcount(s & m)``): the padded taps contribute exactly 0, as
the float conv's zeros do. Constant-bit padding (``pad_value`` +1 / -1) is an ordinary ±1 input: one class, every
tap counted. ``corr`` depends on the weights only and is computed at compile time (:func:`correction_table`).

**Activation planes** (``shifts``): a few-level activation is a sum of ±1 planes, ``sum_p 2^shift_p * plane_p``
(thermometer planes: all shifts 0; the binary code: 0, 1, 2). Given the planes stacked, uint64[P, N, H, W, CW], the
kernel counts ``sum_p popcount((x_p ^ s) & m) << shift_p`` in one pass, each sign and mask word loaded once for all
planes, and returns ``sum_p 2^shift_p * dot_p``. The stacked input is padded with zero words; what a padded tap of
plane p is (0, or its constant bit +1 / -1: ``pad_bits``) is in ``corr``.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from tvm import te, tirx

from . import WORD_BITS, epilogue
from .binary_conv2d import Conv2dGeometry, ConvFrame, pack_weights as pack_binary


def pack_weights(w: np.ndarray) -> np.ndarray:
    """OIHW weights in {-a, 0, +a} (any a > 0 per channel) -> uint64[2, O, KH, KW, CW]: sign plane, mask plane."""
    w = np.asarray(w)
    return np.stack([pack_binary(np.where(w > 0, 1.0, -1.0)), pack_binary(np.where(w != 0, 1.0, -1.0))])


def from_plane_pair(w1: np.ndarray, w2: np.ndarray, channels: int) -> np.ndarray:
    """Two packed ±1 filter planes (binary_conv2d.pack_weights) -> the packed ternary filter of ``(w1 + w2) / 2``:
    nonzero where the planes agree, with their sign. The mask keeps only the ``channels`` real bits of each word."""
    w1, w2 = (np.ascontiguousarray(w, dtype=np.uint64) for w in (w1, w2))
    valid = np.zeros(w1.shape[-1], np.uint64)
    for q in range(w1.shape[-1]):
        bits = min(WORD_BITS, channels - q * WORD_BITS)
        valid[q] = np.uint64((1 << bits) - 1) if bits < WORD_BITS else np.uint64(2 ** 64 - 1)
    mask = ~(w1 ^ w2) & valid
    return np.stack([w1 & w2 & mask, mask])


def _popcounts(words: np.ndarray) -> np.ndarray:
    """Bit count of each uint64, summed over the last axis (the words of a tap)."""
    return np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=-1).reshape(
        words.shape[:-1] + (-1,)).sum(axis=-1).astype(np.int64)


# filter layouts: "OHWI" uint64[2, O, KH, KW, CW] (as packed; the C kernels), "HWIO" uint64[2, KH, KW, CW, O] (output
# channels innermost: x86's kernel vectorises over them, as binary_conv2d's transposed ``weights_t``)
LAYOUTS = ("OHWI", "HWIO")


def filter_shape(wp, layout: str = "OHWI") -> tuple:
    """(O, KH, KW, CW) of stacked ternary filters in ``layout``."""
    dims = tuple(int(d) for d in wp.shape[1:])
    if layout not in LAYOUTS:
        raise ValueError(f"ternary filter layout {layout!r}: one of {LAYOUTS}")
    return dims if layout == "OHWI" else (dims[3],) + dims[:3]


def to_layout(wp: np.ndarray, layout: str) -> np.ndarray:
    """Packed OHWI filters (:func:`pack_weights`) in ``layout``."""
    filter_shape(wp, layout)
    return wp if layout == "OHWI" else np.ascontiguousarray(np.transpose(wp, (0, 2, 3, 4, 1)))


def frame(xp: te.Tensor, wp, geo: Conv2dGeometry, layout: str = "OHWI") -> ConvFrame:
    """The ConvFrame of input ``xp`` and stacked ternary filters ``wp`` (of which it reads the shape only)."""
    return ConvFrame(xp, te.placeholder(filter_shape(wp, layout), "uint64", name="filters"), geo)


def correction_table(wp: np.ndarray, geo: Conv2dGeometry, in_hw: tuple, pad_bit: int | None = None) -> np.ndarray:
    """int32[row classes, column classes, O]: ``corr`` of the module docstring, for an input of ``in_hw``.
    ``pad_bit``: for a plane of a stacked kernel (padded with zero words), the value its padded taps take (0, +1 or
    -1); None: a single input, padded as ``geo.pad_value`` says."""
    wp = np.ascontiguousarray(wp, dtype=np.uint64)
    h, w = (int(v) for v in in_hw)
    zero_words = geo if pad_bit is None else replace(geo, pad_value=0)
    f = frame(te.placeholder((1, h, w, wp.shape[-1]), "uint64"), wp, zero_words)
    nnz = _popcounts(wp[1])  # [O, KH, KW]
    counted = _popcounts(wp[0] & wp[1])  # mismatches of a tap against a 0 word: its positive weights
    if not f.needs_adjust:
        return nnz.sum(axis=(1, 2)).astype(np.int32)[None, None]
    # a padded tap: the kernel's count of it taken back out, what the tap is added (b * (positive - negative))
    padded = 2 * counted + int(pad_bit or 0) * (2 * counted - nnz)
    inside = f.taps_inside().astype(np.int64)
    return (np.einsum("abij,oij->abo", inside, nnz) + np.einsum("abij,oij->abo", 1 - inside, padded)).astype(np.int32)


def planes_correction(wp: np.ndarray, geo: Conv2dGeometry, in_hw: tuple, shifts, pad_bits) -> np.ndarray:
    """``corr`` of a stacked kernel: ``sum_p 2^shift_p * corr_p`` (each plane's padding value ``pad_bits[p]``)."""
    return np.sum([np.int64(1 << int(k)) * correction_table(wp, geo, in_hw, b).astype(np.int64)
                   for k, b in zip(shifts, pad_bits)], axis=0).astype(np.int32)


def dot_from_counts(f: ConvFrame, pop, corr: te.Tensor) -> te.Tensor:
    """int32[N, OH, OW, O]: ``corr[class] - 2 * pop(n, oh, ow, o)`` (the row and column classes when padding is
    corrected, else the one entry)."""
    if f.needs_adjust:
        return te.compute((f.n, f.oh, f.ow, f.o), lambda n, oh, ow, o: corr[f.cls_h(oh), f.cls_w(ow), o] - 2 * pop(
            n, oh, ow, o).astype("int32"), name="dot")
    return te.compute((f.n, f.oh, f.ow, f.o), lambda n, oh, ow, o: corr[0, 0, o] - 2 * pop(
        n, oh, ow, o).astype("int32"), name="dot")


def stacked_input(xp: te.Tensor, wp, geo: Conv2dGeometry, layout: str = "OHWI"):
    """(ConvFrame, xs) of the planes ``xp[p]`` stacked, uint64[P, N, H, W, CW]: the frame of one plane and the
    planes padded with zero words, uint64[P, N, HP, WP, CW] (``corr`` says what the padding is)."""
    f = frame(te.placeholder(tuple(int(d) for d in xp.shape[1:]), "uint64"), wp, replace(geo, pad_value=0), layout)
    if f.xs is f.xp:
        return f, xp
    hp, wpd = (int(d) for d in f.xs.shape[1:3])
    pt, pl, h_, w_ = f.pt, f.pl, f.h, f.w
    xs = te.compute((int(xp.shape[0]), f.n, hp, wpd, f.cw), lambda p, n, i, j, q: tirx.if_then_else(
        tirx.all(i >= pt, i < pt + h_, j >= pl, j < pl + w_), xp[p, n, i - pt, j - pl, q],
        tirx.const(0, "uint64")), name="pad")
    return f, xs


def stacked_frame(xp: te.Tensor, wp, geo: Conv2dGeometry, layout: str = "OHWI", shifts=None):
    """(ConvFrame, plane_words): the frame of one input (of the planes ``xp[p]`` when ``shifts`` is given:
    :func:`stacked_input`) and ``plane_words(n, ih, iw, q)`` -> the padded input's words at that position, one per
    plane (one for a single input)."""
    if shifts is None:
        f = frame(xp, wp, geo, layout)
        return f, lambda n, ih, iw, q: [f.xs[n, ih, iw, q]]
    f, xs = stacked_input(xp, wp, geo, layout)
    return f, lambda n, ih, iw, q: [xs[p, n, ih, iw, q] for p in range(len(shifts))]


def weighted_sum(values, shifts):
    """``sum_p values[p] << shifts[p]`` (``values[0]`` for a single input)."""
    if shifts is None:
        return values[0]
    out = None
    for v, k in zip(values, shifts):
        term = v if int(k) == 0 else v << tirx.const(int(k), "uint64")  # popcounts of uint64 words
        out = term if out is None else out + term
    return out


def compute_dot(xp: te.Tensor, wp: te.Tensor, corr: te.Tensor, geo: Conv2dGeometry,
                layout: str = "OHWI", shifts=None) -> te.Tensor:
    """uint64[N,H,W,CW] (or the planes, uint64[P,N,H,W,CW] with ``shifts``) x stacked filters (``layout``) (+ corr)
    -> exact int32 dot, NHWC: int32[N, OH, OW, O]. As binary_conv2d's: over a flattened output-pixel axis (tiles
    need not divide OW), the reduction over (KH, KW, CW) words, accumulated in uint64 lanes; the planes of a word
    position are counted in one step (each filter word loaded once)."""
    f, words = stacked_frame(xp, wp, geo, layout, shifts)
    ow_, sh, sw, dh, dw = f.ow, f.sh, f.sw, f.dh, f.dw
    rkh = te.reduce_axis((0, f.kh), name="rkh")
    rkw = te.reduce_axis((0, f.kw), name="rkw")
    rcw = te.reduce_axis((0, f.cw), name="rcw")

    def filt(plane, o):
        return wp[plane, o, rkh, rkw, rcw] if layout == "OHWI" else wp[plane, rkh, rkw, rcw, o]

    def count(n, p, o):
        sign, mask = filt(0, o), filt(1, o)
        xw = words(n, (p // ow_) * sh + rkh * dh, (p % ow_) * sw + rkw * dw, rcw)
        return weighted_sum([tirx.popcount((x ^ sign) & mask) for x in xw], shifts)

    pop = te.compute((f.n, f.oh * ow_, f.o), lambda n, p, o: te.sum(count(n, p, o), axis=[rkh, rkw, rcw]),
                     name="popcount")
    return dot_from_counts(f, lambda n, oh, ow, o: pop[n, oh * ow_ + ow, o], corr)


def compute(xp, wp, scale, bias, corr, geo: Conv2dGeometry, layout: str = "OHWI", shifts=None,
            acc: te.Tensor | None = None) -> te.Tensor:
    """Float output, NCHW: ``dot * scale[o] + bias[o] (+ acc)`` as float32[N, O, OH, OW]."""
    return epilogue.conv_float_output(compute_dot(xp, wp, corr, geo, layout, shifts), scale, bias, acc,
                                      name="ternary_conv2d", staged=True)


def reference_dot(x_pm1: np.ndarray, w_ternary: np.ndarray, geo: Conv2dGeometry) -> np.ndarray:
    """±1 float NCHW input and OIHW weights in {-1, 0, 1} -> exact int64 conv padded with ``geo.pad_value``, NCHW
    (numpy reference: the plain conv, the zeros of the weights and of zero padding multiplying as zeros)."""
    from .binary_conv2d import reference_dot as conv_reference

    return conv_reference(x_pm1, w_ternary, geo)
