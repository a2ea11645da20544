"""Byte-lane bit-GEMM kernels for vector units without a 64-bit vector popcount: x86 AVX2 and ARM NEON.

The generic TE (ops/binary_conv2d.py, ops/binary_dense.py) accumulates ``popcount(x ^ w)`` in uint64 lanes. On AVX2
LLVM lowers each uint64 vector popcount to the nibble-table ``vpshufb`` sequence *plus* a ``vpsadbw`` that sums the 8
byte counts of every lane, and on NEON to ``cnt`` plus three ``uaddlp`` widenings: the widening runs once per word,
in the hot loop. This module rebuilds a binary conv2d / dense kernel (same PrimFunc signature, same integers, the
epilogues of ops/epilogue.py and the padding of ``ConvFrame``) from a form in which a word only contributes its
per-byte bit counts, accumulated in narrow lanes, and the widening happens once per group of words:

* ``popcount bytes``: ``reinterpret(u64, popcount(reinterpret(u8x8, x ^ w)))`` -- a byte view of the XORed word.
  TVM's vectorizer turns the reinterprets into ``<N x i64> <-> <8N x i8>`` bitcasts, LLVM lowers ``ctpop <32 x i8>``
  to the nibble table (``vpshufb``) on AVX2 and to one ``cnt v.16b`` / ``vcnt.8`` on NEON;
* narrow accumulators, held inside uint64 lanes (each u64 lane is 8 u8, 4 u16 or 2 u32 counters):
  ``avx2``: u8 counters (``vpaddq`` of byte counts: no carry crosses a byte while a byte stays <= 255, i.e. for up to
  31 words); ``aarch64``/``armv7``: u16 counters fed by a pairwise widening add (``uadalp`` / ``vpadal.u8``, up to
  4095 words); ``dotprod``: u32 counters fed by ``udot`` against a ones vector (a 4-byte sum);
* one widening per group: the u64 count of a lane is taken from its counters (``vpsadbw`` against 0 on AVX2,
  ``uaddlp`` on NEON) once per group of words; the group is the whole reduction when its fan-in cannot overflow the
  counters (known at compile time), else one kernel row, else a divisor of it (``_groups``).

The ops that are not plain TIR (pairwise and 4-byte sums, lane-wise u16/u32 adds, the per-lane byte / u16 / u32 sums)
are our own pure, vectorizable TIR ops with an LLVM lowering rule per architecture (``schedules/simd_ops.py``). A
kernel built without its parameters (a bare TE in a benchmark or test) gets them from ``schedules/simd_params.py``.

Schedule: as the conv in schedules/x86.py, vectorised over output channels (weights transposed to [.., O], dense
too), a register block of ``tile_p`` pixels (rows) x ``tile_o`` channels, each input word broadcast against the
filter vectors, the accumulators (``bytes``) and the per-group u64 counts (``popcount``) in registers, the epilogue
per tile straight from them. ``design_space`` samples the same knobs for MetaSchedule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import s_tir, te, tirx

from ..ops import WORD_BITS, epilogue, num_words, ternary_conv2d
from ..ops.binary_conv2d import Conv2dGeometry, ConvFrame, prepared_weights
from .loops import fuse_row_tasks, parallelize_outer, register_block, residual_blocks, sum_along_pixels
from .simd_ops import NIBBLES, call_op, nibble_plane, popcount_bytes
from .simd_params import kernel_params, signature

CONV_OPS = ("binary_conv2d", "binary_conv2d_bits")
DENSE_OPS = ("binary_dense", "binary_dense_bits")
OPS = CONV_OPS + DENSE_OPS
TERNARY_OP = "ternary_conv2d"  # in the byte-lane form once its filters are laid out for a flavour (params ``flavour``)
FORM_ATTR = "tvm_bnn.simd_bytes"  # set on a rebuilt PrimFunc: its flavour


@dataclass(frozen=True)
class Flavour:
    name: str
    arch: str  # lowering family of our ops: "x86", "aarch64", "armv7"
    lane_bits: int  # counter width inside a u64 lane: 8 (bytes), 16 (byte pairs), 32 (4-byte groups)
    vector_words: int  # u64 lanes of one hardware vector
    default_tile: tuple  # (pixels or rows, output channels) of a register block
    bits_tile: tuple | None = None  # the register block of the bits outputs, if not default_tile
    nibbles: bool = False  # x86: inputs and weights split into nibble planes, the count is one vpshufb per plane
    count_bits: int = 64  # the per-output count: u64 (x86: vpsadbw's lanes) or u32 (NEON: a full q of 4 channels)
    unroll_words: int = 4  # unroll the innermost reduction loops of the counters up to this many words
    replicate: int = 1  # NEON: each input word stored this many times (a vector load with an immediate offset, or
    #                    ldp, instead of ld1r, which takes no offset: LLVM spent an address add per broadcast)
    ternary_tile: tuple | None = None  # the register block of the ternary conv (a mask per filter word), if not
    #                                    default_tile

    @property
    def out_lanes(self) -> int:
        """Output channels per vector of counts (and of the epilogue): 4 u64 in a ymm, 4 u32 in a q register."""
        return self.vector_words * 64 // self.count_bits

    @property
    def group_limit(self) -> int:
        """Words a counter can take before it could overflow: each word adds at most ``lane_bits`` to a counter of
        ``lane_bits // 8`` bytes (8 bits per byte)."""
        return ((1 << self.lane_bits) - 1) // self.lane_bits


