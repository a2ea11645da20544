"""Loop helpers shared by every schedule of ours."""
from tvm import s_tir, tirx


def _extent(sch, loop):
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def parallelize_outer(sch: s_tir.Schedule, block, min_parallel: int = 8) -> bool:
    """Fuse leading spatial loops until there is enough parallel work, and mark them parallel."""
    loops = sch.get_loops(block)
    if not loops:
        return False
    iter_types = [iv.iter_type for iv in sch.get(block).iter_vars]
    if not iter_types or iter_types[0] != 0:  # first block iter must be data-parallel
        return False
    take, work = 1, _extent(sch, loops[0]) or 1
    while work < min_parallel and take < len(loops) and take < len(iter_types) and iter_types[take] == 0:
        work *= _extent(sch, loops[take]) or 1
        take += 1
    try:
        fused = sch.fuse(*loops[:take]) if take > 1 else loops[0]
        sch.parallel(fused)
        return True
    except Exception:  # noqa: BLE001 - an illegal primitive just means: leave this block serial
        return False


def fuse_row_tasks(sch: s_tir.Schedule, rows: list, tile, num_cores: int):
    """The parallel loop of a conv whose output is tiled along the row: ``rows`` (batch, channel blocks, output
    row) fused, the row's tile loop ``tile`` left serial inside, when that gives at least 4 tasks per core; else
    ``tile`` fused in too. Returns (parallel loop, loop of one tile). A fused tile index costs a div/mod chain per
    tile (about 30 instructions), which for a small reduction (a 3x3 conv of 64 channels: 9 words) is ~9 % of the
    kernel."""
    work = 1
    for lp in rows:
        work *= _extent(sch, lp) or 1
    if work >= 4 * num_cores:
        return sch.fuse(*rows), tile
    outer = sch.fuse(*rows, tile)
    return outer, outer


def loop_kinds(sch: s_tir.Schedule, block, below=None) -> list:
    """[(loop, is_reduction, block iter index)] of the loops above ``block`` (only those inside ``below``); a loop
    that no block iter reads has index -1."""
    loops = sch.get_loops(block)
    realize = sch.get(loops[-1]).body
    if below is not None:
        stop = sch.get(below)
        loops = loops[[i for i, lp in enumerate(loops) if sch.get(lp).same_as(stop)][0] + 1:]
    while not isinstance(realize, s_tir.SBlockRealize):  # the block sits under its innermost loop, maybe in a seq
        realize = realize.seq[0] if hasattr(realize, "seq") else realize.body
    kinds = {}
    for i, (iv, value) in enumerate(zip(realize.block.iter_vars, realize.iter_values)):
        for var in tirx.analysis.undefined_vars(value):
            kinds[var.name] = (int(iv.iter_type) == 2, i)
    return [(lp, *kinds.get(sch.get(lp).loop_var.name, (False, -1))) for lp in loops]


def register_block(sch: s_tir.Schedule, block, anchor, channel_iter: int, lanes, unroll: bool) -> list:
    """The register block of a bit-GEMM's accumulator ``block`` computed under ``anchor``: its reduction loops
    outside, its spatial loops (pixels x channels) inside, unrolled, and the loop of block iter ``channel_iter`` split
    into vectors of ``lanes`` (an int, or a sampled factor) innermost, vectorised: each input word is broadcast against
    a vector of filters, so the accumulators need no horizontal sum. Returns the reduction loops, outermost first."""
    kinds = loop_kinds(sch, block, anchor)
    o_loop = [lp for lp, _, iv in kinds if iv == channel_iter][0]
    lane = None
    if not isinstance(lanes, int) or (lanes > 1 and (_extent(sch, o_loop) or 0) % lanes == 0):
        _, lane = sch.split(o_loop, [None, lanes])
    kinds = loop_kinds(sch, block, anchor)
    is_lane = (lambda lp: lane is not None and sch.get(lp).same_as(sch.get(lane)))
    spatial = [lp for lp, is_red, _ in kinds if not is_red and not is_lane(lp)]
    reds = [lp for lp, is_red, _ in kinds if is_red]
    sch.reorder(*reds, *spatial, *([lane] if lane is not None else []))
    if lane is not None:
        sch.vectorize(lane)
    if unroll:
        for lp in spatial:
            sch.unroll(lp)
    return reds


def residual_blocks(sch: s_tir.Schedule, op: str, inline: bool):
    """(block to tile, sum block or None) of a float conv kernel ``op``: for a conv adding a tensor in the staged
    form of ops/epilogue.conv_float_output, its affine block and the sum (``sum_along_pixels`` places the sum); with
    ``inline`` (a schedule that does not stage), the affine part inlined into the sum, as one block."""
    out = sch.get_sblock(op)
    try:
        affine = sch.get_sblock(op + "_affine")
    except Exception:  # noqa: BLE001 - no residual: the output block is the affine part
        return out, None
    if inline:
        sch.compute_inline(affine)
        return out, None
    return affine, out


def sum_along_pixels(sch, affine, total, tile_loop):
    """A float conv adding a tensor: the affine part of a tile stays in registers (its vectors run along the output
    channels, as the accumulators hold them) and the sum is computed per tile along the pixels, where the added
    tensor and the NCHW output are contiguous: LLVM transposes the tile in registers once, as it does for the
    stores of a conv without a sum, instead of gathering the added tensor along the channels (x86 and the byte-lane
    kernels of AVX2 and NEON)."""
    sch.reverse_compute_at(total, tile_loop)
    sch.set_scope(affine, 0, "local")
    loops = sch.get_loops(total)
    below = [i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(tile_loop))][0] + 1
    if below < len(loops) and int(sch.get(loops[-1]).extent) > 1:  # its own pixel loop, never the tile loop above it
        sch.vectorize(loops[-1])
        for lp in loops[below:-1]:
            sch.unroll(lp)
