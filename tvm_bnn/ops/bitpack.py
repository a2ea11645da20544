"""bitpack: float tensor -> bits packed along channels.

A bit is 1 when the value is ``>= 0`` or, with per-channel ``scale`` and ``threshold`` (float32[C], see
passes/binary_values.py), when ``x * scale[c] >= threshold[c]``: ``scale`` is +1 (the bit is ``x >= t``), -1 (the bit
is ``x <= -t``: a decreasing binarizer) or 0 (a constant bit: ``0 >= t``). Multiplying by ±1 or 0 is exact, so the
test is exactly the binarizer's, however its threshold was written (``x > t`` is ``x >= nextafter(t, inf)``).
"""
import numpy as np
from tvm import te, tirx

from . import WORD_BITS, num_words


def bit_if(cond, bit):
    """The word with only ``bit`` set when ``cond`` holds, else 0 (bits are disjoint, so a sum packs them)."""
    return tirx.Select(cond, tirx.const(1, "uint64") << bit.astype("uint64"), tirx.const(0, "uint64"))


def is_set(value, dtype, c, scale=None, threshold=None):
    """The packing test of ``value`` (an element of channel ``c``, of type ``dtype``)."""
    if scale is None:
        return value >= tirx.const(0, dtype)
    return value * scale[c] >= threshold[c]


def compute_nchw(x: te.Tensor, scale: te.Tensor | None = None, threshold: te.Tensor | None = None) -> te.Tensor:
    """float[N, C, H, W] -> uint64[N, H, W, ceil(C/64)]."""
    n_, c_, h_, w_ = (int(d) for d in x.shape)
    b = te.reduce_axis((0, WORD_BITS), name="b")

    def word(n, h, w, cw):
        c = cw * WORD_BITS + b
        on = tirx.if_then_else(c < c_, is_set(x[n, c, h, w], x.dtype, c, scale, threshold), tirx.const(False))
        return te.sum(bit_if(on, b), axis=b)

    return te.compute((n_, h_, w_, num_words(c_)), word, name="bitpack")


def plane_test(value, scale, threshold, p, c):
    """Plane ``p``'s packing test of ``value`` (channel ``c``): ``value * scale[p, c] >= threshold[p, c]``;
    ``scale`` None stands for all ones (``value * 1`` is ``value`` exactly, so the test is the same)."""
    return (value if scale is None else value * scale[p, c]) >= threshold[p, c]


def compute_planes(x: te.Tensor, scale: te.Tensor | None, threshold: te.Tensor) -> te.Tensor:
    """float[N, C, H, W] and P packing tests (``scale``, ``threshold``: float32[P, C]; ``scale`` None: all ones) ->
    uint64[N, H, W, ceil(C/64), P]: the bit planes of a few-level activation packed in one pass over ``x`` (plane p
    is ``compute_nchw(x, scale[p], threshold[p])``)."""
    n_, c_, h_, w_ = (int(d) for d in x.shape)
    p_ = int(threshold.shape[0])
    b = te.reduce_axis((0, WORD_BITS), name="b")

    def word(n, h, w, cw, p):
        c = cw * WORD_BITS + b
        on = tirx.if_then_else(c < c_, plane_test(x[n, c, h, w], scale, threshold, p, c), tirx.const(False))
        return te.sum(bit_if(on, b), axis=b)

    return te.compute((n_, h_, w_, num_words(c_), p_), word, name="bitpack_planes")


def compute_rows(x: te.Tensor, scale: te.Tensor | None = None, threshold: te.Tensor | None = None) -> te.Tensor:
    """float[M, K] -> uint64[M, ceil(K/64)]."""
    m_, k_ = (int(d) for d in x.shape)
    b = te.reduce_axis((0, WORD_BITS), name="b")

    def word(m, kw):
        k = kw * WORD_BITS + b
        on = tirx.if_then_else(k < k_, is_set(x[m, k], x.dtype, k, scale, threshold), tirx.const(False))
        return te.sum(bit_if(on, b), axis=b)

    return te.compute((m_, num_words(k_)), word, name="bitpack")


def pack_bits_last_axis(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean array along its last axis into little-endian uint64 words (numpy reference)."""
    bits = np.asarray(bits, dtype=bool)
    k = bits.shape[-1]
    padded = np.zeros(bits.shape[:-1] + (num_words(k) * WORD_BITS,), dtype=bool)
    padded[..., :k] = bits
    as_bytes = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(as_bytes).view("<u8")


def reference_bits(x: np.ndarray, channel_axis: int, scale=None, threshold=None) -> np.ndarray:
    """The packing test of every element of ``x`` (numpy reference)."""
    x = np.asarray(x)
    if scale is None:
        return x >= 0
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    s = np.asarray(scale, np.float32).reshape(shape)
    return (x * s).astype(np.float32) >= np.asarray(threshold, np.float32).reshape(shape)


def reference_nchw(x: np.ndarray, scale=None, threshold=None) -> np.ndarray:
    return pack_bits_last_axis(np.transpose(reference_bits(x, 1, scale, threshold), (0, 2, 3, 1)))


def reference_rows(x: np.ndarray, scale=None, threshold=None) -> np.ndarray:
    return pack_bits_last_axis(reference_bits(x, 1, scale, threshold))


def unpack_reference(words: np.ndarray, bits: int) -> np.ndarray:
    """uint64[..., W] -> ±1 float32[..., bits] (numpy reference)."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8)
    flat = np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :bits]
    return flat.astype(np.float32) * 2 - 1


def reference_planes(x: np.ndarray, scale, threshold) -> np.ndarray:
    """``scale`` None: all ones."""
    scale = np.ones_like(threshold) if scale is None else scale
    return np.stack([reference_nchw(x, s, t) for s, t in zip(scale, threshold)], axis=-1)
