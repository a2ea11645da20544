"""x86 schedules of the bit-packed kernels.

The binary layers are bit-GEMMs, ``popcount[.., p, o] = sum_r popcount(x[p, r] ^ w[o, r])`` over packed words ``r``
(see ops/binary_conv2d.py and ops/binary_dense.py for the TE, laid out for these schedules). The schedule

* tiles the output into register blocks of ``tile_p`` pixels (conv: along OW) / rows (dense) x ``tile_o`` output
  channels; the outer tile loops are fused and run in parallel over the cores;
* conv: vectorises over output channels (``vector`` lanes, weights transposed to [KH, KW, CW, O] inside the kernel):
  each input word is broadcast and XORed with a vector of filters, ``vpopcntq`` + ``vpaddq`` into uint64
  accumulators, no horizontal sums, no narrowing in the hot loop;
* dense: vectorises over the packed K words (rfactor of the word axis into ``vector`` lanes), one horizontal lane
  sum per output; ``block_o`` weight rows are kept in L1 while all rows of x stream past them;
* unrolls the register block so LLVM keeps the accumulators in registers, and computes the epilogue (scale/bias,
  or threshold-and-pack into bits) per tile straight from them;
* conv padding costs nothing in the interior: the kernel reads a zero-padded copy of the input and adds a per
  border-class correction (ops/binary_conv2d.py).

``vector=1`` is scalar ``popcnt`` (CPUs without a vector popcount). On AVX2 without VPOPCNTDQ and on NEON the binary
kernels are rebuilt in the byte-lane form of schedules/simd_bytes.py (``simd_flavour``; ``TVM_BNN_SIMD_BYTES=0``
keeps the generic TE below, for comparisons). All knobs are explicit (:class:`Knobs`):
:func:`schedule_kernel` picks defaults per target (:func:`default_knobs`), :func:`design_space` samples the same
knobs for MetaSchedule. bitpack (NCHW) is vectorised over W; maxpool/bitpack rows are parallelised.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import tvm
from tvm import s_tir

from . import simd_bytes
from .loops import fuse_row_tasks, loop_kinds, parallelize_outer, register_block, residual_blocks, sum_along_pixels

L1_BYTES = 32 * 1024
BINARY_OPS = ("binary_conv2d", "binary_conv2d_bits", "binary_dense", "binary_dense_bits", "ternary_conv2d")
FLOAT_CONV_OPS = ("binary_conv2d", "ternary_conv2d")  # conv kernels with a float NCHW output


@dataclass(frozen=True)
class Knobs:
    tile_p: int = 4  # output pixels (conv) / rows (dense) per register block
    tile_o: int = 4  # output channels per register block
    vector: int = 8  # uint64 lanes per popcount vector (1: scalar popcnt)
    unroll: bool = True  # unroll the register block (keeps accumulators in registers)
    block_o: int = 0  # dense: output channels per cache block (their weight rows stay in L1); 0 = from L1 size


# ---------------------------------------------------------------------------------------------------------- helpers


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - a block this kernel variant does not have
        return None


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _divisor_le(n: int, limit: int) -> int:
    """The largest divisor of n that is <= limit."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def popcount_isa(target=None) -> str:
    """"avx512" (vpopcntq), "avx2" (vector popcount via pshufb nibble tables), "neon" (ARM ``cnt`` on 128-bit
    vectors) or "scalar" (popcnt), from the target's LLVM triple and CPU features (``target`` defaults to
    ``Target.current()``, which is set during the build)."""
    from tvm.target import codegen

    target = target if target is not None else tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        return "avx512"
    if is_arm(target):
        return "neon"
    if str(target.attrs.get("mtriple", "")).startswith("thumb") or "-none-" in str(target.attrs.get("mtriple", "")):
        return "scalar"
    try:
        if codegen.target_has_features(["avx512vpopcntdq"], target):
            return "avx512"
        if codegen.target_has_features(["avx2"], target):
            return "avx2"
    except Exception:  # noqa: BLE001 - a target LLVM cannot describe: the portable choice
        pass
    return "scalar"


