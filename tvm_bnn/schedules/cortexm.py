"""The C bundle's kernels for an M-profile core (Cortex-M: no popcount instruction, 32-bit ALU, ~13 registers).

``schedule_kernel(func)`` replaces the plain memory-lean schedule (``schedules.lean.inline_intermediates``, which it
still applies to every other kernel) for our binary conv2d / dense / bitpack kernels (found by their ``tvm_bnn.op`` +
``tvm_bnn.params`` attributes): it rebuilds the PrimFunc from an M-profile form of the same computation (same
parameters in the same order, same outputs bit for bit) and schedules that:

* **Byte-count accumulation.** The generic form runs a whole SWAR popcount per 64-bit word (nibble counts, byte
  sums, a multiply) and adds it to a uint64 accumulator. Here a word only contributes its *per-byte* bit counts
  (``tvm_bnn_popcount64_bytes``: the two 32-bit halves' nibble counts added, then folded to 4 bytes <= 16 each); the
  byte vectors of up to 15 words (31 halves) are summed as plain uint32 additions, carry-free, and each such group
  is reduced to an integer once (``tvm_bnn_bytes_total``); with the DSP extension (M4, M7, M33, M55) USADA8 sums
  each word's 4 bytes straight into the integer instead (the same one instruction per word, no final reduction:
  3-4 % fewer instructions per conv). A group is every word of one output (9 for a 3x3 kernel with <= 64 input
  channels), else one kernel row, else a divisor of it.
* **Halves in threes.** For 64-bit words (C > 32) the nibble counts of three 32-bit halves (<= 12 per nibble) are
  added before one fold to bytes, across word boundaries, where each word's two halves took a fold of their own
  (the output's words, or a kernel row's, unrolled: constant indices). 1.3-4.6 % fewer instructions per conv.
* **32-bit halves.** When the input channels fit into the low half of the only packed word (C <= 32), only that half
  is loaded and counted: the upper halves hold no channel (bitpack, the bits epilogues and the packed weights leave
  those bits 0). The nibble counts of up to 3 such halves (a kernel row) are added before the byte fold.
* **Register blocking.** ``MAX_BLOCK`` output channels (a divisor of the channel count) are computed together, the
  words of the receptive field outermost and the channels of the block innermost, fully unrolled: each input word is
  loaded once per block and the accumulators (uint32) are local arrays with constant indices, i.e. registers.
  Their buffers (``_REGISTER_BUFFERS``) stay in their nested blocks; every other intermediate becomes a scratch
  argument in the arena exactly as with ``schedules.lean`` (the arena does not grow).
* **32-bit output words.** A bits output (and bitpack) gathers each 64-bit word as two uint32 halves in registers,
  bit by bit with a one-instruction 32-bit shift instead of a 64-bit shift sequence, and stores the word once.
* **Address math and tests out of the hot loop.** The zero-padded input (``pad``) stays materialised, so the
  unrolled receptive field is base + constant offsets with no bounds test; the padding correction (``pad_adjust``,
  a function of the weights) loops over channels innermost with its border-class and tap loops unrolled, so each
  tap's inside/outside test is a compile-time constant and the inside taps produce no code.

* **Helium** (``mve``, Cortex-M55): a block of 4 channels is one ``counts`` stage whose loop nest becomes a call of
  the vector helper ``tvm_bnn_popcount4`` (schedules/cortexm_mve.py).
* **Stacked activation planes** (a ternary kernel with ``shifts``): the planes are one more spatial axis of the
  count, inside the block (whose channels are divided by the plane count: channels x planes accumulators).
* **The float conv** (the stem, :func:`schedule_float_conv`): a register block of output channels x pixels with
  VMLA.F32; with constant weights they are laid out for the block at compile time and the block is one call of an
  FPU helper (VLDM of rows and weight groups: schedules/cortexm_vfp.py).

Measured on the emulated Cortex-M4 (``bench/cortexm.py --kernels``): 2-4x fewer instructions per binary kernel;
the price is code flash (unrolled blocks: about +3 KB per conv kernel).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from . import cortexm_mve, cortexm_vfp, lean
from ..ops import WORD_BITS, epilogue, num_words
from ..ops import bitpack as ops_bitpack
from ..ops import ternary_conv2d
from ..ops.binary_conv2d import Conv2dGeometry, ConvFrame

MAX_BLOCK = 4  # output channels per register block (measured on the M4: 4 beats 2 and 1 by 2-4 %)
BYTE_GROUP_64 = 15  # 64-bit words whose byte counts (<= 16 each) can be summed in one uint32 without a carry
BYTE_GROUP_32 = 31  # 32-bit halves (byte counts <= 8)
MAX_ADJUST_UNROLL = 100  # (border class, tap) pairs of the padding correction unrolled into constant code
UNROLL_BITPACK = False  # bitpack: straight-line code measured 1 % faster on the digits model for +2.3 KB of flash
UNROLL_WORDS = 16  # unroll a group's word loop up to this many words

# the accumulators of a register block: left in their nested blocks, where the C codegen declares them as small local
# arrays (indexed by constants after unrolling: the C compiler keeps them in registers)
_REGISTER_BUFFERS = ("nibbles", "bytes", "popcount", "counts", "binary_conv2d_bits_halves", "binary_dense_bits_halves",
                     "bitpack_halves")

_CONV_OPS = ("binary_conv2d", "binary_conv2d_bits")
_TERNARY_OPS = ("ternary_conv2d",)
_NCHW_OUT_OPS = ("binary_conv2d",) + _TERNARY_OPS  # float NCHW outputs: the channel block under the output pixel
_DENSE_OPS = ("binary_dense", "binary_dense_bits")
_BITPACK_OPS = ("bitpack_nchw", "bitpack_rows", "bitpack_planes")


def _extern(name, *args):
    return tirx.call_pure_extern("uint32", name, *args)


# a byte group's sum: acc = tvm_bnn_bytes_add(acc, byte counts of a word), read by tvm_bnn_bytes_total (USADA8 into
# the count itself with the DSP extension, a carry-free byte-vector add elsewhere: targets/c_codegen.py)
_byte_sum = te.comm_reducer(lambda acc, b: _extern("tvm_bnn_bytes_add", acc, b),
                            lambda dtype: tirx.const(0, dtype), name="byte_sum")


def _bytes_of(word, low_half: bool):
    if low_half:
        return _extern("tvm_bnn_popcount32_bytes", tirx.Cast("uint32", word))
    return _extern("tvm_bnn_popcount64_bytes", word)


def _halves_in_threes(word, axes, low: bool):
    """For 64-bit words: ``f(idx, lead, g)``, the nibble counts (<= 12 each) of the 32-bit halves 3g, 3g+1, 3g+2 of
    the words under the leading reduction indices ``lead`` (none: all the output's words, in reduction order; one:
    a kernel row's), summed; None for 32-bit halves (they have their own nibble stage)."""
    if low:
        return None

    def half(idx, lead, j):  # constant indices once the group is unrolled
        w, rest = j // 2, []
        for k in range(len(axes) - 1, len(lead) - 1, -1):
            rest.insert(0, w % axes[k])
            w = w // axes[k]
        return tirx.Cast("uint32", word(*idx, *lead, *rest) >> tirx.Cast("uint64", (j % 2) * 32))

    def nibbles(idx, lead, g):
        r3 = te.reduce_axis((0, 3), name="r3")
        return te.sum(_extern("tvm_bnn_nibbles", half(idx, lead, g * 3 + r3)), axis=r3)

    return nibbles


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _popcount_stages(shape, word, axes, low: bool, mve: bool = False):
    """The mismatch count ``sum over the reduction axes of popcount(word(*idx, *red))`` as TE stages, for an output
    of ``shape``; ``axes`` are the reduction extents, outermost first (conv: KH, KW, CW; dense: KW).

    * ``nibbles`` (only for 32-bit halves, the innermost axis <= 3 words and the only non-unit one inside it): the
      nibble counts of up to 3 halves summed (<= 12 per nibble), folded to bytes once;
    * ``bytes``: byte counts summed over as many words as fit (all of them when possible, else the innermost axes or
      a divisor of them), reduced to an integer with ``tvm_bnn_bytes_total`` (accumulated with ``tvm_bnn_bytes_add``:
      USADA8 straight into the count where the core has the DSP extension);
    * ``popcount``: the sum of those integers when there is more than one byte group.
    With ``mve`` (Helium: schedules/cortexm_mve.py counts a block of 4 outputs as one vector, in its own byte
    groups) one stage ``counts`` sums the plain popcounts of all words.
    Returns ``pop(*idx) -> uint32 expr``."""
    if mve:
        rs = [te.reduce_axis((0, a), name=f"r{k}") for k, a in enumerate(axes)]

        def count(w):
            if low:
                return _extern("tvm_bnn_popcount32", tirx.Cast("uint32", w))
            return tirx.Cast("uint32", tirx.call_pure_extern("uint64", "tvm_bnn_popcount64", w))

        counts = te.compute(tuple(shape), lambda *i: te.sum(count(word(*i, *rs)), axis=rs), name="counts")
        return lambda *i: counts[i]
    per_word = 8 if low else 16
    limit = 255 // per_word
    total = int(np.prod(axes))
    inner = axes[-1] if len(axes) == 1 else int(np.prod(axes[1:]))  # words per outer index (per kernel row)
    outer = axes[0] if len(axes) > 1 else 1

    if low and len(axes) == 3 and axes[2] == 1 and axes[1] <= 3 and axes[0] * axes[1] <= limit:
        # nibble stage over the kernel row, byte stage over the rows
        rkw = te.reduce_axis((0, axes[1]), name="rkw")
        nib = te.compute(tuple(shape) + (axes[0],), lambda *i: te.sum(
            _extern("tvm_bnn_nibbles", tirx.Cast("uint32", word(*i[:-1], i[-1], rkw, 0))), axis=rkw), name="nibbles")
        rkh = te.reduce_axis((0, axes[0]), name="rkh")
        byt = te.compute(tuple(shape), lambda *i: _byte_sum(_extern("tvm_bnn_fold_nibbles", nib[i + (rkh,)]),
                                                            axis=rkh), name="bytes")
        return lambda *i: _extern("tvm_bnn_bytes_total", byt[i])
    halves_3 = _halves_in_threes(word, axes, low)
    if halves_3 is not None and (2 * total) % 3 == 0 and total <= UNROLL_WORDS and 2 * total // 3 <= 255 // 24:
        # every word of the output unrolled: their 32-bit halves' nibble counts summed 3 at a time (<= 12 per
        # nibble), folded to bytes once per 3 halves, where each word's two halves took a fold of their own
        groups = 2 * total // 3
        nib = te.compute(tuple(shape) + (groups,), lambda *i: halves_3(i[:-1], (), i[-1]), name="nibbles")
        rg = te.reduce_axis((0, groups), name="rg")
        byt = te.compute(tuple(shape), lambda *i: _byte_sum(_extern("tvm_bnn_fold_nibbles", nib[i + (rg,)]),
                                                            axis=rg), name="bytes")
        return lambda *i: _extern("tvm_bnn_bytes_total", byt[i])
    if halves_3 is not None and len(axes) == 3 and (2 * inner) % 3 == 0 and inner <= UNROLL_WORDS \
            and 2 * inner // 3 <= 255 // 24:
        # the same per kernel row (its words unrolled), a byte group per row
        groups = 2 * inner // 3
        nib = te.compute(tuple(shape) + (outer, groups), lambda *i: halves_3(i[:-2], (i[-2],), i[-1]),
                         name="nibbles")
        rg = te.reduce_axis((0, groups), name="rg")
        byt = te.compute(tuple(shape) + (outer,), lambda *i: _byte_sum(
            _extern("tvm_bnn_fold_nibbles", nib[i + (rg,)]), axis=rg), name="bytes")
        ro = te.reduce_axis((0, outer), name="ro")
        pop = te.compute(tuple(shape), lambda *i: te.sum(_extern("tvm_bnn_bytes_total", byt[i + (ro,)]), axis=ro),
                         name="popcount")
        return lambda *i: pop[i]
    if total <= limit:  # one byte group: every word of the output
        rs = [te.reduce_axis((0, a), name=f"r{k}") for k, a in enumerate(axes)]
        byt = te.compute(tuple(shape), lambda *i: _byte_sum(_bytes_of(word(*i, *rs), low), axis=rs), name="bytes")
        return lambda *i: _extern("tvm_bnn_bytes_total", byt[i])
    group = _largest_divisor(inner, limit)
    rj = te.reduce_axis((0, group), name="rj")

    def inner_idx(g):
        j = g * group + rj
        if len(axes) == 1:
            return [j]
        return [j, 0] if axes[2] == 1 else [j // axes[2], j % axes[2]]

    if len(axes) == 1:
        byt = te.compute(tuple(shape) + (inner // group,), lambda *i: _byte_sum(
            _bytes_of(word(*i[:-1], *inner_idx(i[-1])), low), axis=rj), name="bytes")
        rg = te.reduce_axis((0, inner // group), name="rg")
        pop = te.compute(tuple(shape), lambda *i: te.sum(_extern("tvm_bnn_bytes_total", byt[i + (rg,)]), axis=rg),
                         name="popcount")
    else:
        byt = te.compute(tuple(shape) + (outer, inner // group), lambda *i: _byte_sum(
            _bytes_of(word(*i[:-2], i[-2], *inner_idx(i[-1])), low), axis=rj), name="bytes")
        ro = te.reduce_axis((0, outer), name="ro")
        rg = te.reduce_axis((0, inner // group), name="rg")
        pop = te.compute(tuple(shape), lambda *i: te.sum(_extern("tvm_bnn_bytes_total", byt[i + (ro, rg)]),
                                                         axis=[ro, rg]), name="popcount")
    return lambda *i: pop[i]


# ----------------------------------------------------------------------------------------------------------------
# computes (same results as ops.binary_conv2d / ops.binary_dense, M-profile form of the popcount)


def ternary_dot(xp: te.Tensor, wp: te.Tensor, corr: te.Tensor, geo: Conv2dGeometry, mve: bool = False,
                shifts=None) -> te.Tensor:
    """uint64[N,H,W,CW] (or the planes stacked, uint64[P,N,H,W,CW], with ``shifts``) x uint64[2,O,KH,KW,CW] ->
    int32[N, OH, OW, O] (NHWC), as ``ternary_conv2d.compute_dot``: the words are ``(x ^ sign) & mask``, counted as
    the binary conv counts ``x ^ w``; stacked planes are one more spatial axis of the count, inside the channel
    block (each filter word loaded once for every plane), weighted ``<< shift`` in the dot."""
    if shifts is None:
        f = ternary_conv2d.frame(xp, wp, geo)
        xs = f.xs
        planes = ()
    else:
        f, stacked = ternary_conv2d.stacked_input(xp, wp, geo)
        planes = (len(shifts),)
    sh, sw, dh, dw = f.sh, f.sw, f.dh, f.dw

    def word(n, oh, ow, o, *rest):
        *p, kh, kw, cw = rest
        x = stacked[p[0], n, oh * sh + kh * dh, ow * sw + kw * dw, cw] if p else \
            xs[n, oh * sh + kh * dh, ow * sw + kw * dw, cw]
        return (x ^ wp[0, o, kh, kw, cw]) & wp[1, o, kh, kw, cw]

    pop = _popcount_stages((f.n, f.oh, f.ow, f.o) + planes, word, (f.kh, f.kw, f.cw), f.cw == 1 and f.c <= 32,
                           mve and not planes)
    if not planes:
        return ternary_conv2d.dot_from_counts(f, pop, corr)
    return ternary_conv2d.dot_from_counts(f, lambda n, oh, ow, o: ternary_conv2d.weighted_sum(
        [pop(n, oh, ow, o, p).astype("uint64") for p in range(len(shifts))], shifts), corr)


def conv_dot(xp: te.Tensor, wp: te.Tensor, geo: Conv2dGeometry, out_extent: int | None = None,
             mve: bool = False) -> te.Tensor:
    """uint64[N,H,W,CW] x uint64[O,KH,KW,CW] -> int32[N, OH, OW, out_extent] (NHWC), as ``binary_conv2d.compute_dot``
    (zero padding skipped exactly, channels past O reuse the last filter)."""
    f = ConvFrame(xp, wp, geo, out_extent)
    xs, oc, sh, sw, dh, dw = f.xs, f.oc, f.sh, f.sw, f.dh, f.dw

    def word(n, oh, ow, o, kh, kw, cw):
        return xs[n, oh * sh + kh * dh, ow * sw + kw * dw, cw] ^ wp[oc(o), kh, kw, cw]

    low = f.cw == 1 and f.c <= 32
    # (channels past O clamp their filter index: not an affine lane stride, the MVE form would not apply)
    pop = _popcount_stages((f.n, f.oh, f.ow, f.ext), word, (f.kh, f.kw, f.cw), low, mve and f.ext == f.o)
    rc = te.reduce_axis((0, f.cw), name="rc")
    return f.dot(pop, lambda: te.compute((f.kh, f.kw, f.o), lambda i, j, o: te.sum(
        tirx.popcount(wp[o, i, j, rc]).astype("int32"), axis=rc), name="popw"))


def dense_dot(xp: te.Tensor, wp: te.Tensor, k: int, out_extent: int | None = None, mve: bool = False) -> te.Tensor:
    """uint64[M, KW] x uint64[N, KW] -> int32[M, out_extent], as ``binary_dense.compute_dot``."""
    m_, kw_ = (int(d) for d in xp.shape)
    n_ = int(wp.shape[0])
    ext = n_ if out_extent is None else int(out_extent)

    def row(n):
        return n if ext == n_ else tirx.min(n, n_ - 1)

    pop = _popcount_stages((m_, ext), lambda m, n, j: xp[m, j] ^ wp[row(n), j], (kw_,), kw_ == 1 and int(k) <= 32,
                           mve and ext == n_)
    return te.compute((m_, ext), lambda m, n: int(k) - 2 * pop(m, n).astype("int32"), name="dot")


def bits_output(dot: te.Tensor, direction: te.Tensor, threshold: te.Tensor, name: str) -> te.Tensor:
    """``epilogue.bits_output`` (``dot`` padded to whole words) with each 64-bit word gathered as two 32-bit halves
    (a variable 32-bit shift is one instruction on a 32-bit core, a 64-bit one six): same bits."""
    *outer, o_pad = (int(d) for d in dot.shape)
    o_ = int(direction.shape[0])
    words = num_words(o_)
    assert o_pad >= words * WORD_BITS
    b = te.reduce_axis((0, 32), name="b")

    def half(*idx):
        *pre, w, h = idx
        o = w * WORD_BITS + h * 32 + b
        oc = o if o_pad == o_ else tirx.min(o, o_ - 1)
        on = dot(*pre, o) * direction[oc] >= threshold[oc]
        if o_ != words * WORD_BITS:
            on = tirx.all(o < o_, on)
        return te.sum(tirx.Select(on, tirx.const(1, "uint32") << b.astype("uint32"), tirx.const(0, "uint32")), axis=b)

    halves = te.compute(tuple(outer) + (words, 2), half, name=name + "_halves")
    return te.compute(tuple(outer) + (words,), lambda *i: halves[i + (0,)].astype("uint64") | (
        halves[i + (1,)].astype("uint64") << tirx.const(32, "uint64")), name=name)


def bitpack(x: te.Tensor, channel_axis: int, name: str, scale=None, threshold=None) -> te.Tensor:
    """``ops.bitpack.compute_nchw`` (channel_axis 1 of NCHW) / ``compute_rows`` (axis 1 of [M, K]): the packing
    test's bits along the channels, each 64-bit word gathered as two 32-bit halves (``bits_output``'s reason)."""
    shape = [int(d) for d in x.shape]
    c_ = shape[channel_axis]
    lead = shape[:channel_axis] + shape[channel_axis + 1:]
    b = te.reduce_axis((0, 32), name="b")

    def half(*idx):
        *pre, w, h = idx
        c = w * WORD_BITS + h * 32 + b
        cc = tirx.min(c, c_ - 1)
        at = list(pre[:channel_axis]) + [cc] + list(pre[channel_axis:])
        on = tirx.all(c < c_, ops_bitpack.is_set(x(*at), x.dtype, cc, scale, threshold))
        return te.sum(tirx.Select(on, tirx.const(1, "uint32") << b.astype("uint32"), tirx.const(0, "uint32")), axis=b)

    halves = te.compute(tuple(lead) + (num_words(c_), 2), half, name=name + "_halves")
    return te.compute(tuple(lead) + (num_words(c_),), lambda *i: halves[i + (0,)].astype("uint64") | (
        halves[i + (1,)].astype("uint64") << tirx.const(32, "uint64")), name=name)


def bitpack_planes(x: te.Tensor, scale: te.Tensor | None, threshold: te.Tensor) -> te.Tensor:
    """``ops.bitpack.compute_planes`` with each 64-bit word gathered as two 32-bit halves per plane; the planes are
    the innermost axis, so one load of an element serves every plane's test (``scale`` None: all ones, no multiply
    and no load of it)."""
    n_, c_, h_, w_ = (int(d) for d in x.shape)
    p_ = int(threshold.shape[0])
    b = te.reduce_axis((0, 32), name="b")

    def half(n, h, w, q, hh, p):
        c = q * WORD_BITS + hh * 32 + b
        cc = tirx.min(c, c_ - 1)
        on = tirx.all(c < c_, ops_bitpack.plane_test(x[n, cc, h, w], scale, threshold, p, cc))
        return te.sum(tirx.Select(on, tirx.const(1, "uint32") << b.astype("uint32"), tirx.const(0, "uint32")), axis=b)

    words = num_words(c_)
    halves = te.compute((n_, h_, w_, words, 2, p_), half, name="bitpack_halves")
    return te.compute((n_, h_, w_, words, p_), lambda n, h, w, q, p: halves[n, h, w, q, 0, p].astype("uint64") | (
        halves[n, h, w, q, 1, p].astype("uint64") << tirx.const(32, "uint64")), name="bitpack")


def kernel_compute(op: str, params: dict, args, mve: bool = False):
    """The M-profile TE of one of our binary kernels: ``args`` placeholders -> output tensor (``mve``: the popcount
    stages in the form schedules/cortexm_mve.py vectorises)."""
    if op == "bitpack_planes":
        return bitpack_planes(args[0], None, args[1]) if params.get("unit_scale") else bitpack_planes(*args)
    if op in _BITPACK_OPS:
        return bitpack(args[0], 1, "bitpack", *args[1:])
    if op in _TERNARY_OPS:
        if params.get("layout", "OHWI") != "OHWI":
            raise ValueError(f"{op}: filters in layout {params.get('layout')} (the M-profile form reads OHWI)")
        xp, wp, p2, p3, corr, *acc = args
        dot = ternary_dot(xp, wp, corr, Conv2dGeometry.from_params(params), mve, params.get("shifts"))
        return epilogue.conv_float_output(dot, p2, p3, *acc, name=op)
    xp, wp, p2, p3, *acc = args  # acc: the tensor a float conv with params ``residual`` adds
    if op in _CONV_OPS:
        geo = Conv2dGeometry.from_params(params)
        if op == "binary_conv2d":
            return epilogue.conv_float_output(conv_dot(xp, wp, geo, mve=mve), p2, p3, *acc)
        padded = num_words(int(wp.shape[0])) * WORD_BITS
        return bits_output(conv_dot(xp, wp, geo, padded, mve), p2, p3, name="binary_conv2d_bits")
    if op == "binary_dense":
        return epilogue.float_output(dense_dot(xp, wp, params["k"], mve=mve), p2, p3, channel_axis=1,
                                     name="binary_dense")
    padded = num_words(int(wp.shape[0])) * WORD_BITS
    return bits_output(dense_dot(xp, wp, params["k"], padded, mve), p2, p3, name="binary_dense_bits")


# ----------------------------------------------------------------------------------------------------------------
# schedule


def _loops_below(sch, block, anchor):
    """The loops of ``block`` nested under ``anchor``, each with True if it drives a reduction iterator."""
    loops = list(sch.get_loops(block))
    anchor_var = sch.get(anchor).loop_var
    idx = [i for i, lp in enumerate(loops) if sch.get(lp).loop_var.same_as(anchor_var)]
    below = loops[idx[0] + 1:] if idx else loops
    blk = sch.get(block)
    out = []
    for lp in below:
        var = sch.get(lp).loop_var
        red = False
        for iv, val in zip(blk.iter_vars, _bindings(sch, block)):
            if any(v.same_as(var) for v in tirx.analysis.undefined_vars(val)):
                red = red or int(iv.iter_type) == 2
        out.append((lp, red))
    return out


def _bindings(sch, block):
    """The iter_values of ``block``'s SBlockRealize (directly under its innermost loop)."""
    body = sch.get(sch.get_loops(block)[-1]).body
    if not isinstance(body, s_tir.SBlockRealize):
        raise ValueError(f"block {sch.get(block).name_hint} is not directly under its innermost loop")
    return list(body.iter_values)


def _exists(sch, name) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001
        return False


def _schedule(sch: s_tir.Schedule, op: str, block_size: int):
    """Channel blocks of ``block_size`` under the output pixel, the popcount stages computed per block with the
    reduction loops outside the block (each loaded input word serves the whole block), everything inside unrolled.
    The reduction loop of a block's ``counts`` (the MVE form) is marked for schedules/cortexm_mve.py."""
    if op in _BITPACK_OPS:  # the halves per word, their 32 bits unrolled (constant shifts, no test left)
        out = sch.get_sblock("bitpack")
        halves = sch.get_sblock("bitpack_halves")
        if op == "bitpack_planes":  # per word: the bits outside, the planes inside (one load, P tests)
            sch.compute_at(halves, sch.get_loops(out)[-2])
            h, p, b = sch.get_loops(halves)[-3:]
            sch.reorder(h, b, p)
            sch.unroll(p)
        else:
            sch.compute_at(halves, sch.get_loops(out)[-1])
            h, b = sch.get_loops(halves)[-2:]
        sch.unroll(h)
        if UNROLL_BITPACK:
            sch.unroll(b)
        sch.decompose_reduction(halves, b)
        return sch
    bits = op.endswith("_bits")
    sch.compute_inline(sch.get_sblock("dot"))
    unroll, decompose = [], []
    if bits:
        out = sch.get_sblock(op)
        halves = sch.get_sblock(op + "_halves")
        word = sch.get_loops(out)[-1]
        sch.compute_at(halves, word)
        h, b = sch.get_loops(halves)[-2:]
        anchor, inner = sch.split(b, [None, block_size])
        unroll += [h, inner]
        decompose.append((halves, anchor))
    else:
        out = sch.get_sblock(op)
        loops = sch.get_loops(out)
        if op in _NCHW_OUT_OPS:  # (n, o, oh, ow) -> (n, oh, ow, o)
            n, o, oh, ow = loops
            sch.reorder(n, oh, ow, o)
        else:
            o = loops[-1]
        anchor, inner = sch.split(o, [None, block_size])
        unroll.append(inner)
    for name in ("popcount", "bytes", "nibbles", "counts"):
        if not _exists(sch, name):
            continue
        blk = sch.get_sblock(name)
        sch.compute_at(blk, anchor)
        below = _loops_below(sch, blk, anchor)
        spatial = [lp for lp, red in below if not red]
        reduce_ = [lp for lp, red in below if red]
        if spatial and reduce_:
            sch.reorder(*reduce_, *spatial)  # the channel block inside the reduction: one load per word
        unroll += spatial
        words = int(np.prod([_extent(sch, lp) for lp in reduce_])) if reduce_ else 1
        if name == "counts" and reduce_:  # one Helium vector for the block (one word, no loop: stays scalar)
            sch.annotate(reduce_[0], cortexm_mve.ANNOTATION, 1)
        elif name != "popcount" and words <= UNROLL_WORDS:
            unroll += reduce_
        if reduce_:
            decompose.append((blk, reduce_[0]))
            anchor = reduce_[-1]
    for lp in unroll:
        sch.unroll(lp)
    for blk, lp in decompose:
        sch.decompose_reduction(blk, lp)
    if _exists(sch, "pad_adjust"):  # the border classes outermost, the channels innermost: invariant tests hoisted
        adj = sch.get_sblock("pad_adjust")
        ch, cwl, o, ak, aj = sch.get_loops(adj)
        sch.reorder(ch, cwl, ak, aj, o)
        if _extent(sch, ch) * _extent(sch, cwl) * _extent(sch, ak) * _extent(sch, aj) <= MAX_ADJUST_UNROLL:
            for lp in (ch, cwl, ak, aj):  # constant tests: the taps inside the image vanish, no test is left
                sch.unroll(lp)
        sch.decompose_reduction(adj, ak)
    return sch


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _signature(func) -> list:
    return [(str(p.name), tuple(int(d) for d in p.shape), str(p.dtype)) for p in func.params]


def _finish(sch: s_tir.Schedule) -> tirx.PrimFunc:
    """Lower the blocks as ``schedules.lean`` does and lift every intermediate but the register-block accumulators to
    the root block (scratch arguments in the arena); the loops marked for MVE become their vector calls."""
    mod = sch.mod
    for p in (s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
              s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation()):
        mod = p(mod)
    func = lean.lift_nested_allocs(mod["main"], keep=lambda buf: str(buf.name) in _REGISTER_BUFFERS)
    return cortexm_mve.lower_lane_blocks(func)


def schedule_kernel(func: tirx.PrimFunc, mve: bool = False, const_params=()) -> tirx.PrimFunc:
    """``func`` scheduled for the C bundle on an M-profile core: our binary conv/dense/bitpack kernels in their
    M-profile form, a float conv (the stem) register-blocked (:func:`schedule_float_conv`); anything else gets the
    memory-lean schedule of ``schedules.lean`` only (so does a kernel whose schedule fails to build). ``mve``: the
    core has Helium (Cortex-M55): the binary kernels' channel blocks are counted as vectors. ``const_params``: the
    indices of the parameters every call passes a constant (a kernel may read those laid out at compile time: the
    attribute ``CONST_LAYOUT``)."""
    attrs = func.attrs
    op = str(attrs["tvm_bnn.op"]) if attrs is not None and "tvm_bnn.op" in attrs else None
    if op not in _CONV_OPS + _TERNARY_OPS + _DENSE_OPS + _BITPACK_OPS:
        if _has_block(func, FLOAT_CONV_BLOCK):
            try:
                return schedule_float_conv(func, const_params=const_params)
            except Exception as exc:  # noqa: BLE001 - a conv of another shape (groups, NHWC): the lean form
                warnings.warn(f"tvm_bnn: no register-blocked schedule for this float conv ({exc}); using the "
                              "memory-lean one", stacklevel=2)
        return lean.inline_intermediates(func)
    try:
        return build_kernel(func, op, json.loads(str(attrs["tvm_bnn.params"])), mve=mve)
    except Exception as exc:  # noqa: BLE001 - an unforeseen shape: the generic (exact, slower) form
        warnings.warn(f"tvm_bnn: no M-profile schedule for {op} ({exc}); using the generic one", stacklevel=2)
        return lean.inline_intermediates(func)


def _channels(op: str, out_shape) -> int:
    """The output channels of a kernel whose output has ``out_shape`` (a bits output: its words' bits)."""
    if op.endswith("_bits"):
        return int(out_shape[-1]) * WORD_BITS
    return int(out_shape[1] if op in _NCHW_OUT_OPS else out_shape[-1])


def build_kernel(func: tirx.PrimFunc, op: str, params: dict, block_size: int | None = None,
                 mve: bool = False) -> tirx.PrimFunc:
    """The M-profile PrimFunc of kernel ``func`` (same parameters in the same order), scheduled; ``mve``: for a core
    with Helium (its 4-channel blocks counted as vectors, schedules/cortexm_mve.py)."""
    sig = _signature(func)
    phs = [te.placeholder(shape, dtype, name=name) for name, shape, dtype in sig[:-1]]
    planes = len(params.get("shifts") or [None])  # stacked planes: a block's accumulators are channels x planes
    block_size = block_size or _largest_divisor(_channels(op, sig[-1][1]), max(1, MAX_BLOCK // planes))
    out = kernel_compute(op, params, phs, mve and block_size == cortexm_mve.LANES)
    new = te.create_prim_func(phs + [out])
    if [s[1:] for s in _signature(new)] != [s[1:] for s in sig]:
        raise ValueError(f"{op}: M-profile form has parameters {_signature(new)}, the kernel {sig}")
    for key, value in func.attrs.items():
        if key not in ("global_symbol",):
            new = new.with_attr(key, value)
    if "global_symbol" not in func.attrs:
        new = new.without_attr("global_symbol")
    sch = s_tir.Schedule(new)
    _schedule(sch, op, block_size)
    return _finish(sch)


# ------------------------------------------------------------------------------------------------- float conv

FLOAT_CONV_BLOCK = "conv2d_nchw"  # the block of TOPI's conv2d_nchw (LegalizeOps of a float Relax conv2d)
FLOAT_BLOCK = (4, 4)  # output channels x output pixels of a row in registers (16 of the FPU's 32 registers)
CONST_LAYOUT = "tvm_bnn.const_layout"  # attribute [parameter index, IndexMap]: that constant is read laid out so


def _has_block(func, name: str) -> bool:
    try:
        s_tir.Schedule(func).get_sblock(name)
        return True
    except Exception:  # noqa: BLE001
        return False


def schedule_float_conv(func: tirx.PrimFunc, block=FLOAT_BLOCK, const_params=()) -> tirx.PrimFunc:
    """A float NCHW conv (with whatever elementwise epilogue FuseOps put after it) register-blocked: a block of
    ``block`` = (output channels, output pixels of one row) accumulates in registers over the reduction (input
    channels outermost, the kernel taps unrolled), so each weight loaded is used for every pixel of the block and
    each input for every channel; the epilogue is applied to the accumulators as they are written out. Every
    product is added as ``tvm_bnn_mla(acc, a, b)``: VMLA.F32 on an FPU (multiply, round, add, round: one
    instruction, the result of ``acc + a * b`` bit for bit), in the same order as the plain schedule: the numerics do
    not change. The zero-padded input stays materialised, as in ``schedules.lean``.

    When the weights are a constant (their parameter's index is in ``const_params``) they are laid out for the
    block, [O / bo, C, KH, KW, bo] (the attribute ``CONST_LAYOUT``: the parameter and the IndexMap the bundle
    applies to the constant), and the block becomes one call of the FPU helper of ``schedules/cortexm_vfp.py``."""
    sch = s_tir.Schedule(func)
    lean._inline(sch, sch.get_sblock("root"), ("pad",))
    conv = sch.get_sblock(FLOAT_CONV_BLOCK)
    loops = sch.get_loops(conv)
    if len(loops) != 7:
        raise ValueError(f"{len(loops)} loops (expected n, o, y, x, c, kh, kw)")
    nn, ff, yy, xx, rc, ry, rx = loops
    bo = _largest_divisor(_extent(sch, ff), block[0])
    layout = _lay_out_weights(sch, conv, func, bo, const_params)
    fo, fi = sch.split(ff, [None, bo])
    xo, xi = sch.split(xx, [None, _largest_divisor(_extent(sch, xx), block[1])])
    sch.reorder(nn, fo, yy, xo, rc, ry, rx, fi, xi)
    acc = sch.cache_write(conv, 0, "global")  # "local" would go to TVM's workspace allocator in the C codegen
    register = str(sch.get(acc).reads[0].source.name)
    sch.reverse_compute_at(acc, xo)
    for consumer in sch.get_consumers(acc):  # the epilogue, from the accumulators at write-back
        sch.reverse_compute_inline(consumer)
    init = sch.decompose_reduction(conv, rc)
    for lp in [ry, rx, fi, xi] + sch.get_loops(init)[-2:] + sch.get_loops(acc)[-2:]:
        sch.unroll(lp)
    sch.annotate(rc, cortexm_vfp.ANNOTATION, 1)
    mod = sch.mod
    for p in (s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
              s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation()):
        mod = p(mod)
    out = lean.lift_nested_allocs(mod["main"], keep=lambda buf: str(buf.name) == register)
    out = cortexm_vfp.lower_fconv_blocks(lean.map_stores(out, lambda store: _multiply_accumulate(store, register)))
    return out.with_attr(CONST_LAYOUT, layout) if layout is not None else out


def _lay_out_weights(sch, conv, func, bo: int, const_params):
    """Lay out the conv's weights [O, C, KH, KW] as [O / bo, C, KH, KW, bo] if they are the parameter of a constant
    (each tap's block of weights consecutive, the taps in the order the block reads them); ([index, map] or None)."""
    for k, region in enumerate(sch.get(conv).reads):
        index = next((i for i, p in enumerate(func.params) if p.same_as(region.source)), None)
        if index is None or index not in const_params or len(region.source.shape) != 4:
            continue
        index_map = tirx.IndexMap.from_func(lambda o, c, h, w: (o // bo, c, h, w, o % bo), index_dtype="int64")
        sch.transform_layout(conv, ("read", k), index_map)
        return [index, index_map]
    return None


def _multiply_accumulate(store, register: str):
    """``acc[i] = acc[i] + a * b`` on the register accumulator -> ``acc[i] = tvm_bnn_mla(acc[i], a, b)``."""
    v = store.value
    if str(store.buffer.name) == register and isinstance(v, tirx.Add) and isinstance(v.b, tirx.Mul) and \
            isinstance(v.a, tvm.ir.expr.TensorLoad) and v.a.source.same_as(store.buffer) and \
            str(store.buffer.dtype) == "float32":
        return tirx.BufferStore(store.buffer, tirx.call_pure_extern("float32", "tvm_bnn_mla", v.a, v.b.a, v.b.b),
                                store.indices)
    return store
