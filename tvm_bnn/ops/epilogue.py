"""Output transforms shared by the binary layers.

A binary layer's exact integer ``dot[..., o, ...]`` leaves the kernel in one of two forms:

* float: ``dot * scale[o] + bias[o]`` (float32), the fused scale / bias / BatchNorm of the layer; a conv's may add
  a float tensor of its output's shape (``+ acc``: a residual, or another kernel's output), rounded as the separate
  ``add`` it replaces (passes/fuse_residual.py);
* bits: ``dot * direction[o] >= threshold[o]`` packed along ``o`` into 64-bit words, the whole epilogue folded
  into one integer comparison per channel when the next layer binarizes the result (see passes/fuse_threshold.py).
"""
import numpy as np
from tvm import te, tirx

from . import WORD_BITS, num_words
from .bitpack import bit_if, pack_bits_last_axis


def float_output(dot: te.Tensor, scale: te.Tensor, bias: te.Tensor, channel_axis: int, name: str) -> te.Tensor:
    def f(*idx):
        o = idx[channel_axis]
        return dot(*idx).astype("float32") * scale[o] + bias[o]

    return te.compute(dot.shape, f, name=name)


def conv_float_output(dot: te.Tensor, scale, bias, acc: te.Tensor | None = None, name: str = "binary_conv2d",
                      staged: bool = False):
    """A conv's ``dot`` int[N, OH, OW, O] -> float32[N, O, OH, OW] (NCHW): ``dot * scale[o] + bias[o]``, plus
    ``acc[n, o, oh, ow]`` when given (the float sum of the separate ``add``: the affine part rounded to float32
    first, then the sum rounded once). ``staged``: the sum is a block of its own (``name``) reading the affine
    block (``name + "_affine"``), for a schedule that computes the affine part along channels and the sum along
    pixels (x86: schedules/x86.py); the same two roundings."""
    n_, oh_, ow_, o_ = (int(d) for d in dot.shape)
    shape = (n_, o_, oh_, ow_)

    def affine(n, o, oh, ow):
        return dot[n, oh, ow, o].astype("float32") * scale[o] + bias[o]

    if acc is None:
        return te.compute(shape, affine, name=name)
    if staged:
        first = te.compute(shape, affine, name=name + "_affine")
        return te.compute(shape, lambda n, o, oh, ow: first[n, o, oh, ow] + acc[n, o, oh, ow], name=name)
    return te.compute(shape, lambda n, o, oh, ow: affine(n, o, oh, ow) + acc[n, o, oh, ow], name=name)


def bits_output(dot_last_channel: te.Tensor, direction: te.Tensor, threshold: te.Tensor, name: str) -> te.Tensor:
    """dot int32[..., O'] -> uint64[..., ceil(O/64)] with bit o = (dot[..., o] * direction[o] >= threshold[o]).

    ``O = len(direction)``; ``dot`` may be padded past ``O`` (``O' >= O``, e.g. to whole words): those channels are
    masked off. Word ``ow`` gathers bits ``b`` of channels ``ow*64 + b``; the 64 bits are disjoint, so a sum packs them.
    """
    *outer, o_pad = (int(d) for d in dot_last_channel.shape)
    o_ = int(direction.shape[0])
    words = num_words(o_)
    b = te.reduce_axis((0, WORD_BITS), name="b")

    def word(*idx):
        *pre, ow = idx
        o = ow * WORD_BITS + b
        if o_pad >= words * WORD_BITS:  # every read in bounds: clamp the parameter loads, mask the bit
            oc = o if o_pad == o_ else tirx.min(o, o_ - 1)
            on = dot_last_channel(*pre, o) * direction[oc] >= threshold[oc]
            if o_ != words * WORD_BITS:
                on = tirx.all(o < o_, on)
        else:
            on = tirx.if_then_else(o < o_, dot_last_channel(*pre, o) * direction[o] >= threshold[o],
                                   tirx.const(False))
        return te.sum(bit_if(on, b), axis=b)

    return te.compute(tuple(outer) + (words,), word, name=name)


def float_reference(dot: np.ndarray, scale, bias, channel_axis: int) -> np.ndarray:
    shape = [1] * dot.ndim
    shape[channel_axis] = -1
    return (dot.astype(np.float32) * np.asarray(scale, np.float32).reshape(shape)
            + np.asarray(bias, np.float32).reshape(shape)).astype(np.float32)


def conv_float_reference(dot_nhwc: np.ndarray, scale, bias, acc: np.ndarray | None = None) -> np.ndarray:
    """numpy reference of :func:`conv_float_output`."""
    out = float_reference(dot_nhwc.transpose(0, 3, 1, 2), scale, bias, 1)
    return out if acc is None else (out + np.asarray(acc, np.float32)).astype(np.float32)


def bits_reference(dot_last_channel: np.ndarray, direction, threshold) -> np.ndarray:
    d = np.asarray(direction, np.int64)
    t = np.asarray(threshold, np.int64)
    return pack_bits_last_axis(dot_last_channel.astype(np.int64) * d >= t)