def simd_flavour(target=None):
    """The byte-lane kernels (schedules/simd_bytes.py) for targets without a 64-bit vector popcount: "avx2" (x86 with
    AVX2, no VPOPCNTDQ), "aarch64" / "dotprod" (aarch64 NEON, with the dot product extension) or "armv7"; None
    for the others (AVX-512 VPOPCNTDQ keeps vpopcntq, scalar popcnt targets the generic TE) or when
    ``TVM_BNN_SIMD_BYTES=0`` (the generic kernels, for comparisons)."""
    import os

    if os.environ.get("TVM_BNN_SIMD_BYTES", "1") == "0":
        return None
    target = target if target is not None else tvm.target.Target.current(allow_none=True)
    isa = popcount_isa(target)
    if isa == "avx2":
        return simd_bytes.FLAVOURS["avx2"]
    if isa != "neon":
        return None
    if not str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return simd_bytes.FLAVOURS["armv7"]
    from tvm.target import codegen

    try:
        dot = codegen.target_has_features(["dotprod"], target)
    except Exception:  # noqa: BLE001
        dot = False
    return simd_bytes.FLAVOURS["dotprod" if dot else "aarch64"]


def is_arm(target) -> bool:
    """An ARM application core (A-profile: NEON); M-profile microcontrollers (thumbv6m/v7m/v7em/v8m, "-none-"
    triples) have no vector unit: their popcount is scalar."""
    triple = str(target.attrs.get("mtriple", "")) if target is not None else ""
    if triple.startswith(("thumbv6m", "thumbv7m", "thumbv7em", "thumbv8m", "thumbv8.1m")) or "-none-" in triple:
        return False
    return triple.startswith(("aarch64", "arm", "thumb"))


def default_knobs(op: str, func, target=None) -> Knobs:
    """The default (untuned) knobs, measured on Zen 4 for each popcount ISA (bench/kernels.py; the ternary conv on
    Zen 5):

    * conv (vectorised over output channels): avx512 8 pixels (fit_knobs shrinks them to a divisor of OW: 7 for
      28/14/7, 8 for 56) x 16 channels in 2 zmm for the bits output and 7x7 maps, x 8 channels for the float
      output (its NCHW stores prefer it); avx2 4 x 8 channels in ymm (LLVM's pshufb popcount); scalar 2 x 8;
    * dense (vectorised over K words): avx512 8 lanes (one zmm; or the whole word axis when it is short and not a
      multiple of 8), 2 x 4 blocks (4 x 4 for <= 4 lanes); avx2 4 lanes, 2 x 4; scalar popcnt, 2 x 4;
    * neon (128-bit ``cnt``: 2 uint64 lanes): conv 4 pixels x 8 channels (16 q-register accumulators of the 32 on
      aarch64; armv7's 16 q registers get 2 x 8), dense 2 lanes, 2 x 4.
    """
    isa = popcount_isa(target)
    if isa == "neon":
        wide = str(target.attrs.get("mtriple", "")).startswith("aarch64")
        if op.startswith(FLOAT_CONV_OPS) and _channels(func):
            return Knobs(tile_p=4 if wide else 2, tile_o=8, vector=2)
        return Knobs(tile_p=2, tile_o=4, vector=_divisor_le(_reduction_words(func), 2))
    words = _reduction_words(func)
    if op.startswith(FLOAT_CONV_OPS) and _channels(func):
        if isa == "avx512" and op == "ternary_conv2d":
            # two filter vectors (sign, mask) per word: more pixels share them (28x28x256 on Zen 5: 14 x 8 in
            # 0.126 ms, 7 x 8 0.157, 7 x 16 0.208)
            return Knobs(tile_p=16, tile_o=8, vector=8)
        if isa == "avx512":
            # float output (NCHW stores): 8 channels per block, unless one pixel tile covers the row (7x7 maps)
            sch = s_tir.Schedule(func)
            ow = int(sch.get(sch.get_sblock(op)).iter_vars[-1].dom.extent)  # float output: (n, o, oh, ow)
            wide = op.endswith("bits") or _divisor_le(ow, 8) == ow
            return Knobs(tile_p=8, tile_o=16 if wide else 8, vector=8)
        return {"avx2": Knobs(tile_p=4, tile_o=8, vector=4), "scalar": Knobs(tile_p=2, tile_o=8, vector=1)}[isa]
    if isa == "scalar":
        return Knobs(tile_p=2, tile_o=4, vector=1)
    if isa == "avx2":
        return Knobs(tile_p=2, tile_o=4, vector=4)
    vector = _divisor_le(words, 8)
    if vector < 8 and words <= 16:
        vector = words
    return Knobs(tile_p=4 if vector <= 4 else 2, tile_o=4, vector=vector)


