"""Helium (MVE) register blocks for the M-profile kernels (Cortex-M55): 4 output channels counted as one vector.

With ``mve``, ``schedules/cortexm.py`` computes a register block of 4 output channels' popcounts as one stage,
``counts[.., lane] += popcount(word)`` over the receptive field's words with the 4 lanes innermost, and marks its
reduction loop (``ANNOTATION``). :func:`lower_lane_blocks` replaces each marked loop nest, once the blocks are
lowered, by one call of the C helper ``tvm_bnn_popcount4`` (``targets/c_codegen.py``), which adds the same counts to
the same accumulators: the loop nest is the helper's reference, and its portable branch is that loop in C. On a core
with MVE the 4 lanes are one vector: each input half broadcast, the 4 filters' halves gathered, XORed, and the 16
bytes counted by one byte gather from a 256-entry table, summed as bytes and widened once per 15 words.

What is replaced is checked, not assumed: at most 3 reduction loops over one innermost loop of 4 lanes, whose single
statement is ``acc[lane] += popcount(word)`` (``tvm_bnn_popcount64``, or ``tvm_bnn_popcount32`` of the low half)
with ``word`` an XOR of an input word (the same for every lane) and a filter word, optionally ANDed with a second
filter word of the same buffer (ternary: ``(x ^ s) & m``), and every address an affine function of the loop
variables with constant strides, verified at every point of the loop nest. Anything else keeps its scalar loops
(exact either way).
"""
from __future__ import annotations

import itertools

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.sym.analyzer import Analyzer

from . import lean

ANNOTATION = "tvm_bnn.popcount4"
LANES = 4
_LOAD = tvm.ir.expr.TensorLoad  # what tirx.BufferLoad builds in this TVM
_CALL = tvm.ir.expr.Call
_COUNTS = {"tvm_bnn_popcount64": 2, "tvm_bnn_popcount32": 1}  # extern -> 32-bit halves per word


def _flat(load: _LOAD):
    """The row-major element offset of ``load`` in its buffer."""
    shape = [int(d) for d in load.source.shape]
    strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]
    expr = tirx.const(0, "int32")
    for idx, stride in zip(load.indices, strides):
        expr = expr + idx * stride
    return expr


def _at(expr, loops, point):
    """``expr`` simplified with the loop variables set to ``point`` (an analyzer's bindings substitute them: this
    TVM exposes no TIR substitution to Python)."""
    ana = Analyzer()
    for lp, v in zip(loops, point):
        ana.bind(lp.loop_var, tirx.const(v, str(lp.loop_var.ty.dtype)))
    return ana.simplify(expr)


def _affine(expr, loops):
    """(offset at the origin, constant stride per loop) if ``expr`` is affine in the loop variables over the whole
    loop nest (checked at every point), else None."""
    origin = [0] * len(loops)
    base = _at(expr, loops, origin)
    strides = []
    for k in range(len(loops)):
        step = Analyzer().simplify(_at(expr, loops, [int(i == k) for i in range(len(loops))]) - base)
        if not isinstance(step, tirx.IntImm):
            return None
        strides.append(int(step.value))
    for point in itertools.product(*[range(int(lp.extent)) for lp in loops]):
        diff = Analyzer().simplify(_at(expr, loops, point) - base)
        if not isinstance(diff, tirx.IntImm) or int(diff.value) != sum(s * v for s, v in zip(strides, point)):
            return None
    return base, strides


def _at_origin(load, loops):
    return tirx.BufferLoad(load.source, [_at(i, loops, [0] * len(loops)) for i in load.indices])


def _nest(loop: tirx.For):
    """The perfectly nested loops from ``loop`` down and the statement inside them (opaque blocks unwrapped)."""
    loops, stmt = [], loop
    while True:
        if isinstance(stmt, tirx.For):
            loops.append(stmt)
            stmt = stmt.body
        elif isinstance(stmt, s_tir.SBlockRealize) and not stmt.block.iter_vars:
            stmt = stmt.block.body
        else:
            return loops, stmt


