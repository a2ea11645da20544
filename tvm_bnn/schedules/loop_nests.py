"""Lowered loop nests read back exactly: what the checked helper-call replacements (schedules/cortexm_mve.py,
schedules/cortexm_vfp.py) need to prove that a nest does what their C helper does.

A replacement is made only once every address the nest touches is shown to be an affine function of its loop
variables with constant strides over the whole nest: by TVM's linear-equation detector, or else point by point (an
analyzer with the loop variables bound evaluates each point; this TVM exposes no TIR substitution to Python).
"""
from __future__ import annotations

import itertools

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.sym import detect_linear_equation
from tvm.sym.analyzer import Analyzer

LOAD = tvm.ir.expr.TensorLoad  # what tirx.BufferLoad builds in this TVM
CALL = tvm.ir.expr.Call
MAX_POINTS = 4096  # of a nest checked point by point (compile time grows with it)


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
    loop nest, else None. Proven by TVM's linear-equation detector (constant coefficients: affine everywhere);
    an expression it cannot read (a floordiv that is affine only on the nest's range) is checked at every point of
    a nest of at most ``MAX_POINTS`` points."""
    origin = [0] * len(loops)
    base = value_at(expr, loops, origin)
    ana = Analyzer()  # the loops' ranges let it simplify floordiv / floormod of a blocked layout
    for lp in loops:
        ana.bind(lp.loop_var, tvm.ir.Range.from_min_extent(lp.min, lp.extent))
    found = detect_linear_equation(ana.simplify(expr), [lp.loop_var for lp in loops])
    if found:
        coefficients = [Analyzer().simplify(c) for c in found[:-1]]
        if all(isinstance(c, tirx.IntImm) for c in coefficients):
            return base, [int(c.value) for c in coefficients]
    if not constant_extents(loops) or int(np.prod([int(lp.extent) for lp in loops])) > MAX_POINTS:
        return None
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
