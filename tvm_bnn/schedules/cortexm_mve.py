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
variables with constant strides over the whole nest (schedules/loop_nests.py). Anything else keeps its scalar loops
(exact either way).
"""
from __future__ import annotations

import tvm
from tvm import tirx
from tvm.sym.analyzer import Analyzer

from . import lean
from .loop_nests import (CALL, LOAD, address_at_origin, affine, constant_extents, flat_offset, perfect_nest,
                         without_annotation)

ANNOTATION = "tvm_bnn.popcount4"
LANES = 4
_COUNTS = {"tvm_bnn_popcount64": 2, "tvm_bnn_popcount32": 1}  # extern -> 32-bit halves per word


def _word_loads(word):
    """(input load, filter load, mask load or None) of ``x ^ w`` or ``(x ^ w) & m``, else None."""
    mask = None
    if isinstance(word, tirx.BitwiseAnd) and isinstance(word.b, LOAD):
        word, mask = word.a, word.b
    if not (isinstance(word, tirx.BitwiseXor) and isinstance(word.a, LOAD)
            and isinstance(word.b, LOAD)):
        return None
    return word.a, word.b, mask


def popcount4_call(loop: tirx.For):
    """The ``tvm_bnn_popcount4`` call that does what the loop nest ``loop`` does, or None if it is not such a nest."""
    loops, store = perfect_nest(loop)
    if not (1 <= len(loops) <= 4 and isinstance(store, tirx.BufferStore)):
        return None
    *red, lane = loops
    if int(lane.extent) != LANES or not constant_extents(loops):
        return None
    value = store.value
    if not (isinstance(value, tirx.Add) and isinstance(value.a, LOAD) and value.a.source.same_as(store.buffer)):
        return None
    count = value.b.value if isinstance(value.b, tirx.Cast) else value.b
    if not (isinstance(count, CALL) and isinstance(count.op, tvm.ir.Op)
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
    acc = affine(flat_offset(store), loops)
    xa, wa = affine(flat_offset(x), loops), affine(flat_offset(w), loops)
    if acc is None or xa is None or wa is None or acc[1] != [0] * len(red) + [1] or xa[1][-1] != 0:
        return None
    mask = 0
    if m is not None:
        ma = affine(flat_offset(m), loops)
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
    args = [address_at_origin(store, loops), address_at_origin(x, loops), address_at_origin(w, loops),
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
        return without_annotation(stmt, ANNOTATION)

    return lean.map_statements(func, replace)
