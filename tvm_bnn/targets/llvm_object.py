"""Kernels -> one relocatable object of plain C functions, compiled by TVM's LLVM codegen for any LLVM target.

The C codegen (``c_codegen.generate_c``) cannot vectorise: TVM's "c" target has no vector types, so ARM's NEON
``cnt`` is out of its reach. This module takes the same kernels (C name -> PrimFunc), gives each raw pointer
parameters (``c_codegen.raw_pointer_func``: the root block's scratch buffers become trailing parameters), marks it
``calling_conv = kCPackedFunc`` so that ``MakePackedAPI`` leaves its signature alone, and builds the module with
``tvm.compile`` for the target. The result is an ELF object (``kernels.o``) whose functions have the prototypes of
``CKernel.signature``: the bundle's ``model.c`` calls them exactly as it calls generated C.

The kernels must be serial: a parallel loop would call TVM's thread pool (``TVMBackendParallelLaunch``), and large
nested allocations TVM's workspace allocator; neither exists in a standalone bundle, so both are refused here (the
parallel loops are made serial here).
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Mapping, Sequence

import tvm
from tvm import s_tir, tirx

from .c_codegen import CCodegenError, CKernel, CSource, kernel_items, raw_pointer_func

_MAX_STACK_BYTES = 1024  # TVM's kMaxStackAlloca: larger allocations go to TVMBackendAllocWorkspace
_CALLING_CONV_C = 1  # tvm::CallingConv::kCPackedFunc: "the signature is already what the caller expects"
_RUNTIME_CALL = re.compile(r"^declare .*@(TVMBackend\w+|TVMFFI\w+|__tvm_ffi\w+)\(", re.M)


@dataclass(frozen=True)
class ObjectSource(CSource):
    """``code`` holds only the kernels' prototypes; the definitions are in ``object_bytes``."""

    object_bytes: bytes = b""
    triple: str = ""
    llvm_ir: str = ""


# The first steps of TVM's own TIR lowering (s_tir.pipeline): after them a register-blocked accumulator that a schedule
# computed at a tile loop is a small buffer allocated inside that loop (a stack array LLVM keeps in registers); only
# the buffers that live at the root block (a padded input copy, transposed weights) become scratch parameters.
_PLACE_ALLOCATIONS = tvm.transform.Sequential([
    s_tir.transform.LowerCrossThreadReduction(), s_tir.transform.LowerInitBlock(),
    s_tir.transform.PlanAndUpdateBufferAllocationLocation(), s_tir.transform.ConvertBlocksToOpaque(),
    s_tir.transform.CompactBufferAllocation()])


def _nbytes(buf) -> int:
    n = tvm.DataType(str(buf.dtype)).bits // 8 * tvm.DataType(str(buf.dtype)).lanes
    for d in buf.shape:
        n *= int(d) if isinstance(d, tirx.IntImm) else 1 << 30
    return n


def _serial_and_writes(func: tirx.PrimFunc) -> tuple:
    """(the PrimFunc with every parallel loop of its block tree made serial and every nested allocation of
    ``_MAX_STACK_BYTES`` or more moved to the root block, the buffers its blocks write).

    A standalone bundle has neither a thread pool nor TVM's workspace allocator (which LLVM codegen calls for large
    nested allocations); once serial, a nested buffer can live at the root: one iteration's values never reach the
    next. Statements this does not descend into keep their loops and allocations; ``generate_object`` then refuses
    the result (it would call the TVM runtime)."""
    written, lifted = [], []

    def visit(stmt, root=False):
        if isinstance(stmt, s_tir.SBlockRealize):
            return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, visit(stmt.block, root))
        if isinstance(stmt, s_tir.SBlock):
            written.extend(region.source for region in stmt.writes)
            init = visit(stmt.init) if stmt.init is not None else None
            keep = [b for b in stmt.alloc_buffers if root or _nbytes(b) < _MAX_STACK_BYTES]
            lifted.extend(b for b in stmt.alloc_buffers if not any(b.same_as(k) for k in keep))
            body = visit(stmt.body)
            allocs = keep + lifted if root else keep
            return s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, body, init,
                                allocs, stmt.match_buffers, stmt.annotations)
        if isinstance(stmt, tirx.SeqStmt):
            return tirx.SeqStmt([visit(s) for s in stmt.seq])
        if isinstance(stmt, tirx.For):
            kind = tirx.ForKind.SERIAL if stmt.kind == tirx.ForKind.PARALLEL else stmt.kind
            return tirx.For(stmt.loop_var, stmt.min, stmt.extent, kind, visit(stmt.body), stmt.thread_binding,
                            stmt.annotations, getattr(stmt, "step", None))
        if isinstance(stmt, tirx.IfThenElse):
            return tirx.IfThenElse(stmt.condition, visit(stmt.then_case),
                                   visit(stmt.else_case) if stmt.else_case is not None else None)
        return stmt

    return func.with_body(visit(func.body, root=True)), written


