"""What counts as a binarized activation, in the forms BNN code exports to.

``binary_source(graph, expr)`` answers: is ``expr`` a ±1 tensor computed as ``x >= 0 ? +1 : -1`` of some float
tensor ``x`` (up to the tie at exactly 0, see README "Tie rule")? If so it returns a :class:`Source` that can
re-emit ``x``; if not, a reason in words for the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tvm import relax

from .graph import Graph, is_op

# Ops that commute with a monotone elementwise binarization: B(op(x)) == op(B(x)).
_LAYOUT_OPS = ("reshape", "permute_dims", "flatten", "squeeze", "expand_dims", "nn.max_pool2d")


@dataclass
class Source:
    """``x`` such that the binarized tensor is sign(layout_ops(x)); re-emitted by :meth:`emit`."""

    x: relax.Expr
    layout: list = field(default_factory=list)  # calls to re-apply on x, innermost first

    def emit(self, bb, new):
        out = new(self.x)
        for call in self.layout:
            out = bb.emit(relax.Call(call.op, [out] + [new(a) for a in call.args[1:]], call.attrs, call.ty_args))
        return out


def _is_float_cast(value) -> bool:
    return is_op(value, "astype") and str(value.attrs.dtype).startswith(("float", "bfloat"))


def _const_scalar(graph: Graph, expr):
    c = graph.constant(expr)
    if c is None or c.size != 1:
        return None
    return float(c.reshape(-1)[0])


def is_binarizer(graph: Graph, expr) -> bool:
    return isinstance(binary_source(graph, expr), Source)


def binary_source(graph: Graph, expr) -> Source | str:
    """The float tensor whose sign bits ``expr`` is, or the reason it is not a binarized tensor."""
    value = graph.value(expr)
    layout = []
    while is_op(value, *_LAYOUT_OPS) or _is_float_cast(value):
        if not _is_float_cast(value):  # a cast between float types keeps +-1 exactly: drop it
            layout.insert(0, value)
        value = graph.value(value.args[0])
    if is_op(value, "sign"):
        x = value.args[0]
    elif is_op(value, "where"):
        x = _where_source(graph, value)
        if x is None:
            return "where(...) is not of the form where(x >= 0, 1, -1)"
    elif isinstance(value, relax.Var):
        return "activation input is a float model input, not binarized"
    else:
        name = value.op.name.removeprefix("relax.") if isinstance(value, relax.Call) and hasattr(value.op, "name") \
            else type(value).__name__
        return f"activation input is not binarized (it comes from {name}, not sign/where(x>=0,1,-1))"
    return Source(_strip_sign_preserving(graph, x), layout)


def _where_source(graph: Graph, where):
    cond, hi, lo = where.args
    if _const_scalar(graph, hi) != 1.0 or _const_scalar(graph, lo) != -1.0:
        return None
    cond = graph.value(cond)
    if is_op(cond, "greater_equal") and _const_scalar(graph, cond.args[1]) == 0.0:
        return cond.args[0]
    if is_op(cond, "less_equal") and _const_scalar(graph, cond.args[0]) == 0.0:
        return cond.args[1]
    return None


def _strip_sign_preserving(graph: Graph, x):
    """clip(y, lo, hi) with lo < 0 <= hi (Hardtanh) has the same x >= 0 test as y."""
    while True:
        v = graph.value(x)
        if is_op(v, "clip"):
            lo, hi = (float(a.value) for a in v.args[1:3])
            if lo < 0 <= hi:
                x = v.args[0]
                continue
        return x


def is_pm1_constant(c) -> bool:
    return c is not None and c.size == 1 and abs(float(np.asarray(c).reshape(-1)[0])) == 1.0
