"""x86 schedules of the float PrimFuncs that LegalizeOps + FuseOps + FuseTIR produce (the layers a BNN keeps float).

Recognised by structure, each returning a new PrimFunc or raising (the caller falls back to the generic schedule):

* ``conv2d_nchw`` (topi NCHW conv: a ``pad_temp`` producer, the ``conv2d_nchw`` reduction, then injective epilogue
  blocks such as BatchNorm arithmetic and a residual add). Vectorised along the output width (a divisor of it, at
  most one register: 16 fp32 lanes on AVX-512, 8 on AVX2; see ``isa_of``), register-blocked over output channels x output-width vectors: the
  accumulators live in a ``local`` tile, each weight is broadcast and FMA'd into a vector of the input row. The
  elementwise epilogue is inlined into one block computed at the tile (``reverse_compute_at``), so the conv output
  is never written to memory before the epilogue. For stride s > 1 the padded input is stored de-interleaved
  (``[.., h, w % s, w // s]``) so that the vector loads stay contiguous.
* ``matmul`` / dense (``[M, K] x [K, N]``): vectorised along N with K-outer accumulation in registers.
* pooling / reductions over the innermost axes (mean) / injective functions: producers inlined (padding is
  computed per parallel task instead), parallel outer loops, a vectorised innermost loop where the loads are
  contiguous, and the epilogue (e.g. the residual add after a max-pool) computed in the same loop nest.

``schedule_float`` dispatches on block names; anything it raises sends the caller (``generic.schedule_generic``) to
the fallback schedule, so an unexpected PrimFunc never breaks the build.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, sym, tirx

from .loops import parallelize_outer

VECTOR_LANES = 16  # fp32 lanes of an AVX-512 register


@dataclass(frozen=True)
class VectorISA:
    lanes: int  # fp32 lanes per vector register
    max_accumulators: int  # vector accumulators of a register tile (leaves registers for loads and broadcasts)


AVX512 = VectorISA(16, 24)  # 32 zmm registers
AVX2 = VectorISA(8, 12)  # 16 ymm registers
SSE = VectorISA(4, 12)  # 16 xmm registers (also the 128-bit NEON width)


def isa_of(target) -> VectorISA:
    """The vector ISA of an LLVM target (AVX-512 when ``target`` is None: the default x86 target is the host)."""
    if target is None:
        return AVX512
    from tvm.target import codegen

    try:
        if codegen.target_has_features("avx512f", target):
            return AVX512
        if codegen.target_has_features("avx2", target):
            return AVX2
    except Exception:  # noqa: BLE001 - not an LLVM x86 target
        pass
    return SSE


def _finish_register_tile(sch, block, outer_loops, unrolled, vector, lanes: int, reduction_loop):
    """The tail shared by the conv and matmul tiles: the outer tile loops fused and parallel, the epilogue computed
    at the tile, the register block unrolled, the lane loop vectorised, the accumulator init split off."""
    outer = sch.fuse(*outer_loops)
    sch.parallel(outer)
    _fuse_epilogue(sch, block, outer, lanes)
    for loop in unrolled:
        sch.unroll(loop)
    if lanes > 1:
        sch.vectorize(vector)
    sch.decompose_reduction(block, reduction_loop)


class NotApplicable(Exception):
    """The PrimFunc does not have the structure this schedule expects."""


def _int(expr) -> int:
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    raise NotApplicable(f"non-constant extent {expr}")


def _extent(sch, loop) -> int:
    return _int(sch.get(loop).extent)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in _divisors(n) if d <= at_most)


def vector_lanes(width: int, lanes: int = VECTOR_LANES) -> int:
    """Vector length for a loop of ``width``: a divisor of it (no tail), at most one register."""
    if width % lanes == 0:
        return lanes
    return _largest_divisor(width, lanes)


def _root_blocks(sch):
    return sch.get_child_blocks(sch.get_sblock("root"))


def _block_name(sch, block) -> str:
    return sch.get(block).name_hint


def _try(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except Exception:  # noqa: BLE001 - an illegal primitive leaves the schedule unchanged; skip it
        return False


def _written_elements(sch, block) -> int:
    buf = sch.get(block).writes[0].source
    n = 1
    for d in buf.shape:
        n *= _int(d)
    return n


def _inline_epilogue(sch, block):
    """Inline the injective chain after ``block`` into its last consumer; return that consumer, or None when there
    is none or it writes more elements than ``block`` (a pad: computed at ``block``'s tile by
    ``reverse_compute_at``, it would cover only the elements that read the tile and leave the padding unwritten)."""
    consumers = sch.get_consumers(block)
    if len(consumers) != 1:
        return None
    consumer = consumers[0]
    while True:
        nxt = sch.get_consumers(consumer)
        if len(nxt) != 1 or not _try(sch.compute_inline, consumer):
            break
        consumer = nxt[0]
    if _written_elements(sch, consumer) != _written_elements(sch, block):
        return None
    return consumer


def _fuse_epilogue(sch, block, outer, lanes: int):
    """Accumulate ``block`` in a ``local`` tile under ``outer`` and compute its epilogue there, vectorised."""
    epilogue = _inline_epilogue(sch, block)
    if epilogue is not None and _try(sch.reverse_compute_at, epilogue, outer):
        sch.set_scope(block, 0, "local")
    else:
        epilogue = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(epilogue, outer)
    eloops = sch.get_loops(epilogue)
    inner = eloops[-1]
    if lanes > 1 and not sch.get(inner).same_as(sch.get(outer)) and _extent(sch, inner) % lanes == 0:
        _, ev = sch.split(inner, [None, lanes])
        _try(sch.vectorize, ev)


def _parallelize_rest(sch, num_cores: int):
    """Blocks a structured schedule left alone (e.g. a second consumer of the conv) still run in parallel."""
    for b in _root_blocks(sch):
        loops = sch.get_loops(b)
        if loops and sch.get(loops[0]).kind == tirx.ForKind.SERIAL:
            parallelize_outer(sch, b, min_parallel=4 * num_cores)


def tile_preference(fi: int, xi: int) -> tuple:
    """Order of the conv's register tiles (fi channels x xi vectors; the largest wins): most accumulators (FMA
    latency), then fewest loads per FMA (fi broadcasts + xi vectors for fi*xi FMAs: the 7x7/2 stem on AVX2 runs
    12 % faster as 4 x 2 than as 8 x 1, ``bench/schedule_ab.py``), then more channels."""
    return (fi * xi, -(fi + xi), fi)


def schedule_conv2d_nchw(func, num_cores: int, isa: VectorISA = AVX512,
                         tile: tuple[int, int] | None = None) -> tirx.PrimFunc:
    """topi ``conv2d_nchw`` + its injective epilogue (see the module docstring)."""
    sch = s_tir.Schedule(func)
    conv = sch.get_sblock("conv2d_nchw")
    block = sch.get(conv)
    kinds = [int(iv.iter_type) for iv in block.iter_vars]
    if kinds != [0, 0, 0, 0, 2, 2, 2]:
        raise NotApplicable("not a plain NCHW conv2d reduction")
    loops = sch.get_loops(conv)
    if len(loops) != 7:
        raise NotApplicable("conv loops already transformed")
    n, f, y, x, rc, ry, rx = loops
    width = _extent(sch, x)
    channels = _extent(sch, f)

    # The input producer: inline a pure copy, de-interleave a strided one (a separate parallel pass otherwise).
    producers = sch.get_producers(conv)
    pad = None
    for p in producers:
        if _block_name(sch, p).startswith("pad_temp"):
            pad = p
    stride = _conv_stride(block)
    if pad is not None:
        if _is_copy(sch.get(pad)) and stride == 1:
            sch.compute_inline(pad)
            pad = None
        elif stride > 1:
            padded_w = _int(sch.get(pad).iter_vars[3].dom.extent)
            if padded_w % stride == 0:  # else the loads stay strided (slower, still correct)
                _try(sch.transform_layout, pad, ("write", 0),
                     lambda a, b, c, d: (a, b, c, d % stride, d // stride))

    lanes = vector_lanes(width, isa.lanes)
    if lanes < 4:
        lanes = 1  # no useful vector divisor (e.g. a prime width): scalar, still register-tiled
    x_vectors = width // lanes
    # register tile: fi output channels x xi vectors of `lanes` outputs
    best = None
    for xi in _divisors(x_vectors):
        if xi > (4 if lanes > 1 else 8):
            continue
        for fi in _divisors(channels):
            if fi * xi > isa.max_accumulators or fi > 16:
                continue
            key = tile_preference(fi, xi)
            if best is None or key > best[0]:
                best = (key, fi, xi)
    _, fi, xi = best
    if tile is not None:  # (output channels, width vectors) per register tile, for experiments
        fi, xi = tile
    fo_, fi_ = sch.split(f, [None, fi])
    xo_, xi_, xv_ = sch.split(x, [None, xi, lanes])
    sch.reorder(n, fo_, y, xo_, rc, ry, rx, fi_, xi_, xv_)
    _finish_register_tile(sch, conv, (n, fo_, y, xo_), (fi_, xi_), xv_, lanes, rc)
    if pad is not None:
        _vector_parallel(sch, pad, num_cores, isa.lanes)
    _parallelize_rest(sch, num_cores)
    return sch.mod["main"]


def _conv_stride(block) -> int:
    """Stride along the width: the coefficient of the output-width iter in the input's last index."""
    xx = block.iter_vars[3].var
    stride = 1
    for region in block.reads:
        if len(region.region) == 4:
            coeff = _coeff_of(region.region[3].min, xx)
            if coeff is not None and coeff > 0:
                stride = max(stride, coeff)
    return stride


