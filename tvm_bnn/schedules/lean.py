"""A memory-lean schedule for the C bundle: fewer and smaller intermediate buffers in a PrimFunc.

Unscheduled TE/legalized PrimFuncs materialise every stage (a transposed copy of the weights, the int32 dot before
the threshold, each elementwise step of a folded BatchNorm, the whole popcount accumulator of a layer); in the
bundle each such buffer is a scratch block of the arena. Two schedule steps shrink them, both semantics-preserving
(TVM's schedule primitives check their preconditions and raise otherwise; a primitive that raises is skipped):

1. ``compute_inline`` of every injective stage into its consumer: the same arithmetic, evaluated in place (no change
   in results: the C is compiled without floating-point contraction under ``-std=c99``). Padding blocks (``pad*``)
   stay materialised: inlined, they would put a bounds test into the innermost reduction loop.
2. A reduction whose single consumer visits exactly as many points as the reduction has outputs (each output read
   once: the popcount accumulator feeding the threshold/scale epilogue, a float conv feeding its folded BatchNorm)
   is computed at the consumer's innermost loop where ``compute_at`` applies; TVM's ``CompactBufferAllocation`` then
   shrinks its buffer to what one iteration needs (e.g. 64 x 64 uint64 -> 64 words), and the compacted buffer is
   lifted back to the root block so that the C codegen makes it a scratch argument (serial code: one iteration's
   values never flow to the next). A reduction read many times per output (``popw``, ``pad_adjust``) is left alone:
   computing it per use would repeat work.
"""
from __future__ import annotations

import re

import numpy as np
from tvm import s_tir, tirx


def _try(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except Exception:  # noqa: BLE001 - an illegal primitive leaves the schedule unchanged
        return False


def _inline(sch, root, keep_prefixes):
    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(root):
            name = sch.get(block).name_hint
            if any(name.startswith(p) for p in keep_prefixes) or not _try(sch.compute_inline, block):
                continue
            changed = True
            break


def _extent(sch, loop):
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _written_elems(sch, block):
    blk = sch.get(block)
    if len(blk.writes) != 1:
        return None
    buf = blk.writes[0].source
    shape = getattr(getattr(buf, "ty", None), "shape", None) or getattr(buf, "shape", None)
    try:
        return int(np.prod([int(d) for d in shape], dtype=np.int64))
    except Exception:  # noqa: BLE001
        return None


def _compute_reductions_at_consumers(sch, root):
    for name in [sch.get(b).name_hint for b in sch.get_child_blocks(root)]:
        try:
            block = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - the name is ambiguous or gone
            continue
        if not any(int(iv.iter_type) == 2 for iv in sch.get(block).iter_vars):
            continue  # only reductions (the injective stages were inlined or are kept on purpose)
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            continue
        loops = sch.get_loops(consumers[0])
        extents = [_extent(sch, lp) for lp in loops]
        elems = _written_elems(sch, block)
        if None in extents or elems is None or int(np.prod(extents, dtype=np.int64)) != elems:
            continue
        for loop in reversed(loops):
            if _try(sch.compute_at, block, loop):
                break


def lift_nested_allocs(func: tirx.PrimFunc, keep=None) -> tirx.PrimFunc:
    """Move the buffers allocated in nested blocks to the root block (where the C codegen makes them scratch
    arguments). Buffers for which ``keep(buffer)`` holds (a few accumulators that the C compiler keeps in
    registers) stay where they are: the codegen declares them as small local arrays."""
    keep = keep or (lambda buf: False)
    lifted, nested = [], []

    def visit(stmt):
        if isinstance(stmt, s_tir.SBlockRealize):
            return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, visit(stmt.block))
        if isinstance(stmt, s_tir.SBlock):
            kept = [b for b in stmt.alloc_buffers if keep(b)]
            lifted.extend(b for b in stmt.alloc_buffers if not keep(b))
            nested.extend(kept)
            return s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, visit(stmt.body),
                                stmt.init, kept, stmt.match_buffers, stmt.annotations)
        if isinstance(stmt, tirx.SeqStmt):
            return tirx.SeqStmt([visit(s) for s in stmt.seq])
        if isinstance(stmt, tirx.For):
            return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, visit(stmt.body), stmt.thread_binding,
                            stmt.annotations, getattr(stmt, "step", None))
        if isinstance(stmt, tirx.IfThenElse):
            return tirx.IfThenElse(stmt.condition, visit(stmt.then_case),
                                   visit(stmt.else_case) if stmt.else_case is not None else None)
        return stmt

    realize = func.body
    if not isinstance(realize, s_tir.SBlockRealize):
        raise ValueError("no root block")
    root = realize.block
    body = visit(root.body)
    new_root = s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint, body, root.init,
                            list(root.alloc_buffers) + lifted, root.match_buffers, root.annotations)
    new = func.with_body(s_tir.SBlockRealize(realize.iter_values, realize.predicate, new_root))
    text = new.script()
    names = {str(b.name) for b in nested}
    for m in re.finditer(r"^( *)(\w+) = T\.sblock_alloc_buffer", text, re.M):
        if len(m.group(1)) != 4 and m.group(2) not in names:
            raise ValueError("an allocation is left in a nested statement")
    return new