FLAVOURS = {
    # 16 ymm: 1 pixel x 16 channels = 4 byte accumulators, the nibble table, filter vectors as memory operands, 2
    # input broadcasts per word for 4 vectors (llvm-mca znver3: 139 bit/cycle in the hot loop; 2 x 8: 118; 4 x 8
    # spilled). The bits outputs take 2 x 8: their channel loop runs inside the row loop, so the filters of a whole
    # output word (64 channels) are reloaded per row tile, and 2 rows halve that (measured 1.26x vs 1.03x)
    "avx2": Flavour("avx2", "x86", 8, 4, (1, 16), nibbles=True, bits_tile=(2, 8)),
    # 32 q registers: 4 pixels x 8 channels = 16 u16 accumulators, 4 filter vectors, 4 input broadcasts
    "aarch64": Flavour("aarch64", "aarch64", 16, 2, (4, 8), count_bits=32, unroll_words=12, replicate=2),
    "dotprod": Flavour("dotprod", "aarch64", 32, 2, (4, 8), count_bits=32, unroll_words=12, replicate=2),
    # 16 q registers: 2 pixels x 4 channels = 4 accumulators, 2 filter vectors, 2 inputs (2 x 8 spilled); the
    # ternary conv's sign and mask vectors take 2 x 2 (W2A2 3x3 256 -> 256 at 28x28: 64.4 M instructions, 83.5 M
    # as 2 x 4, against 66.5 M for the binary plane pairs)
    "armv7": Flavour("armv7", "armv7", 16, 2, (2, 4), count_bits=32, unroll_words=12, replicate=2,
                     ternary_tile=(2, 2)),
}


@dataclass(frozen=True)
class Knobs:
    tile_p: int  # output pixels (conv, along OW) / rows (dense) per register block
    tile_o: int  # output channels per register block (a multiple of ``lanes``)
    lanes: int  # u64 lanes per vector (output channels per vector)
    unroll: bool = True


def _accumulation(fl: Flavour):
    """(value of one word from ``word(plane)``, the counters' combiner, counters -> u64 count) for a flavour;
    ``plane`` is None (the whole XORed word) or 0 / 1 (its low / high nibble plane) for ``fl.nibbles``."""
    arch = fl.arch
    count = f"uint{fl.count_bits}"
    if fl.nibbles:  # the XOR of two nibble planes is a nibble plane: its byte counts are one table lookup each
        return (lambda word: call_op("nibcount", arch, word(0)) + call_op("nibcount", arch, word(1))), None, \
            lambda acc: call_op("sum8", arch, acc, dtype=count)
    if fl.lane_bits == 8:  # byte counters: a u64 add is a byte-wise add while no byte exceeds 255
        return (lambda word: popcount_bytes(word(None))), None, lambda acc: call_op("sum8", arch, acc, dtype=count)
    if fl.lane_bits == 16 and arch == "armv7":
        # the combiner takes the counters and a word's byte counts (vpadal.u8): not a monoid, but the reduction is
        # only ever lowered as acc = combine(acc, value) (no rfactor); identity 0
        padal = te.comm_reducer(lambda a, b: call_op("padal", arch, a, b), lambda t: tirx.const(0, t), name="padal_u8")
        return (lambda w: popcount_bytes(w(None))), padal, lambda acc: call_op("sum16", arch, acc, dtype=count)
    if fl.lane_bits == 16:
        add = te.comm_reducer(lambda a, b: call_op("add16", arch, a, b), lambda t: tirx.const(0, t), name="add_u16")
        return (lambda w: call_op("pairs", arch, popcount_bytes(w(None)))), add, lambda acc: call_op("sum16", arch, acc, dtype=count)
    add = te.comm_reducer(lambda a, b: call_op("add32", arch, a, b), lambda t: tirx.const(0, t), name="add_u32")
    return (lambda w: call_op("quads", arch, popcount_bytes(w(None)))), add, lambda acc: call_op("sum32", arch, acc, dtype=count)