def tuning_form(func, target=None):
    """The PrimFunc MetaSchedule tunes for one of our binary kernels: its byte-lane form where the target takes one
    (``simd_flavour``), so that the design space (``simd_bytes.design_space``) and the database records are of the
    kernel the build uses; ``func`` itself otherwise (and for every other PrimFunc)."""
    attrs = func.attrs
    if attrs is None or not simd_bytes.takes_form(func, str(attrs.get("tvm_bnn.op", ""))) or \
            simd_bytes.FORM_ATTR in attrs or not _has_block(func, "dot"):
        return func
    flavour = simd_flavour(target)
    form = simd_bytes.build_form(func, str(attrs["tvm_bnn.op"]), flavour) if flavour is not None else None
    return form if form is not None else func


def _has_block(func, name: str) -> bool:
    return _try(s_tir.Schedule(func).get_sblock, name) is not None


def _channels(func) -> bool:
    """A conv vectorised over output channels: it transposes its filters (``weights_t``) or reads them transposed
    at compile time (schedules/weight_layout.py)."""
    attrs = func.attrs
    if attrs is not None and "tvm_bnn.params" in attrs:
        params = json.loads(str(attrs["tvm_bnn.params"]))
        if params.get("prepared") or params.get("layout") == "HWIO":  # ternary filters: output channels innermost
            return True
    return _has_block(func, "weights_t")


def _reduction_words(func) -> int:
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("popcount")
    return int(sch.get(block).iter_vars[-1].dom.extent)


# ---------------------------------------------------------------------------------------------------- bit-GEMM core


def _schedule_popcount(sch, tile_loop, vector, unroll: bool):
    """Move ``popcount`` (and its rfactor block) under ``tile_loop`` and block it in registers.

    ``vector``: lanes (an int, 1 = scalar), or a function(loop) -> split factors of the word loop (sampling)."""
    pop = sch.get_sblock("popcount")
    if callable(vector) or vector > 1:
        red = [lp for lp, is_red, _ in loop_kinds(sch, pop) if is_red]
        ro, ri = sch.split(red[-1], vector(red[-1]) if callable(vector) else [None, vector])
        n_spatial = sum(1 for iv in sch.get(pop).iter_vars if int(iv.iter_type) == 0)
        rf = sch.rfactor(ri, n_spatial)
        sch.compute_at(pop, tile_loop, preserve_unit_loops=True)
        sch.compute_at(rf, tile_loop, preserve_unit_loops=True)
        # rf: reductions outside, the register block inside, the lanes innermost
        kinds = loop_kinds(sch, rf, tile_loop)
        lane = [lp for lp, _, iv in kinds if iv == 0][0]  # rfactor makes the lane axis the first block iter
        spatial = [lp for lp, is_red, iv in kinds if not is_red and iv != 0]
        reds = [lp for lp, is_red, _ in kinds if is_red]
        sch.reorder(*reds, *spatial, lane)
        sch.vectorize(lane)
        if unroll:
            for lp in spatial:
                sch.unroll(lp)
        # final lane sum: output loops outside, lanes inside, all unrolled
        kinds = loop_kinds(sch, pop, tile_loop)
        sp = [lp for lp, is_red, _ in kinds if not is_red]
        rd = [lp for lp, is_red, _ in kinds if is_red]
        sch.reorder(*sp, *rd)
        if unroll:
            for lp in sp + rd:
                sch.unroll(lp)
        if reds:
            sch.decompose_reduction(rf, reds[0])
    else:
        sch.compute_at(pop, tile_loop, preserve_unit_loops=True)
        kinds = loop_kinds(sch, pop, tile_loop)
        spatial = [lp for lp, is_red, _ in kinds if not is_red]
        reds = [lp for lp, is_red, _ in kinds if is_red]
        sch.reorder(*reds, *spatial)
        if unroll:
            for lp in spatial:
                sch.unroll(lp)
        if reds:
            sch.decompose_reduction(pop, reds[0])


