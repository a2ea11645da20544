"""x86 schedules of the bit-packed kernels.

Correct and reasonable rather than tuned (the tuning spaces come with MetaSchedule): the integer ``dot`` is inlined
into its epilogue, the outer output loops run in parallel over the cores, and the innermost loop over packed words
is left contiguous for LLVM, which vectorises ``popcount(a ^ w)`` over uint64 lanes into ``vpopcntq`` on CPUs with
AVX-512 VPOPCNTDQ and into scalar ``popcnt`` otherwise (the target's ``mcpu`` decides).
"""
from tvm import s_tir

from .generic import parallelize_outer


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - a block this kernel variant does not have
        return None


def schedule_kernel(func, op: str, num_cores: int):
    sch = s_tir.Schedule(func)
    _try(lambda: sch.compute_inline(sch.get_sblock("dot")))
    for name in ("popcount", "bitpack", "binary_maxpool", "binary_conv2d", "binary_dense",
                 "binary_conv2d_bits", "binary_dense_bits"):
        block = _try(sch.get_sblock, name)
        if block is not None:
            parallelize_outer(sch, block, min_parallel=4 * num_cores)
    return sch.mod["main"]