_lift_nested_allocs = lift_nested_allocs


def map_statements(func: tirx.PrimFunc, fn) -> tirx.PrimFunc:
    """``func`` with every statement ``s`` for which ``fn(s)`` is not None replaced by ``fn(s)``, the others rebuilt
    around their children (this TVM exposes no TIR mutator to Python; the statements a scheduled, lowered kernel has
    are rebuilt here)."""

    def visit(stmt):
        new = fn(stmt)
        if new is not None:
            return new
        if isinstance(stmt, s_tir.SBlockRealize):
            return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, visit(stmt.block))
        if isinstance(stmt, s_tir.SBlock):
            return s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, visit(stmt.body),
                                visit(stmt.init) if stmt.init is not None else None, stmt.alloc_buffers,
                                stmt.match_buffers, stmt.annotations)
        if isinstance(stmt, tirx.SeqStmt):
            return tirx.SeqStmt([visit(s) for s in stmt.seq])
        if isinstance(stmt, tirx.For):
            return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, visit(stmt.body), stmt.thread_binding,
                            stmt.annotations, getattr(stmt, "step", None))
        if isinstance(stmt, tirx.IfThenElse):
            return tirx.IfThenElse(stmt.condition, visit(stmt.then_case),
                                   visit(stmt.else_case) if stmt.else_case is not None else None)
        return stmt

    return func.with_body(visit(func.body))


def map_stores(func: tirx.PrimFunc, fn) -> tirx.PrimFunc:
    """``func`` with every BufferStore ``s`` replaced by ``fn(s)``."""
    return map_statements(func, lambda s: fn(s) if isinstance(s, tirx.BufferStore) else None)


def inline_intermediates(func: tirx.PrimFunc, keep_prefixes=("pad",), shrink_reductions: bool = True) -> tirx.PrimFunc:
    """``func`` with its injective stages inlined and (``shrink_reductions``) its once-read reductions computed per
    consumer iteration in a compacted buffer. Whatever does not apply is skipped; on any failure of step 2 the
    result of step 1 is returned."""
    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - no root block: leave the function as it is
        return func
    _inline(sch, root, keep_prefixes)
    inlined = sch.mod["main"]
    if not shrink_reductions:
        return inlined
    try:
        _compute_reductions_at_consumers(sch, sch.get_sblock("root"))
        mod = sch.mod
        for p in (s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
                  s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation()):
            mod = p(mod)
        return _lift_nested_allocs(mod["main"])
    except Exception:  # noqa: BLE001 - keep the inlined version
        return inlined
