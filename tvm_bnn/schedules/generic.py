"""Default schedule for the float PrimFuncs that LegalizeOps produces (stem conv, shortcuts, classifier, pooling).

Untuned LegalizeOps output is serial scalar loops. We parallelise the outermost data-parallel loops of each block
over the cores and vectorise the innermost loop where the schedule allows it; primitives that are illegal for a
block (a reduction loop, an opaque access) raise and are skipped, so this is safe on any PrimFunc.
"""
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


def schedule_generic(func, num_cores: int) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001 - no root block (already lowered)
        return func
    for block in blocks:
        parallelize_outer(sch, block, min_parallel=4 * num_cores)
    return sch.mod["main"]