def _schedule_popcount_channels(sch, tile_loop, lanes, unroll: bool):
    """Conv with weights transposed to [KH, KW, CW, O]: the register block is ``tile_p`` pixels x ``tile_o``
    channels, the channels split into vectors of ``lanes`` (``loops.register_block``)."""
    pop = sch.get_sblock("popcount")
    sch.compute_at(pop, tile_loop, preserve_unit_loops=True)
    reds = register_block(sch, pop, tile_loop, 2, lanes, unroll)  # popcount iters: (n, p, o | rkh, rkw, rcw)
    if reds:
        sch.decompose_reduction(pop, reds[0])


def _schedule_conv_prologue(sch, num_cores: int, isa: str):
    """The small stages of the padded conv: the padded input copy, popcount(w) per tap, the border table."""
    pad = _try(sch.get_sblock, "pad")
    if pad is not None:
        loops = sch.get_loops(pad)
        if _extent(sch, loops[-1]) > 1:
            _try(sch.vectorize, loops[-1])
        parallelize_outer(sch, pad, min_parallel=4 * num_cores)
    wt = _try(sch.get_sblock, "weights_t")
    if wt is not None:
        parallelize_outer(sch, wt, min_parallel=4 * num_cores)
    if isa == "avx512":  # small per-channel tables: reductions outside, channels vectorised (vpopcntq)
        for name in ("popw", "pad_adjust"):
            _try(_vectorize_channel_table, sch, name)


def _vectorize_channel_table(sch, name: str):
    block = sch.get_sblock(name)
    kinds = loop_kinds(sch, block)
    spatial = [lp for lp, is_red, _ in kinds if not is_red]
    reds = [lp for lp, is_red, _ in kinds if is_red]
    sch.reorder(*spatial[:-1], *reds, spatial[-1])
    _, lane = sch.split(spatial[-1], [None, _divisor_le(_extent(sch, spatial[-1]), 16)])
    sch.vectorize(lane)
    if reds:
        sch.decompose_reduction(block, reds[0])