# ------------------------------------------------------------------------------------------------------ the TE form

# Transposed weights are blocked by this many output channels ([O/8, KH, KW, CW, (plane,) 8]): one block's words
# are contiguous. Unblocked ([.., O]) consecutive words of a channel tile lie O*8 bytes apart, 2 KB for O = 256: all
# in the same two L1 sets, and a 3x3 tile's 72 lines kept missing L1.
WEIGHT_BLOCK = 8


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def _groups(axes: tuple, limit: int) -> tuple:
    """How the reduction axes (outermost first) are grouped for the counters: ("all",) one group;
    ("rows",) one group per outer index (kernel row); ("split", g) groups of g words of the flattened inner axes."""
    total = int(np.prod(axes))
    if total <= limit:
        return ("all",)
    inner = int(np.prod(axes[1:])) if len(axes) > 1 else total
    if len(axes) > 1 and inner <= limit:
        return ("rows",)
    return ("split", _largest_divisor(inner, limit))


def _mismatch_stages(shape: tuple, word, axes: tuple, fl: Flavour):
    """``bytes`` (narrow counters per group) and ``popcount`` (u64 per output: the groups' counts summed) as TE
    stages; ``word(*idx, *red, plane)`` is the XORed uint64 word at reduction indices ``red`` (one per axis), or its
    nibble plane (``plane`` 0 / 1, for ``fl.nibbles``)."""
    value, combiner, widen = _accumulation(fl)
    reducer = combiner if combiner is not None else te.sum
    how = _groups(axes, fl.group_limit)
    shape = tuple(shape)
    if how[0] == "all":
        rs = [te.reduce_axis((0, a), name=f"r{k}") for k, a in enumerate(axes)]
        byt = te.compute(shape, lambda *i: reducer(value(lambda h: word(*i, *rs, h)), axis=rs), name="bytes")
        return te.compute(shape, lambda *i: widen(byt[i]), name="popcount")
    if how[0] == "rows":
        rs = [te.reduce_axis((0, a), name=f"r{k + 1}") for k, a in enumerate(axes[1:])]
        byt = te.compute(shape + (axes[0],), lambda *i: reducer(value(lambda h: word(*i, *rs, h)), axis=rs), name="bytes")
        ro = te.reduce_axis((0, axes[0]), name="ro")
        return te.compute(shape, lambda *i: te.sum(widen(byt[i + (ro,)]), axis=ro), name="popcount")
    group = how[1]
    inner_axes = axes[1:] if len(axes) > 1 else axes
    inner = int(np.prod(inner_axes))
    rj = te.reduce_axis((0, group), name="rj")

    def unflatten(j):
        out = []
        for a in reversed(inner_axes[1:]):
            out.append(j % a)
            j = j // a
        return [j] + out[::-1]

    if len(axes) == 1:
        byt = te.compute(shape + (inner // group,), lambda *i: reducer(
            value(lambda h: word(*i[:-1], *unflatten(i[-1] * group + rj), h)), axis=rj), name="bytes")
        rg = te.reduce_axis((0, inner // group), name="rg")
        return te.compute(shape, lambda *i: te.sum(widen(byt[i + (rg,)]), axis=rg), name="popcount")
    byt = te.compute(shape + (axes[0], inner // group), lambda *i: reducer(
        value(lambda h: word(*i[:-2], i[-2], *unflatten(i[-1] * group + rj), h)), axis=rj), name="bytes")
    ro = te.reduce_axis((0, axes[0]), name="ro")
    rg = te.reduce_axis((0, inner // group), name="rg")
    return te.compute(shape, lambda *i: te.sum(widen(byt[i + (ro, rg)]), axis=[ro, rg]), name="popcount")


def conv_weight_tables(wp: np.ndarray, geo: Conv2dGeometry, in_hw: tuple, fl: Flavour,
                       out_extent: int | None = None) -> tuple:
    """What :func:`conv_dot`'s weight stages compute on every call, done once (numpy, schedules/weight_layout.py):
    the filters in blocks of output channels, ``[ext / blk, KH, KW, CW, blk]`` (as nibble planes ``[.., CW, 2,
    blk]`` for the nibble flavours), and the zero-padding correction table of ``binary_conv2d.prepared_weights``."""
    wp = np.ascontiguousarray(wp, dtype=np.uint64)
    o, kh, kw, cw = wp.shape
    _, adjust = prepared_weights(wp, geo, in_hw, out_extent)
    ext = o if out_extent is None else int(out_extent)
    blk = _largest_divisor(ext, WEIGHT_BLOCK)
    blocks = wp[np.minimum(np.arange(ext), o - 1)].reshape(ext // blk, blk, kh, kw, cw).transpose(0, 2, 3, 4, 1)
    if fl.nibbles:
        blocks = np.stack([(blocks >> np.uint64(4 * h)) & np.uint64(NIBBLES) for h in (0, 1)], axis=-2)
    return np.ascontiguousarray(blocks), adjust


def _input_words(f: ConvFrame, fl: Flavour):
    """The padded input of a conv as the byte-lane kernels read it: ``x(n, oh, ow, o, kh, kw, cw, h)`` is the word
    under tap (kh, kw) of output pixel (oh, ow), its nibble plane ``h`` for the nibble flavours, from the copy that
    output channel ``o``'s lane reads (``o % replicate``: lane l of a vector of ``replicate`` channels reads copy l)."""
    xs, sh, sw, dh, dw, rep = f.xs, f.sh, f.sw, f.dh, f.dw, fl.replicate
    shape = tuple(int(d) for d in xs.shape)
    if fl.nibbles:
        xn = te.compute(shape + (2, rep), lambda n, i, j, q, h, r: nibble_plane(xs[n, i, j, q], h), name="pad_nibbles")
        return lambda n, oh, ow, o, kh, kw, cw, h: xn[n, oh * sh + kh * dh, ow * sw + kw * dw, cw, h, o % rep]
    xr = te.compute(shape + (rep,), lambda n, i, j, q, r: xs[n, i, j, q], name="pad_lanes")
    return lambda n, oh, ow, o, kh, kw, cw, h: xr[n, oh * sh + kh * dh, ow * sw + kw * dw, cw, o % rep]


def conv_dot(xp, wp, geo: Conv2dGeometry, fl: Flavour, out_extent: int | None = None,
             prepared: tuple | None = None) -> te.Tensor:
    """As ``binary_conv2d.compute_dot``: int32[N, OH, OW, out_extent] (channels past O reuse the last filter).
    ``prepared = (weights_t, pad_adjust or None)`` (:func:`conv_weight_tables`): the weight stages read as inputs
    (``wp`` then only gives the filters' shape)."""
    f = ConvFrame(xp, wp, geo, out_extent)
    oc, x = f.oc, _input_words(f, fl)
    blk = _largest_divisor(f.ext, WEIGHT_BLOCK)
    table, adjust = prepared if prepared is not None else (None, None)
    if fl.nibbles:
        wn = table if table is not None else te.compute(
            (f.ext // blk, f.kh, f.kw, f.cw, 2, blk), lambda b, i, j, q, h, o: nibble_plane(
                wp[oc(b * blk + o), i, j, q], h), name="weights_t")

        def word(n, oh, ow, o, kh, kw, cw, h):
            return x(n, oh, ow, o, kh, kw, cw, h) ^ wn[o // blk, kh, kw, cw, h, o % blk]
    else:
        wt = table if table is not None else te.compute(
            (f.ext // blk, f.kh, f.kw, f.cw, blk), lambda b, i, j, q, o: wp[oc(b * blk + o), i, j, q],
            name="weights_t")

        def word(n, oh, ow, o, kh, kw, cw, h):
            return x(n, oh, ow, o, kh, kw, cw, h) ^ wt[o // blk, kh, kw, cw, o % blk]

    pop = _mismatch_stages((f.n, f.oh, f.ow, f.ext), word, (f.kh, f.kw, f.cw), fl)
    rc = te.reduce_axis((0, f.cw), name="rc")
    return f.dot(lambda n, oh, ow, o: pop[n, oh, ow, o], lambda: te.compute((f.kh, f.kw, f.o), lambda i, j, o: te.sum(
        tirx.popcount(wp[o, i, j, rc]).astype("int32"), axis=rc), name="popw"), adjust)


def ternary_weight_tables(filters: np.ndarray, fl: Flavour) -> np.ndarray:
    """Stacked ternary filters uint64[2, O, KH, KW, CW] (sign, mask: ops/ternary_conv2d.pack_weights) in the blocks
    :func:`ternary_dot` reads, as :func:`conv_weight_tables` lays out binary filters: ``[2, O / blk, KH, KW, CW,
    blk]``, as nibble planes ``[2, O / blk, KH, KW, CW, 2, blk]`` for the nibble flavours."""
    f = np.ascontiguousarray(filters, dtype=np.uint64)
    _, o, kh, kw, cw = f.shape
    blk = _largest_divisor(o, WEIGHT_BLOCK)
    blocks = f.reshape(2, o // blk, blk, kh, kw, cw).transpose(0, 1, 3, 4, 5, 2)
    if fl.nibbles:
        blocks = np.stack([(blocks >> np.uint64(4 * h)) & np.uint64(NIBBLES) for h in (0, 1)], axis=-2)
    return np.ascontiguousarray(blocks)


def ternary_dot(xp, table, corr, geo: Conv2dGeometry, fl: Flavour, out_channels: int) -> te.Tensor:
    """As ``ternary_conv2d.compute_dot`` of one input: int32[N, OH, OW, O] from the filters laid out by
    :func:`ternary_weight_tables`. A word counts ``(x ^ sign) & mask`` (a nibble plane of it is the same bitwise
    function of the planes), in the flavour's byte counters, one count per word where its two +-1 weight planes
    took two binary convs; ``corr`` (``ternary_conv2d.correction_table``) adds the nonzero weights and takes the
    zero padding back out."""
    kh, kw, cw = (int(d) for d in table.shape[2:5])
    f = ConvFrame(xp, te.placeholder((int(out_channels), kh, kw, cw), "uint64", name="filters"), geo)
    blk, x = int(table.shape[-1]), _input_words(f, fl)

    def word(n, oh, ow, o, i, j, q, h):
        at = (o // blk, i, j, q) + ((h,) if fl.nibbles else ()) + (o % blk,)  # the nibble plane h, if any
        return (x(n, oh, ow, o, i, j, q, h) ^ table[(0,) + at]) & table[(1,) + at]

    pop = _mismatch_stages((f.n, f.oh, f.ow, f.o), word, (f.kh, f.kw, f.cw), fl)
    return ternary_conv2d.dot_from_counts(f, lambda n, oh, ow, o: pop[n, oh, ow, o], corr)


def takes_form(func, op: str) -> bool:
    """Whether kernel ``func`` of ``op`` has a byte-lane form: the binary ones always, a ternary conv once its
    filters are laid out for a flavour (schedules/weight_layout.py)."""
    if op in OPS:
        return True
    attrs = func.attrs
    return op == TERNARY_OP and attrs is not None and "tvm_bnn.params" in attrs and \
        bool(kernel_params(func, op).get("flavour"))


def dense_dot(xp, wp, k: int, fl: Flavour, out_extent: int | None = None) -> te.Tensor:
    """As ``binary_dense.compute_dot``: int32[M, out_extent] (rows past N reuse the last weight row)."""
    m_, kw_ = (int(d) for d in xp.shape)
    n_ = int(wp.shape[0])
    ext = n_ if out_extent is None else int(out_extent)
    row = (lambda n: n) if ext == n_ else (lambda n: tirx.min(n, n_ - 1))
    blk = _largest_divisor(ext, WEIGHT_BLOCK)
    if fl.nibbles:
        rep = fl.replicate
        xn = te.compute((m_, kw_, 2, rep), lambda m, r, h, c: nibble_plane(xp[m, r], h), name="pad_nibbles")
        wn = te.compute((ext // blk, kw_, 2, blk), lambda b, r, h, n: nibble_plane(wp[row(b * blk + n), r], h),
                        name="weights_t")
        pop = _mismatch_stages((m_, ext), lambda m, n, r, h: xn[m, r, h, n % rep] ^ wn[n // blk, r, h, n % blk],
                               (kw_,), fl)
    else:
        wt = te.compute((ext // blk, kw_, blk), lambda b, r, n: wp[row(b * blk + n), r], name="weights_t")
        rep = fl.replicate
        xr = te.compute((m_, kw_, rep), lambda m, r, c: xp[m, r], name="pad_lanes")
        pop = _mismatch_stages((m_, ext), lambda m, n, r, h: xr[m, r, n % rep] ^ wt[n // blk, r, n % blk], (kw_,), fl)
    return te.compute((m_, ext), lambda m, n: int(k) - 2 * pop[m, n].astype("int32"), name="dot")


def kernel_compute(op: str, params: dict, args, fl: Flavour) -> te.Tensor:
    """The byte-lane TE of one of our binary kernels: ``args`` placeholders -> output tensor. A conv whose weights
    are laid out at compile time (params ``prepared``) takes ``(xp, weights_t, [pad_adjust,] p2, p3)``, a ternary
    conv ``(xp, filters, p2, p3, corr)`` (:func:`ternary_weight_tables`), and one with params ``residual`` the float
    tensor it adds, last."""
    prepared = None
    args, acc = (args[:-1], args[-1]) if params.get("residual") else (args, None)
    if op == TERNARY_OP:  # (xp, filters laid out by ternary_weight_tables, p2, p3, corr)
        xp, table, p2, p3, corr = args
        dot = ternary_dot(xp, table, corr, Conv2dGeometry.from_params(params), fl, params["out_channels"])
        return epilogue.conv_float_output(dot, p2, p3, acc, name=op, staged=True)
    if op in CONV_OPS and params.get("prepared"):
        xp, table, *rest = args
        adjust, (p2, p3) = (rest[0], rest[1:]) if len(rest) == 3 else (None, rest)
        kh, kw, cw = (int(d) for d in table.shape[1:4])
        wp = te.placeholder((int(params["out_channels"]), kh, kw, cw), "uint64", name="filters")
        prepared = (table, adjust)
    else:
        xp, wp, p2, p3 = args
    padded = num_words(int(wp.shape[0])) * WORD_BITS
    if op in CONV_OPS:
        geo = Conv2dGeometry.from_params(params)
        if op == "binary_conv2d":
            return epilogue.conv_float_output(conv_dot(xp, wp, geo, fl, prepared=prepared), p2, p3, acc, staged=True)
        return epilogue.bits_output(conv_dot(xp, wp, geo, fl, padded, prepared), p2, p3, name="binary_conv2d_bits")
    if op == "binary_dense":
        return epilogue.float_output(dense_dot(xp, wp, params["k"], fl), p2, p3, channel_axis=1, name="binary_dense")
    return epilogue.bits_output(dense_dot(xp, wp, params["k"], fl, padded), p2, p3, name="binary_dense_bits")



def build_form(func, op: str, fl: Flavour, params: dict | None = None) -> tirx.PrimFunc | None:
    """The unscheduled byte-lane PrimFunc of kernel ``func`` (same parameters in the same order, same attributes,
    ``FORM_ATTR`` = the flavour), or None when its parameters cannot be known."""
    params = params if params is not None else kernel_params(func, op)
    if params is None:
        return None
    sig = signature(func)
    phs = [te.placeholder(shape, dtype, name=name) for name, shape, dtype in sig[:-1]]
    new = te.create_prim_func(phs + [kernel_compute(op, params, phs, fl)])
    if [s[1:] for s in signature(new)] != [s[1:] for s in sig]:
        raise ValueError(f"{op}: byte-lane form has parameters {signature(new)}, the kernel {sig}")
    for key, value in (func.attrs.items() if func.attrs is not None else []):
        if key != "global_symbol":
            new = new.with_attr(key, value)
    if func.attrs is None or "global_symbol" not in func.attrs:
        new = new.without_attr("global_symbol")
    return new.with_attr(FORM_ATTR, fl.name)


# ------------------------------------------------------------------------------------------------------ schedule


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - a block this kernel variant does not have
        return None


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _extents(sch, op: str) -> tuple:
    """(pixel/row extent, channel extent) of the output tiles."""
    out = sch.get(sch.get_sblock(op))
    ivs = [int(iv.dom.extent) for iv in out.iter_vars]
    if op == "binary_dense":
        return ivs[0], ivs[1]
    if op == "binary_dense_bits":
        return ivs[0], WORD_BITS
    if op in ("binary_conv2d", TERNARY_OP):  # float NCHW
        return ivs[3], ivs[1]
    return ivs[2], WORD_BITS


def fit_knobs(sch, op: str, knobs: Knobs) -> Knobs:
    """Shrink the knobs to divisors of this kernel's extents (no tile needs a bounds check)."""
    p_ext, o_ext = _extents(sch, op)
    lanes = _largest_divisor(o_ext, knobs.lanes)
    tile_o = lanes * _largest_divisor(o_ext // lanes, max(1, knobs.tile_o // lanes))
    tile_p = _largest_divisor(p_ext, knobs.tile_p)
    if tile_p < knobs.tile_p and _largest_divisor(p_ext, 8) > knobs.tile_p:  # 7-wide maps: 7 pixels, fewer channels
        tile_p = _largest_divisor(p_ext, 8)
        tile_o = lanes * _largest_divisor(o_ext // lanes, max(1, knobs.tile_p * knobs.tile_o // tile_p // lanes))
    return Knobs(tile_p, tile_o, lanes, knobs.unroll)


def default_knobs(fl: Flavour, op: str = "") -> Knobs:
    tile = fl.bits_tile if op.endswith("_bits") and fl.bits_tile is not None else fl.default_tile
    if op == TERNARY_OP and fl.ternary_tile is not None:
        tile = fl.ternary_tile
    return Knobs(tile[0], tile[1], fl.vector_words)


class _Fixed:
    def __init__(self, knobs: Knobs, fl: Flavour):
        self.knobs = knobs
        self.lanes = knobs.lanes
        # counts and epilogue: out_lanes channels per vector (4 u32 on NEON, whose accumulators hold 2 channels)
        self.out_lanes = _largest_divisor(knobs.tile_o, fl.out_lanes) if knobs.lanes > 1 else 1
        self.unroll_words = fl.unroll_words

    def p(self, sch, loop):
        return [None, self.knobs.tile_p]

    def o3(self, sch, loop):
        return [None, self.knobs.tile_o // self.out_lanes, self.out_lanes]


class _Sampled:
    """Register block sampled by MetaSchedule; the vector is the flavour's (``lanes``, fitted to the channels)."""

    def __init__(self, lanes: int, out_lanes: int, fl: Flavour):
        self.lanes = lanes
        self.out_lanes = out_lanes
        self.unroll_words = fl.unroll_words

    def p(self, sch, loop):
        return sch.sample_perfect_tile(loop, n=2, max_innermost_factor=8)

    def o3(self, sch, loop):
        outer, inner = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=8)
        return [outer, inner, None]


def _split_o3(sch, loop, how):
    """(blocks, vectors per block, lanes) of an output-channel loop."""
    f = how.o3(sch, loop)
    if f[2] is None:  # sampled: first the lanes, then the vectors per block
        rest, lane = sch.split(loop, [None, how.out_lanes])
        ob, ov = sch.split(rest, sch.sample_perfect_tile(rest, n=2, max_innermost_factor=8))
        return ob, ov, lane
    return sch.split(loop, f)


def _tile(sch, op: str, how, num_cores: int, unroll: bool):
    """Tile the output (epilogue) into register blocks; returns the loop the accumulators are computed under."""
    epi, total = residual_blocks(sch, op, inline=False)
    if op == "binary_dense":
        m, n = sch.get_loops(epi)
        mo, mi = sch.split(m, how.p(sch, m))
        no, nb, nv = _split_o3(sch, n, how)
        sch.reorder(no, mo, mi, nb, nv)
        outer = sch.fuse(no, mo)
        tile_loop, vec, unr = outer, nv, [mi, nb]
    elif op == "binary_dense_bits":
        m, w, b = sch.get_loops(epi)
        mo, mi = sch.split(m, how.p(sch, m))
        bo, bb, bv = _split_o3(sch, b, how)
        sch.reorder(mo, w, bo, mi, bb, bv)
        outer = sch.fuse(mo, w)
        tile_loop, vec, unr = bo, None, []
    elif op in ("binary_conv2d", TERNARY_OP):
        n, o, oh, ow = sch.get_loops(epi)
        oo, ob, ov = _split_o3(sch, o, how)
        wo, wi = sch.split(ow, how.p(sch, ow))
        # pixels outside, the channel vector inside, as the accumulators hold it (schedules/x86.py's reason)
        sch.reorder(n, oo, oh, wo, ob, wi, ov)
        outer, tile_loop = fuse_row_tasks(sch, [n, oo, oh], wo, num_cores)
        vec, unr = ov, [wi]
        if total is not None:
            sum_along_pixels(sch, epi, total, tile_loop)
    else:  # binary_conv2d_bits
        n, oh, ow, w, b = sch.get_loops(epi)
        wo, wi = sch.split(ow, how.p(sch, ow))
        bo, bb, bv = _split_o3(sch, b, how)
        sch.reorder(n, w, oh, wo, bo, wi, bb, bv)
        outer = sch.fuse(n, w, oh, wo)
        tile_loop, vec, unr = bo, None, []
    sch.parallel(outer)
    if vec is not None and _extent(sch, vec) > 1:
        sch.vectorize(vec)
    if unroll:
        for lp in unr:
            sch.unroll(lp)
    return tile_loop


def _block_inner(sch, block, anchor, lanes, unroll: bool, unroll_words: int = 0):
    """Under ``anchor``: the register block of ``block`` (``loops.register_block``), and its innermost reductions
    unrolled up to ``unroll_words`` words. Returns (first reduction loop, last reduction loop)."""
    reds = register_block(sch, block, anchor, _channel_iter(sch, block), lanes, unroll)
    if unroll:
        words = 1
        for k in range(len(reds) - 1, -1, -1):  # the innermost reductions, up to unroll_words words: constant offsets
            ext = _extent(sch, reds[k])
            if words * ext > unroll_words:  # a long word loop (dense): unroll a divisor of it
                d = _largest_divisor(ext, max(1, unroll_words // words))
                if d > 1:
                    outer_, inner_ = sch.split(reds[k], [None, d])
                    sch.unroll(inner_)
                    reds = reds[:k] + [outer_, inner_] + reds[k + 1:]
                break
            words *= ext
            sch.unroll(reds[k])
    return (reds[0], reds[-1]) if reds else (None, None)


def _channel_iter(sch, block) -> int:
    """Index of the output-channel iterator of ``popcount`` / ``bytes``: the last of the output's (n, oh, ow, o) /
    (m, n), which both blocks start with (``bytes`` then has its group iterators, spatial too)."""
    rank = sum(1 for iv in sch.get(sch.get_sblock("popcount")).iter_vars if int(iv.iter_type) == 0)
    spatial = [i for i, iv in enumerate(sch.get(block).iter_vars) if int(iv.iter_type) == 0]
    return spatial[rank - 1]




def _schedule(sch, op: str, how, num_cores: int, unroll: bool = True):
    sch.compute_inline(sch.get_sblock("dot"))
    tile_loop = _tile(sch, op, how, num_cores, unroll)
    pop = sch.get_sblock("popcount")
    byt = sch.get_sblock("bytes")
    sch.compute_at(pop, tile_loop, preserve_unit_loops=True)
    first, last = _block_inner(sch, pop, tile_loop, how.out_lanes, unroll)
    anchor = last if last is not None else tile_loop
    sch.compute_at(byt, anchor, preserve_unit_loops=True)
    bfirst, _ = _block_inner(sch, byt, anchor, how.lanes, unroll, how.unroll_words)
    if bfirst is not None:
        sch.decompose_reduction(byt, bfirst)
    if first is not None:
        sch.decompose_reduction(pop, first)
    for name in ("pad", "pad_nibbles", "pad_lanes"):
        pad = _try(sch.get_sblock, name)
        if pad is not None:
            loops = sch.get_loops(pad)
            if _extent(sch, loops[-1]) > 1:
                _try(sch.vectorize, loops[-1])
            parallelize_outer(sch, pad, min_parallel=4 * num_cores)
    weights_t = _try(sch.get_sblock, "weights_t")  # none when laid out at compile time
    if weights_t is not None:
        parallelize_outer(sch, weights_t, min_parallel=4 * num_cores)
    _try(_schedule_channel_tables, sch, how.lanes)
    return sch


MAX_ADJUST_UNROLL = 100  # (border class, tap) pairs of the padding correction unrolled into constant code


def _schedule_channel_tables(sch, lanes: int):
    """``popw`` (popcount per filter tap) and ``pad_adjust`` (the border correction): channels innermost and
    vectorised, the border classes and taps outside, unrolled when few, so each tap's inside/outside test is a
    constant (as in schedules/cortexm.py): about 1 % of the conv's instructions instead of 3 %."""
    vec = 4 * lanes // 2 if lanes > 1 else 1  # int32 lanes of one vector
    popw = sch.get_sblock("popw")
    i, j, o, rc = sch.get_loops(popw)
    sch.reorder(i, j, rc, o)
    if _extent(sch, o) % vec == 0 and vec > 1:
        _, ov = sch.split(o, [None, vec])
        sch.vectorize(ov)
    sch.decompose_reduction(popw, rc)
    adj = sch.get_sblock("pad_adjust")
    ch, cwl, o, ak, aj = sch.get_loops(adj)
    sch.reorder(ch, cwl, ak, aj, o)
    if _extent(sch, o) % vec == 0 and vec > 1:
        _, ov = sch.split(o, [None, vec])
        sch.vectorize(ov)
    if _extent(sch, ch) * _extent(sch, cwl) * _extent(sch, ak) * _extent(sch, aj) <= MAX_ADJUST_UNROLL:
        for lp in (ch, cwl, ak, aj):
            sch.unroll(lp)
    sch.decompose_reduction(adj, ak)


def schedule_form(form: tirx.PrimFunc, op: str, knobs: Knobs, num_cores: int) -> tirx.PrimFunc:
    sch = s_tir.Schedule(form)
    _schedule(sch, op, _Fixed(fit_knobs(sch, op, knobs), FLAVOURS[str(form.attrs[FORM_ATTR])]), num_cores,
              knobs.unroll)
    return sch.mod["main"]


def schedule_kernel(func, op: str, fl: Flavour, num_cores: int, knobs: Knobs | None = None):
    """``func`` (one of our binary kernels, generic TE) rebuilt in the byte-lane form and scheduled; None when its
    parameters cannot be known (the caller keeps its own schedule)."""
    form = func if func.attrs is not None and FORM_ATTR in func.attrs else build_form(func, op, fl)
    if form is None:
        return None
    return schedule_form(form, op, knobs or default_knobs(fl, op), num_cores)


def design_space(sch: s_tir.Schedule, op: str, num_cores: int) -> s_tir.Schedule:
    """MetaSchedule design space of a byte-lane kernel (``FORM_ATTR`` set): the register block sampled."""
    fl = FLAVOURS[str(sch.mod["main"].attrs[FORM_ATTR])]
    _, o_ext = _extents(sch, op)
    lanes = _largest_divisor(o_ext, fl.vector_words)
    _schedule(sch, op, _Sampled(lanes, _largest_divisor(o_ext, fl.out_lanes) if lanes > 1 else 1, fl), num_cores)
    return sch
