"""NEON schedules of the float convs a BNN keeps (the stem, the 1x1 shortcut projections) for ARM targets.

The x86 conv schedule (``float_x86``) vectorises along the output width, which suits 16-lane AVX-512 at 56-112
pixels but leaves a 14- or 7-pixel row scalar with 4-lane NEON, and broadcasts one weight per FMA. Here the vector
runs over *output channels* instead (4 fp32 lanes per q register; every BNN width is a multiple of 4):

* the weights are copied once per call into ``[O / fi, C, KH, KW, fi]`` (``fi`` output channels contiguous), so a
  register block loads ``fi / 4`` weight vectors per reduction step;
* a register block is ``fi`` output channels x ``xi`` output pixels of one row: ``fi / 4 * xi`` q-register
  accumulators (the budget per architecture and kernel size is :class:`Neon`'s), each input pixel loaded once per
  step and multiplied (``fmla`` by element or ``ld1r`` + ``fmla``; ``vld1.32 {d[]}`` + ``vfma.f32`` on armv7) into
  ``fi / 4`` accumulators, with an explicit fused multiply-add (:func:`fused_multiply_add`);
* the reduction (input channels, kernel rows, kernel columns; on armv7 kernel rows, kernel columns, input channels
  when there are enough channels) runs outside the register block, the block is unrolled so LLVM keeps the
  accumulators in registers, and the epilogue (BatchNorm arithmetic, bias, ReLU, a residual add: whatever
  injective chain FuseOps put after the conv) is computed from the accumulators per block, vectorised over the
  same channels, so the conv result is never written to memory before it;
* the zero-padded input (topi's ``pad_temp``) stays a separate pass when there is padding (a pure copy is
  inlined), so the hot loop has no bounds tests.

``schedule_float`` tries this for a ``conv2d_nchw`` whose output channels are a multiple of 4 and otherwise hands
the PrimFunc to ``float_x86`` with the NEON register budget (matmul, pooling, elementwise, convs with odd channel
counts). Any exception sends ``generic.schedule_generic`` to its fallback, so an unexpected PrimFunc never breaks
the build.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx

from . import float_x86
from .float_x86 import NotApplicable, VectorISA

LANES = 4  # fp32 lanes of a 128-bit NEON register
_MAX_PIXELS = 8  # output pixels per register block


@dataclass(frozen=True)
class Neon:
    """Register-block budget and reduction order of one NEON flavour, chosen by instruction counts (bare-metal
    QEMU, ``bench/arm.py``; the Bi-Real stem, its 1x1 shortcuts and 3x3 convs of 64-512 channels).

    ``acc_*`` bound the q-register accumulators of a block. AArch64 (32 q registers): LLVM unrolls the kernel-width
    loop and reuses each loaded input pixel across the taps, so the reduction runs (C, KH, KW) and up to 24
    accumulators fit (28 for a 1x1 conv, which has no taps to interleave). armv7 (16 q registers): a broadcast load
    (``vld1.32 {d[]}``) has no immediate offset, so every pixel of a block needs an address register, and the
    unrolled taps of (C, KH, KW) spill beyond 4 accumulators; with C innermost (KH, KW, C) one tap per loop
    iteration fits 8, which wins once there are ``channels_inner_from`` input channels (not for an RGB stem)."""

    isa: VectorISA  # for the float_x86 schedules of the rest (matmul, pooling, convs with odd channel counts)
    acc_1x1: int
    acc_taps: int  # a larger kernel, reduction (C, KH, KW)
    acc_channels_inner: int  # a larger kernel, reduction (KH, KW, C)
    channels_inner_from: int  # input channels from which a larger kernel runs C innermost (0: never)
    prefer_channels: bool  # of two blocks with the same FMA share, take the one with more channels


NEON_A64 = Neon(VectorISA(LANES, 24), acc_1x1=28, acc_taps=24, acc_channels_inner=24, channels_inner_from=0,
                prefer_channels=True)
NEON_A32 = Neon(VectorISA(LANES, 12), acc_1x1=14, acc_taps=4, acc_channels_inner=8, channels_inner_from=8,
                prefer_channels=False)


def neon_isa(target) -> Neon | None:
    """The NEON flavour of an ARM LLVM target, or None for any other target."""
    if target is None or target.kind.name != "llvm":
        return None
    triple = str(target.attrs.get("mtriple", ""))
    if triple.startswith("aarch64"):
        return NEON_A64
    if triple.startswith(("armv7", "armv8", "thumbv7a", "thumbv8a")):
        mattr = [str(a) for a in target.attrs.get("mattr", [])]
        return NEON_A32 if "+neon" in mattr else None
    return None


def has_fma(target) -> bool:
    """Whether ``target`` has vector fused multiply-add (AArch64 always; armv7 with VFPv4, e.g. Cortex-A7)."""
    if target is None:
        return False
    if str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return True
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features("vfp4", target))
    except Exception:  # noqa: BLE001 - not an LLVM ARM target
        return False


def _rebuild(stmt, fblock):
    """``stmt`` with every SBlock replaced by ``fblock(block)`` (loops, sequences and branches rebuilt around it)."""
    if isinstance(stmt, s_tir.SBlockRealize):
        return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, _rebuild(stmt.block, fblock))
    if isinstance(stmt, s_tir.SBlock):
        init = _rebuild(stmt.init, fblock) if stmt.init is not None else None
        block = s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, _rebuild(stmt.body, fblock),
                             init, stmt.alloc_buffers, stmt.match_buffers, stmt.annotations)
        return fblock(block)
    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([_rebuild(x, fblock) for x in stmt.seq])
    if isinstance(stmt, tirx.For):
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, _rebuild(stmt.body, fblock),
                        stmt.thread_binding, stmt.annotations, getattr(stmt, "step", None))
    if isinstance(stmt, tirx.IfThenElse):
        return tirx.IfThenElse(stmt.condition, _rebuild(stmt.then_case, fblock),
                               _rebuild(stmt.else_case, fblock) if stmt.else_case is not None else None)
    return stmt


def _loaded_buffer(expr):
    """The buffer ``expr`` loads from (a BufferLoad's ``buffer``, a TensorLoad's ``source``), or None."""
    if type(expr).__name__ not in ("BufferLoad", "TensorLoad"):
        return None
    return getattr(expr, "buffer", None) or getattr(expr, "source", None)


def fused_multiply_add(func, block_name: str = "conv2d_nchw") -> tirx.PrimFunc:
    """``func`` with the update ``acc = acc + a * b`` of block ``block_name`` written as an explicit fused
    multiply-add (``llvm.fma``; vectorised, ``fmla`` on AArch64, ``vfma.f32`` on armv7 NEON).

    LLVM already contracts ``acc + a * b`` into ``fmla`` on AArch64, but for a Cortex-A7 it keeps ``vmul.f32`` +
    ``vadd.f32`` (its tuning marks VFMA slow): twice the instructions, and a temporary register per product, which
    the 16 q registers of armv7 cannot spare. Only for a target with vector FMA (:func:`has_fma`): elsewhere
    ``llvm.fma`` would become a libm call per lane."""
    def rewrite(block):
        store = block.body
        if block.name_hint != block_name or type(store).__name__ not in ("BufferStore", "TensorStore"):
            return block
        value = store.value
        if not (isinstance(value, tirx.Add) and isinstance(value.b, tirx.Mul)
                and _loaded_buffer(value.a) is not None and _loaded_buffer(value.a).same_as(store.buffer)):
            raise NotApplicable(f"block {block_name} is not acc + a * b")
        dtype = str(store.buffer.dtype)
        if dtype not in ("float32", "float64"):
            raise NotApplicable(f"block {block_name} accumulates {dtype}")
        fma = tirx.call_llvm_pure_intrin(dtype, f"llvm.fma.f{dtype[5:]}", value.b.a, value.b.b, value.a)
        body = type(store)(store.buffer, fma, store.indices)
        return s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, body, block.init,
                            block.alloc_buffers, block.match_buffers, block.annotations)

    return func.with_body(_rebuild(func.body, rewrite))


def _extent(sch, loop) -> int:
    ext = sch.get(loop).extent
    if not isinstance(ext, tirx.IntImm):
        raise NotApplicable(f"non-constant extent {ext}")
    return int(ext.value)


def _divisors(n: int) -> list:
    return [d for d in range(1, n + 1) if n % d == 0]


def _uses(expr, var) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def _weight_read(block) -> int:
    """Index (in ``block.reads``) of the weight operand: the buffer whose first index is the output channel."""
    ff = block.iter_vars[1].var
    for i, region in enumerate(block.reads):
        if len(region.region) == 4 and _uses(region.region[0].min, ff):
            return i
    raise NotApplicable("no weight operand indexed by the output channel")


def conv_plan(neon: Neon, channels: int, width: int, in_channels: int, taps: int) -> tuple:
    """(fi, xi, channels_inner): output channels and output pixels per register block, and whether the reduction
    runs (KH, KW, C) instead of (C, KH, KW), for a conv with ``taps`` = KH * KW.

    Per reduction step a block loads ``fi / 4`` weight vectors and ``xi`` input pixels and issues ``fi / 4 * xi``
    FMAs: the block with the best FMAs per instruction within ``neon``'s accumulator budget wins."""
    channels_inner = taps > 1 and 0 < neon.channels_inner_from <= in_channels
    budget = neon.acc_1x1 if taps == 1 else neon.acc_channels_inner if channels_inner else neon.acc_taps
    best = None
    for vq in range(1, 5):
        if channels % (vq * LANES):
            continue
        for xi in _divisors(width):
            if xi > _MAX_PIXELS or vq * xi > budget:
                continue
            fmas = vq * xi
            key = (fmas / (fmas + vq + xi), vq if neon.prefer_channels else xi)
            if best is None or key > best[0]:
                best = (key, vq * LANES, xi)
    if best is None:
        raise NotApplicable(f"{channels} output channels are not a multiple of {LANES}")
    return best[1], best[2], channels_inner