def _word_loads(word):
    """(input load, filter load, mask load or None) of ``x ^ w`` or ``(x ^ w) & m``, else None."""
    mask = None
    if isinstance(word, tirx.BitwiseAnd) and isinstance(word.b, _LOAD):
        word, mask = word.a, word.b
    if not (isinstance(word, tirx.BitwiseXor) and isinstance(word.a, _LOAD)
            and isinstance(word.b, _LOAD)):
        return None
    return word.a, word.b, mask


def popcount4_call(loop: tirx.For):
    """The ``tvm_bnn_popcount4`` call that does what the loop nest ``loop`` does, or None if it is not such a nest."""
    loops, store = _nest(loop)
    if not (1 <= len(loops) <= 4 and isinstance(store, tirx.BufferStore)):
        return None
    *red, lane = loops
    if int(lane.extent) != LANES or not all(isinstance(lp.extent, tirx.IntImm) for lp in loops):
        return None
    value = store.value
    if not (isinstance(value, tirx.Add) and isinstance(value.a, _LOAD) and value.a.source.same_as(store.buffer)):
        return None
    count = value.b.value if isinstance(value.b, tirx.Cast) else value.b
    if not (isinstance(count, _CALL) and isinstance(count.op, tvm.ir.Op)
            and count.op.name == "tirx.call_pure_extern" and str(count.args[0].value) in _COUNTS):
        return None
    name = str(count.args[0].value)
    word = count.args[1]
    if isinstance(word, tirx.Cast):
        word = word.value
    loads = _word_loads(word)
    if loads is None:
        return None
    x, w, m = loads
    if str(store.buffer.dtype) != "uint32" or any(str(ld.source.dtype) != "uint64" for ld in (x, w)):
        return None  # the helper's pointer types
    acc = _affine(_flat(tirx.BufferLoad(store.buffer, store.indices)), loops)
    xa, wa = _affine(_flat(x), loops), _affine(_flat(w), loops)
    if acc is None or xa is None or wa is None or acc[1] != [0] * len(red) + [1] or xa[1][-1] != 0:
        return None
    mask = 0
    if m is not None:
        ma = _affine(_flat(m), loops)
        if not m.source.same_as(w.source) or ma is None or ma[1] != wa[1]:
            return None
        diff = Analyzer().simplify(ma[0] - wa[0])
        if not isinstance(diff, tirx.IntImm) or int(diff.value) == 0:
            return None
        mask = int(diff.value)
    pad = [1] * (3 - len(red))
    extents = pad + [int(lp.extent) for lp in red]
    xs = [0] * len(pad) + xa[1][:-1]
    ws = [0] * len(pad) + wa[1][:-1]
    args = [tirx.address_of(_at_origin(tirx.BufferLoad(store.buffer, store.indices), loops)),
            tirx.address_of(_at_origin(x, loops)), tirx.address_of(_at_origin(w, loops)),
            _COUNTS[name], mask, wa[1][-1], *extents, *xs, *ws]
    return tirx.Evaluate(tirx.call_extern("int32", "tvm_bnn_popcount4",
                                          *[tirx.const(a, "int32") if isinstance(a, int) else a
                                            for a in args]))


def lower_lane_blocks(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Every loop marked with ``ANNOTATION`` replaced by its ``tvm_bnn_popcount4`` call (:func:`popcount4_call`), or, if
    it is not of that form, left as it is without the mark."""
    def replace(stmt):
        if not (isinstance(stmt, tirx.For) and ANNOTATION in stmt.annotations):
            return None
        call = popcount4_call(stmt)
        if call is not None:
            return call
        notes = {k: v for k, v in stmt.annotations.items() if k != ANNOTATION}
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, stmt.body, stmt.thread_binding, notes,
                        getattr(stmt, "step", None))

    return lean.map_statements(func, replace)
