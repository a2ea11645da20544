"""Our TIR lowering pipeline: TVM's default one, with small allocations kept on the stack.

TVM's LowerTVMBuiltin turns every allocation of a CPU kernel into a ``TVMBackendAllocWorkspace`` /
``TVMBackendFreeWorkspace`` pair, except a "global" one under 1 KB. A schedule's register tile is "local" (the
float conv's accumulators: up to 24 vectors, 1.5 KB on AVX-512), so inside a parallel loop each tile cost two calls
into the workspace pool (12544 pairs per call of a 7x7/2 stem conv at 224 on AVX2; ~3.5 % of a Bi-Real-18 inference
in the pool alone) and the tile could not live in registers. ``StackAllocations`` marks every constant-size allocation
up to ``STACK_BYTES`` so that LowerTVMBuiltin leaves it alone and the LLVM code generator makes it a stack slot
(``alloca``, in the function that runs the loop: one per thread). Larger buffers (a padded input, re-laid-out weights:
one per call) stay in the workspace pool.

``relax.build(..., tir_pipeline=NAME)`` / ``tvm.compile(..., tir_pipeline=NAME)`` select it.
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

NAME = "tvm_bnn"
STACK_BYTES = 16 * 1024  # per allocation; a TVM worker thread has the default 8 MB stack
_KEEP = "disable_lower_builtin"  # tirx.transform.kDisableLowerTVMBuiltin


def _bytes(buffer) -> int | None:
    size = 1
    for dim in buffer.shape:
        if not isinstance(dim, tirx.IntImm):
            return None
        size *= int(dim)
    dtype = tvm.DataType(str(buffer.dtype))
    return size * dtype.bits * dtype.lanes // 8


def StackAllocations(max_bytes: int = STACK_BYTES) -> tvm.transform.Pass:  # noqa: N802 - TVM pass naming
    """Mark the CPU allocations of at most ``max_bytes`` (constant size, "global" or "local") to stay stack
    allocations through LowerTVMBuiltin."""

    def mark(stmt):
        if _KEEP in stmt.annotations or stmt.buffer.scope() not in ("global", "local"):
            return stmt
        size = _bytes(stmt.buffer)
        if size is None or not 0 < size <= max_bytes:
            return stmt
        annotations = dict(stmt.annotations)
        annotations[_KEEP] = tirx.IntImm("int32", 1)
        return tirx.AllocBuffer(stmt.buffer, annotations)

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="tvm_bnn.StackAllocations")
    def _pass(func, _mod, _ctx):
        return func.with_body(tvm_ffi.structural_map(func.body, [(tirx.AllocBuffer, mark)]))

    return _pass


def _pipeline(**kwargs):
    lower, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline("default", **kwargs)

    def host():
        return tvm.transform.Sequential([StackAllocations(), finalize_host()])

    return lower, host, finalize_device


tvm.tirx.compilation_pipeline.register_tir_pipeline(NAME, _pipeline)
