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