def schedule_conv2d_nchw(func, num_cores: int, neon: Neon = NEON_A64, plan: tuple | None = None,
                         fma: bool = False) -> tirx.PrimFunc:
    """topi ``conv2d_nchw`` + its injective epilogue, vectorised over output channels (see the module docstring).
    ``plan``: (output channels, output pixels, channels innermost) of the register block (default: :func:`conv_plan`),
    for experiments; ``fma``: accumulate with an explicit fused multiply-add (:func:`fused_multiply_add`)."""
    sch = s_tir.Schedule(fused_multiply_add(func) if fma else func)
    conv = sch.get_sblock("conv2d_nchw")
    block = sch.get(conv)
    if [int(iv.iter_type) for iv in block.iter_vars] != [0, 0, 0, 0, 2, 2, 2]:
        raise NotApplicable("not a plain NCHW conv2d reduction")
    loops = sch.get_loops(conv)
    if len(loops) != 7:
        raise NotApplicable("conv loops already transformed")
    n, f, y, x, rc, ry, rx = loops
    channels, width = _extent(sch, f), _extent(sch, x)
    taps = _extent(sch, ry) * _extent(sch, rx)
    fi, xi, channels_inner = plan or conv_plan(neon, channels, width, _extent(sch, rc), taps)
    if channels % fi or fi % LANES or width % xi:
        raise NotApplicable(f"tile {fi}x{xi} does not divide {channels} channels x {width} pixels")

    # weights, fi output channels contiguous, in the order the reduction reads them: [O / fi, C, KH, KW, fi] (or
    # [O / fi, KH, KW, C, fi]), copied once per call
    wcache = sch.cache_read(conv, _weight_read(block), "global")
    if channels_inner:
        sch.transform_layout(wcache, ("write", 0), lambda o, c, kh, kw: (o // fi, kh, kw, c, o % fi))
    else:
        sch.transform_layout(wcache, ("write", 0), lambda o, c, kh, kw: (o // fi, c, kh, kw, o % fi))

    # the input: a pure copy inlined; a zero-padded copy stays a pass of its own (no bounds tests in the hot loop)
    pad = next((p for p in sch.get_producers(conv) if sch.get(p).name_hint.startswith("pad_temp")), None)
    if pad is not None and float_x86._is_copy(sch.get(pad)):
        sch.compute_inline(pad)
        pad = None

    fo, fq, fl = sch.split(f, [None, fi // LANES, LANES])
    xo, xr = sch.split(x, [None, xi])
    if channels_inner:
        sch.reorder(n, fo, y, xo, ry, rx, rc, xr, fq, fl)
    else:
        sch.reorder(n, fo, y, xo, rc, ry, rx, xr, fq, fl)
    outer = sch.fuse(n, fo, y, xo)
    sch.parallel(outer)
    _epilogue_at(sch, conv, outer)
    sch.unroll(xr)
    sch.unroll(fq)
    sch.vectorize(fl)
    sch.decompose_reduction(conv, ry if channels_inner else rc)

    for producer in (wcache, pad):
        if producer is not None:
            float_x86._vector_parallel(sch, producer, num_cores, LANES)
    float_x86._parallelize_rest(sch, num_cores)
    return sch.mod["main"]


def _epilogue_at(sch, conv, outer):
    """Accumulate ``conv`` in a register tile under ``outer``; its injective epilogue (or a plain copy-out) is
    computed there, pixel by pixel, vectorised over the output channels."""
    epilogue = float_x86._inline_epilogue(sch, conv)
    if epilogue is not None and float_x86._try(sch.reverse_compute_at, epilogue, outer):
        sch.set_scope(conv, 0, "local")
    else:
        epilogue = sch.cache_write(conv, 0, "local")
        sch.reverse_compute_at(epilogue, outer)
    # channels innermost in the register tile, so that a vector of 4 channels is one contiguous q register (in
    # NCHW order the 4 lanes lie a row apart and LLVM splits the tile into scalars)
    sch.transform_layout(conv, ("write", 0), lambda n, c, h, w: (n, h, w, c))
    outer_pos = [i for i, lp in enumerate(sch.get_loops(epilogue)) if sch.get(lp).same_as(sch.get(outer))][0]
    inner = sch.get_loops(epilogue)[outer_pos + 1:]
    if not inner:
        return
    chan = inner[0]  # the epilogue block's axes are (n, c, h, w): the channel loop is the first under the tile
    if _extent(sch, chan) % LANES:
        raise NotApplicable("the epilogue's first loop under the tile is not the block's channels")
    rest = inner[1:]
    if rest:
        sch.reorder(*rest, chan)
    for lp in rest:
        sch.unroll(lp)
    cq, cl = sch.split(chan, [None, LANES])
    sch.unroll(cq)
    sch.vectorize(cl)


def schedule_float(func, num_cores: int, target=None):
    """The structured schedule for ``func`` on an ARM NEON target, or None when none applies (raises if a
    recognised schedule fails)."""
    neon = neon_isa(target) or NEON_A32
    isa = neon.isa
    if func.attrs is not None and "tvm_bnn.op" in func.attrs:
        return None
    if float_x86._has_block(func, ("conv2d_nchw",)):
        try:
            return schedule_conv2d_nchw(func, num_cores, neon, fma=has_fma(target))
        except NotApplicable:
            return float_x86.schedule_conv2d_nchw(func, num_cores, isa)
    if float_x86._has_block(func, ("matmul", "T_matmul", "T_batch_matmul_NN")):
        return float_x86.schedule_matmul(func, num_cores, isa)
    return float_x86.schedule_elementwise(func, num_cores, isa)