def _coeff_of(expr, var):
    """Coefficient of ``var`` in an affine index (None if it does not appear linearly)."""
    try:
        res = sym.detect_linear_equation(expr, [var])
    except Exception:  # noqa: BLE001
        return None
    if not res:
        return None
    c = res[0]
    return int(c.value) if isinstance(c, tirx.IntImm) else None


def _is_padding(block) -> bool:
    return "if_then_else" in str(block.body.value)


def _is_copy(block) -> bool:
    return type(block.body.value).__name__ in ("TensorLoad", "BufferLoad")


def schedule_matmul(func, num_cores: int, isa: VectorISA = AVX512) -> tirx.PrimFunc:
    """``C[..., i, j] = sum_k A[..., i, k] * B[..., k, j]`` (+ injective epilogue): vectorise j, k outermost in a tile.

    The weight operand must be indexed ``[..., k, j]`` (contiguous in j), which is what LegalizeOps gives for a
    PyTorch ``Linear`` once the transpose of its constant weight is folded.
    """
    sch = s_tir.Schedule(func)
    blocks = [b for b in _root_blocks(sch) if _block_name(sch, b) in ("matmul", "T_matmul", "T_batch_matmul_NN")]
    if len(blocks) != 1:
        raise NotApplicable("no matmul block")
    mm = blocks[0]
    block = sch.get(mm)
    kinds = [int(iv.iter_type) for iv in block.iter_vars]
    if len(kinds) < 3 or kinds[-1] != 2 or any(k != 0 for k in kinds[:-1]):
        raise NotApplicable("not a single-reduction matmul")
    loops = sch.get_loops(mm)
    if len(loops) != len(kinds):
        raise NotApplicable("matmul loops already transformed")
    jvar = block.iter_vars[-2].var
    kvar = block.iter_vars[-1].var
    # the operand indexed by k must have j (or nothing) as its last, unit-stride index
    ok = False
    for region in block.reads:
        idx = [r.min for r in region.region]
        if len(idx) >= 2 and _coeff_of(idx[-2], kvar) == 1 and _coeff_of(idx[-1], jvar) == 1:
            ok = True
    if not ok:
        raise NotApplicable("weight operand is not [k, j]")
    *batch, i, j, k = loops
    m, n = _extent(sch, i), _extent(sch, j)
    lanes = vector_lanes(n, isa.lanes)
    if n % isa.lanes and n % 8 == 0 and isa.lanes >= 8:
        lanes = 8 if lanes < 12 else lanes
    if lanes < 4:
        lanes = 1  # no useful vector divisor (e.g. a prime N): scalar, still register-tiled
    n_vectors = n // lanes
    mi = _largest_divisor(m, 4)
    ji = max(d for d in _divisors(n_vectors) if d * mi <= isa.max_accumulators * 2 // 3 and d <= 8)
    io, ii = sch.split(i, [None, mi])
    jo, jj, jv = sch.split(j, [None, ji, lanes])
    sch.reorder(*batch, io, jo, k, ii, jj, jv)
    _finish_register_tile(sch, mm, (*batch, io, jo), (ii, jj), jv, lanes, k)
    _parallelize_rest(sch, num_cores)
    return sch.mod["main"]


def _spatial_then_reduce(sch, block) -> tuple[int, int] | None:
    """(number of spatial iters, number of reduction iters) if the block's iters are all spatial then all reduce."""
    kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    ns = 0
    while ns < len(kinds) and kinds[ns] == 0:
        ns += 1
    if ns == 0 or any(k != 2 for k in kinds[ns:]):
        return None
    return ns, len(kinds) - ns


def _vector_parallel(sch, block, num_cores: int, max_lanes: int):
    """Injective block: vectorise the innermost loop by a divisor of it, parallelise the outer ones."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    lanes = vector_lanes(_extent(sch, inner), max_lanes)
    if lanes >= 4 and not _is_padding(sch.get(block)):
        rest, v = sch.split(inner, [None, lanes])
        _try(sch.vectorize, v)
    parallelize_outer(sch, block, min_parallel=4 * num_cores)


def _parallel_prefix(sch, loops, num_cores: int):
    """Fuse the leading loops until there are 4 tasks per core and mark the result parallel."""
    take, work = 1, _extent(sch, loops[0])
    while work < 4 * num_cores and take < len(loops) - 1:
        work *= _extent(sch, loops[take])
        take += 1
    fused = sch.fuse(*loops[:take]) if take > 1 else loops[0]
    sch.parallel(fused)
    return fused


def _schedule_reduction(sch, block, num_cores: int, max_lanes: int):
    """A reduction over the innermost iters (pooling, mean): vectorise the last spatial loop with the reductions
    outside it, accumulate in a local tile, and compute the epilogue at the tile."""
    ns, nr = _spatial_then_reduce(sch, block)
    loops = sch.get_loops(block)
    if len(loops) != ns + nr:
        raise NotApplicable("reduction loops already transformed")
    spatial, reduce_ = loops[:ns], loops[ns:]
    width = _extent(sch, spatial[-1])
    lanes = vector_lanes(width, max_lanes)
    xvar = sch.get(block).iter_vars[ns - 1].var
    stride = 1
    for region in sch.get(block).reads:
        for r in region.region:
            c = _coeff_of(r.min, xvar)
            if c not in (0, 1):
                stride = max(stride, c if c is not None else 0)
    if stride > 1:
        # A strided vector load is a gather, slower than scalar code. (De-interleaving the padded input as the
        # conv schedule does was measured slower here: the padding pass costs more than the gathers it saves.)
        lanes = 1
    if lanes < 4:
        lanes = 1
    xo, xv = sch.split(spatial[-1], [None, lanes])
    sch.reorder(*spatial[:-1], xo, *reduce_, xv)
    # parallel over the leading spatial loops (just enough of them); the tile is one vector of the last one
    par = _parallel_prefix(sch, [*spatial[:-1], xo], num_cores)
    _fuse_epilogue(sch, block, xo, lanes)
    for p in sch.get_producers(block):
        if _is_padding(sch.get(p)):
            _try(sch.compute_at, p, par)  # pad the slice a task reads, while it is in cache
    if lanes > 1:
        sch.vectorize(xv)
    sch.decompose_reduction(block, reduce_[0])


def schedule_elementwise(func, num_cores: int, isa: VectorISA = AVX512) -> tirx.PrimFunc:
    """Pooling / injective / reductions over the innermost axes: inline producers, one loop nest per output."""
    sch = s_tir.Schedule(func)
    blocks = _root_blocks(sch)
    for b in blocks[:-1]:
        # inline injective producers, except padding (an if_then_else in a vector loop is scalarised)
        if _spatial_then_reduce(sch, b) == (len(sch.get(b).iter_vars), 0) and not _is_padding(sch.get(b)):
            _try(sch.compute_inline, b)
    blocks = _root_blocks(sch)
    reductions = [b for b in blocks if (_spatial_then_reduce(sch, b) or (0, 0))[1] > 0]
    if len(reductions) > 1:
        raise NotApplicable("several reductions")
    downstream = set()
    if reductions:
        todo = [reductions[0]]
        while todo:
            b = todo.pop()
            name = _block_name(sch, b)
            if name not in downstream:
                downstream.add(name)
                todo.extend(sch.get_consumers(b))
    for b in blocks:
        st = _spatial_then_reduce(sch, b)
        if _block_name(sch, b) in downstream or st is None or st[1]:
            continue
        _vector_parallel(sch, b, num_cores, isa.lanes)
    if reductions:
        _schedule_reduction(sch, reductions[0], num_cores, isa.lanes)
    return sch.mod["main"]


def _has_block(func, names) -> str | None:
    sch = s_tir.Schedule(func)
    try:
        blocks = _root_blocks(sch)
    except Exception:  # noqa: BLE001 - no root block (already lowered)
        return None
    for b in blocks:
        name = _block_name(sch, b)
        if name in names:
            return name
    return None


def schedule_float(func, num_cores: int, target=None):
    """The structured schedule for ``func``, or None when none applies. Raises if a recognised schedule fails.

    ``target``: the LLVM target, for its vector width (None: AVX-512, the default x86 target on this host)."""
    isa = isa_of(target)
    if func.attrs is not None and "tvm_bnn.op" in func.attrs:
        return None
    if _has_block(func, ("conv2d_nchw",)):
        return schedule_conv2d_nchw(func, num_cores, isa)
    if _has_block(func, ("matmul", "T_matmul", "T_batch_matmul_NN")):
        return schedule_matmul(func, num_cores, isa)
    return schedule_elementwise(func, num_cores, isa)
