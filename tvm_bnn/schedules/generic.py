"""Default schedule for the float PrimFuncs that LegalizeOps produces (stem conv, shortcuts, classifier, pooling).

Untuned LegalizeOps output is serial scalar loops. ``schedule_generic`` first tries the structured schedules: on an
ARM NEON target those of ``float_arm`` (convs vectorised over output channels; the rest as ``float_x86`` with the
NEON register budget), elsewhere the x86 ones of ``float_x86`` (conv2d NCHW, matmul, pooling / injective functions);
a PrimFunc none of them recognises, or one whose schedule raises, gets the fallback: the outermost data-parallel
loops of each block run in parallel over the cores (primitives that are illegal for a block raise and are skipped,
so this is safe on any PrimFunc).

``TVM_BNN_NEON_FLOAT=0`` gives ARM targets the x86 schedules with the NEON register budget instead (vectorised
along the output width: what they had before ``float_arm``), for comparisons (``bench/arm.py``).
"""
import logging
import os

from tvm import s_tir, tirx

from .loops import parallelize_outer

logger = logging.getLogger(__name__)


def schedule_generic(func, num_cores: int, target=None) -> tirx.PrimFunc:
    """Our default schedule of a float PrimFunc; ``target`` (optional) sets the vector width (None: AVX-512)."""
    from . import float_arm, float_x86

    neon = float_arm.neon_isa(target) is not None and os.environ.get("TVM_BNN_NEON_FLOAT", "1") != "0"
    structured = float_arm if neon else float_x86
    try:
        scheduled = structured.schedule_float(func, num_cores, target)
    except Exception as err:  # noqa: BLE001 - a schedule that does not apply must never break the build
        logger.debug("%s schedule failed, using the fallback: %s", structured.__name__, err)
        scheduled = None
    if scheduled is not None:
        return scheduled
    return schedule_fallback(func, num_cores)


def schedule_fallback(func, num_cores: int) -> tirx.PrimFunc:
    """Parallelise the outer loops of every block (no other change)."""
    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001 - no root block (already lowered)
        return func
    for block in blocks:
        parallelize_outer(sch, block, min_parallel=4 * num_cores)
    return sch.mod["main"]