class _Fixed:
    """Split factors from fixed knobs."""

    def __init__(self, knobs: Knobs, isa: str):
        self.knobs = knobs
        self.isa = isa
        self.vector = knobs.vector

    def p(self, sch, loop):
        return [None, self.knobs.tile_p]

    def o(self, sch, loop):
        return [None, self.knobs.tile_o]

    def o_block(self, sch, loop):
        return [None, self.knobs.block_o // self.knobs.tile_o, self.knobs.tile_o]

    def o3(self, sch, loop):
        """(blocks, vectors per block, lanes) of an output-channel loop."""
        self.lanes = self.knobs.vector
        return [None, self.knobs.tile_o // self.knobs.vector, self.knobs.vector]


class _Sampled:
    """Split factors sampled by MetaSchedule (``sample_perfect_tile``): the same knobs as :class:`Knobs`."""

    def __init__(self, sch, isa: str, words: int):
        self.isa = isa
        self.vector = 1 if isa == "scalar" or words == 1 else (
            lambda loop: sch.sample_perfect_tile(loop, n=2, max_innermost_factor=16))

    def o3(self, sch, loop):
        if self.isa == "scalar":
            self.lanes = 1
            return list(sch.sample_perfect_tile(loop, n=2, max_innermost_factor=8)) + [1]
        f = sch.sample_perfect_tile(loop, n=3, max_innermost_factor=16)
        self.lanes = f[2]
        return f

    def p(self, sch, loop):
        return sch.sample_perfect_tile(loop, n=2, max_innermost_factor=8)

    def o(self, sch, loop):
        return sch.sample_perfect_tile(loop, n=2, max_innermost_factor=16)

    def o_block(self, sch, loop):
        return sch.sample_perfect_tile(loop, n=3, max_innermost_factor=16)


def _apply(sch, op: str, how, num_cores: int, unroll: bool = True):
    _try(lambda: sch.compute_inline(sch.get_sblock("dot")))
    channels = _channels(sch.mod["main"])
    epi, residual = residual_blocks(sch, op, inline=not channels)
    epilogue_loops = None
    if op == "binary_dense":
        m, n = sch.get_loops(epi)
        mo, mi = sch.split(m, how.p(sch, m))
        nb, no, ni = sch.split(n, how.o_block(sch, n))
        sch.reorder(nb, mo, no, mi, ni)
        outer = sch.fuse(nb, mo)
        tile_loop = no
    elif op == "binary_dense_bits":
        m, w, b = sch.get_loops(epi)
        mo, mi = sch.split(m, how.p(sch, m))
        bo, bi = sch.split(b, how.o(sch, b))
        sch.reorder(mo, w, bo, mi, bi)
        outer = sch.fuse(mo, w)
        tile_loop = bo
    elif op in FLOAT_CONV_OPS and channels:
        n, o, oh, ow = sch.get_loops(epi)
        oo, ob, ov = sch.split(o, how.o3(sch, o))
        wo, wi = sch.split(ow, how.p(sch, ow))
        # epilogue: pixels outside, the channel vector inside, as the accumulators hold it; LLVM transposes the
        # tile in registers for the NCHW stores (measured ~20% faster on the whole conv than a pixel-inner loop,
        # whose scalar gathers from the spilled accumulators cost as much as a quarter of the popcounts)
        sch.reorder(n, oo, oh, wo, ob, wi, ov)
        outer, tile_loop = fuse_row_tasks(sch, [n, oo, oh], wo, num_cores)
        epilogue_loops = (wi, ov)
        if residual is not None:
            sum_along_pixels(sch, epi, residual, tile_loop)
    elif op == "binary_conv2d_bits" and channels:
        n, oh, ow, w, b = sch.get_loops(epi)
        wo, wi = sch.split(ow, how.p(sch, ow))
        bo, bb, bv = sch.split(b, how.o3(sch, b))
        sch.reorder(n, w, oh, wo, bo, wi, bb, bv)
        outer = sch.fuse(n, w, oh, wo)
        tile_loop = bo
    elif op == "binary_conv2d":
        n, o, oh, ow = sch.get_loops(epi)
        oo, oi = sch.split(o, how.o(sch, o))
        wo, wi = sch.split(ow, how.p(sch, ow))
        sch.reorder(n, oo, oh, wo, oi, wi)
        outer = sch.fuse(n, oo, oh, wo)
        tile_loop = outer
    elif op == "binary_conv2d_bits":
        n, oh, ow, w, b = sch.get_loops(epi)
        wo, wi = sch.split(ow, how.p(sch, ow))
        bo, bi = sch.split(b, how.o(sch, b))
        sch.reorder(n, w, oh, wo, bo, wi, bi)
        outer = sch.fuse(n, w, oh, wo)
        tile_loop = bo
    else:
        raise ValueError(op)
    sch.parallel(outer)
    if epilogue_loops is not None and not (isinstance(how.lanes, int) and how.lanes == 1):
        pixels, lanes = epilogue_loops
        sch.vectorize(lanes)
        if unroll:
            sch.unroll(pixels)
    _schedule_conv_prologue(sch, num_cores, how.isa)
    if channels:
        _schedule_popcount_channels(sch, tile_loop, how.lanes, unroll)
    else:
        _schedule_popcount(sch, tile_loop, how.vector, unroll)
    return sch


def schedule_binary(func, op: str, knobs: Knobs, num_cores: int, target=None):
    """The bit-GEMM kernels with explicit knobs (shrunk to divisors of the extents by fit_knobs)."""
    sch = s_tir.Schedule(func)
    _apply(sch, op, _Fixed(fit_knobs(sch, op, knobs), popcount_isa(target)), num_cores, knobs.unroll)
    return sch.mod["main"]


def fit_knobs(sch, op: str, knobs: Knobs) -> Knobs:
    """Shrink the knobs to divisors of this kernel's extents (so no tile needs a bounds check)."""
    pop = sch.get(sch.get_sblock("popcount"))
    ivs = pop.iter_vars
    spatial = [int(iv.dom.extent) for iv in ivs if int(iv.iter_type) == 0]
    words = int(ivs[-1].dom.extent)
    out = sch.get(sch.get_sblock(op))
    if op == "binary_dense":
        p_ext, o_ext = spatial[0], spatial[1]
    elif op == "binary_dense_bits":
        p_ext, o_ext = spatial[0], 64
    elif op in FLOAT_CONV_OPS:
        p_ext, o_ext = int(out.iter_vars[3].dom.extent), int(out.iter_vars[1].dom.extent)
    else:
        p_ext, o_ext = int(out.iter_vars[2].dom.extent), 64
    tile_p, tile_o = _divisor_le(p_ext, knobs.tile_p), knobs.tile_o
    if tile_p < knobs.tile_p and _divisor_le(p_ext, 8) > knobs.tile_p:
        # e.g. 7x7 maps with a 2 x 4 block: 7 x 2 (measured 25% faster than 1 x 4 on Zen 4)
        tile_p = _divisor_le(p_ext, 8)
        tile_o = -(-knobs.tile_p * knobs.tile_o // tile_p)
    if _channels(sch.mod["main"]):  # conv, vectorised over output channels
        vector = _divisor_le(o_ext, knobs.vector)
        tile_o = vector * _divisor_le(o_ext // vector, max(1, tile_o // vector))
        return Knobs(tile_p=tile_p, tile_o=tile_o, vector=vector, unroll=knobs.unroll)
    tile_o = _divisor_le(o_ext, tile_o)
    block_o = knobs.block_o or max(tile_o, L1_BYTES // 2 // (8 * words))
    block_o = tile_o * _divisor_le(o_ext // tile_o, max(1, block_o // tile_o))
    return Knobs(tile_p=tile_p, tile_o=tile_o, vector=_divisor_le(words, knobs.vector),
                 unroll=knobs.unroll, block_o=block_o)


def design_space(sch: s_tir.Schedule, target=None, num_cores: int | None = None) -> s_tir.Schedule:
    """MetaSchedule design space of a binary kernel (``ms.space_generator.ScheduleFn(design_space)``): the same
    schedule as :func:`schedule_kernel` with the knobs sampled (``sample_perfect_tile``): register block
    (pixels/rows x channels), vector lanes (the inner factor of the word axis), dense cache block. Kernels that
    are not bit-GEMMs get their fixed schedule. ``target``/``num_cores`` default to ``Target.current()``."""
    target = target if target is not None else tvm.target.Target.current(allow_none=True)
    if num_cores is None:
        num_cores = int(target.attrs.get("num-cores", 1)) if target is not None else 1
    func = sch.mod["main"]
    op = str(func.attrs["tvm_bnn.op"]) if func.attrs is not None and "tvm_bnn.op" in func.attrs else None
    if op in BINARY_OPS and func.attrs is not None and simd_bytes.FORM_ATTR in func.attrs:
        simd_bytes.design_space(sch, op, num_cores)  # a byte-lane kernel (see tuning_form): its register block
    elif op in BINARY_OPS:
        _apply(sch, op, _Sampled(sch, popcount_isa(target), _reduction_words(func)), num_cores)
    elif op is not None:
        _schedule_simple(sch, op, num_cores)
    return sch


# ------------------------------------------------------------------------------------------------ the other kernels


def bitpack_lanes(width: int, limit: int) -> int:
    """Words per vector of the NCHW bitpack along a row of ``width``: the largest power of two dividing it (at most
    ``limit``; 56 -> 8), else its largest divisor. A vector of 14 or 7 uint64 is no whole number of registers: LLVM
    kept such accumulators in general registers and rebuilt the vector every step (2x slower at 56x56x64)."""
    pow2 = 1
    while pow2 * 2 <= limit and width % (pow2 * 2) == 0:
        pow2 *= 2
    return pow2 if pow2 >= 2 else _divisor_le(width, limit)


def _schedule_bitpack_nchw(sch, num_cores: int, lanes: int = 16):
    """float NCHW -> packed NHWC words: vectorised over W (contiguous in the input), one compare + select + or
    per input element into a register-resident row of words, then one strided store per word."""
    block = sch.get_sblock("bitpack")
    local = sch.cache_write(block, 0, "local")
    n, h, w, cw = sch.get_loops(local)
    wo, wi = sch.split(w, [None, bitpack_lanes(_extent(sch, w), lanes)])
    sch.reorder(n, h, wo, cw, wi)
    sch.compute_at(block, cw, preserve_unit_loops=True)
    kinds = loop_kinds(sch, block, cw)
    lane = [lp for lp, _, iv in kinds if iv == 2][0]  # the W axis of (n, h, w, cw | b)
    others = [lp for lp, is_red, iv in kinds if not is_red and iv != 2]
    reds = [lp for lp, is_red, _ in kinds if is_red]
    sch.reorder(*reds, *others, lane)
    sch.vectorize(lane)
    sch.vectorize(wi)
    sch.parallel(sch.fuse(n, h, wo))
    sch.decompose_reduction(block, reds[0])
    return sch


def _schedule_simple(sch, op: str, num_cores: int):
    if op == "bitpack_nchw":
        return _schedule_bitpack_nchw(sch, num_cores)
    for name in ("bitpack", "binary_maxpool"):
        block = _try(sch.get_sblock, name)
        if block is not None:
            parallelize_outer(sch, block, min_parallel=4 * num_cores)
    return sch


# ------------------------------------------------------------------------------------------------------ entry points


def schedule_kernel(func, op: str, num_cores: int, target=None, knobs: Knobs | None = None):
    """Schedule one tvm_bnn kernel for x86. ``target`` defaults to ``Target.current()`` (set during the build)."""
    target = target if target is not None else tvm.target.Target.current(allow_none=True)
    if op in BINARY_OPS:
        if not _has_block(func, "dot"):
            return func  # already scheduled (``dot`` is always inlined), e.g. a PrimFunc from a tuning database
        flavour = simd_flavour(target) if simd_bytes.takes_form(func, op) else None
        if flavour is not None:  # byte-lane counters: AVX2 without VPOPCNTDQ, NEON
            simd = None if knobs is None else simd_bytes.Knobs(knobs.tile_p, knobs.tile_o, knobs.vector, knobs.unroll)
            scheduled = simd_bytes.schedule_kernel(func, op, flavour, num_cores, simd)
            if scheduled is not None:
                return scheduled
        return schedule_binary(func, op, knobs or default_knobs(op, func, target), num_cores, target)
    try:
        sch = s_tir.Schedule(func)
        _schedule_simple(sch, op, num_cores)
    except Exception:  # noqa: BLE001 - a shape the specialised schedule does not handle: the generic one
        sch = s_tir.Schedule(func)
        for name in ("bitpack", "binary_maxpool"):
            block = _try(sch.get_sblock, name)
            if block is not None:
                parallelize_outer(sch, block, min_parallel=4 * num_cores)
    return sch.mod["main"]
