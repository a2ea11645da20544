"""Lowered loop nests read back exactly: what the checked helper-call replacements (schedules/cortexm_mve.py,
schedules/cortexm_vfp.py) need to prove that a nest does what their C helper does.

A replacement is made only once every address the nest touches is shown to be an affine function of its loop
variables with constant strides, at *every* point of the nest (this TVM exposes neither a TIR substitution nor an
affine-map detector to Python; an analyzer with the loop variables bound evaluates each point).
"""
from __future__ import annotations

import itertools

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.sym.analyzer import Analyzer

LOAD = tvm.ir.expr.TensorLoad  # what tirx.BufferLoad builds in this TVM
CALL = tvm.ir.expr.Call


def flat_offset(load):
    """The row-major element offset of ``load`` (a BufferLoad or a BufferStore) in its buffer."""
    buf = load.source if isinstance(load, LOAD) else load.buffer
    shape = [int(d) for d in buf.shape]
    strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]
    expr = tirx.const(0, "int32")
    for idx, stride in zip(load.indices, strides):
        expr = expr + idx * stride
    return expr


def value_at(expr, loops, point):
    """``expr`` simplified with the loop variables set to ``point`` (an analyzer's bindings substitute them)."""
    ana = Analyzer()
    for lp, v in zip(loops, point):
        ana.bind(lp.loop_var, tirx.const(v, str(lp.loop_var.ty.dtype)))
    return ana.simplify(expr)


def affine(expr, loops):
    """(offset at the origin, constant stride per loop) if ``expr`` is affine in the loop variables over the whole
    loop nest (checked at every point), else None."""
    origin = [0] * len(loops)
    base = value_at(expr, loops, origin)
    strides = []
    for k in range(len(loops)):
        step = Analyzer().simplify(value_at(expr, loops, [int(i == k) for i in range(len(loops))]) - base)
        if not isinstance(step, tirx.IntImm):
            return None
        strides.append(int(step.value))
    for point in itertools.product(*[range(int(lp.extent)) for lp in loops]):
        diff = Analyzer().simplify(value_at(expr, loops, point) - base)
        if not isinstance(diff, tirx.IntImm) or int(diff.value) != sum(s * v for s, v in zip(strides, point)):
            return None
    return base, strides


def address_at_origin(load, loops):
    """The address of ``load``'s element at the origin of the loop nest (a pointer argument of a helper)."""
    buf = load.source if isinstance(load, LOAD) else load.buffer
    return tirx.address_of(tirx.BufferLoad(buf, [value_at(i, loops, [0] * len(loops)) for i in load.indices]))


def perfect_nest(stmt):
    """The perfectly nested loops from ``stmt`` down and the statement inside them (opaque blocks unwrapped)."""
    loops = []
    while True:
        if isinstance(stmt, tirx.For):
            loops.append(stmt)
            stmt = stmt.body
        elif isinstance(stmt, s_tir.SBlockRealize) and not stmt.block.iter_vars:
            stmt = stmt.block.body
        else:
            return loops, stmt


def constant_extents(loops) -> bool:
    return all(isinstance(lp.extent, tirx.IntImm) for lp in loops)


def without_annotation(stmt: tirx.For, key: str) -> tirx.For:
    """``stmt`` without its annotation ``key`` (a mark that was not acted on)."""
    notes = {k: v for k, v in stmt.annotations.items() if k != key}
    return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, stmt.body, stmt.thread_binding, notes,
                    getattr(stmt, "step", None))