def _global_scope(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Every "local" buffer (a schedule's register tile) in the "global" scope: on a CPU they are the same memory,
    but LowerTVMBuiltin only puts small *global* allocations on the stack; the others would need the workspace."""
    sch = s_tir.Schedule(func)
    todo = list(sch.get_child_blocks(sch.get_sblock("root")))
    while todo:
        block = todo.pop()
        todo.extend(sch.get_child_blocks(block))
        for i, region in enumerate(sch.get(block).writes):
            if region.source.scope() == "local":
                sch.set_scope(block, i, "global")
    return sch.mod["main"]


def _object_kernel(name: str, func: tirx.PrimFunc) -> tuple:
    """One kernel -> (PrimFunc with pointer parameters and a C calling convention, CKernel)."""
    placed = _PLACE_ALLOCATIONS(tvm.IRModule({"main": _global_scope(func)}))["main"]
    serial, written = _serial_and_writes(placed)
    raw, params = raw_pointer_func(serial)
    buffers = list(serial.params)
    params = tuple(dataclasses.replace(p, readonly=i < len(buffers) and not any(
        w.same_as(buffers[i]) for w in written)) for i, p in enumerate(params))
    # MakePackedAPI, which we skip, is what tells LowerTVMBuiltin that the code runs on the CPU; without it every
    # allocation would go to TVMBackendAllocWorkspace. With it, those under _MAX_STACK_BYTES are stack arrays.
    zero = tirx.const(0, "int32")
    body = tirx.AttrStmt(zero, "device_type", tirx.const(1, "int32"),  # kDLCPU
                         tirx.AttrStmt(zero, "device_id", zero, raw.body))
    raw = raw.with_body(body).with_attr("global_symbol", name).with_attr("calling_conv", _CALLING_CONV_C)
    return raw, CKernel(name, params)


def generate_object(kernels: Mapping[str, tirx.PrimFunc] | Sequence[tuple], target, opt_level: int = 3) -> ObjectSource:
    """Kernels (C name -> PrimFunc, scheduled or not, serial) -> an :class:`ObjectSource` for ``target`` (an LLVM
    target dict or ``tvm.target.Target``)."""
    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    if target.kind.name != "llvm":
        raise CCodegenError(f"generate_object needs an LLVM target, not {target.kind.name!r}")
    funcs, infos = {}, {}
    for name, func in kernel_items(kernels):
        funcs[name], infos[name] = _object_kernel(name, func)
    try:
        with tvm.transform.PassContext(opt_level=opt_level):
            lib = tvm.compile(tvm.IRModule(funcs), target=target)
    except (tvm.error.InternalError, RuntimeError, ValueError) as exc:
        raise CCodegenError(f"TVM's LLVM codegen failed for {target}: {exc}") from exc
    module = getattr(lib, "mod", lib)
    llvm_ir = module.inspect_source("ll")
    runtime = sorted(set(_RUNTIME_CALL.findall(llvm_ir)))
    if runtime:
        raise CCodegenError(f"the kernels call the TVM runtime ({', '.join(runtime)}): a loop is still parallel or a "
                            "buffer needs TVM's workspace allocator; keep intermediates in the root block")
    fd, path = tempfile.mkstemp(suffix=".o", prefix="tvm_bnn_kernels_")
    os.close(fd)
    try:
        module.write_to_file(path)
        with open(path, "rb") as f:
            data = f.read()
    finally:
        os.unlink(path)
    decls = "".join(f"{k.signature};\n" for k in infos.values())
    return ObjectSource(decls, infos, data, str(target.attrs.get("mtriple", "")), llvm_ir)
