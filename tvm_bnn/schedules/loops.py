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
