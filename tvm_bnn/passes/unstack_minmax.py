"""UnstackMinMax: a min/max reduction over a stack of tensors -> elementwise minimum/maximum.

TVM's ONNX importer writes ONNX's variadic ``Min``/``Max`` (tf2onnx's clip, ``Min(Max(x, lo), hi)``) as
``max(stack((broadcast_to(a), broadcast_to(b)), axis=k), axis=[k])``. Matches that reduction (``keepdims=False``, one
axis, the stacked one) and emits ``maximum(a, b)`` (a fold over more than two), so that the clip is an elementwise op
of one tensor again, which the activation analysis reads; ``broadcast_to`` a tensor's own shape becomes the tensor.
Exact: the same comparisons in the same order.
"""
from __future__ import annotations

from tvm import relax

from .graph import Graph, op_name, static_shape
from .rewrite import rewrite_pass

_ELEMENTWISE = {"relax.min": relax.op.minimum, "relax.max": relax.op.maximum}


def _unbroadcast(graph: Graph, expr):
    value = graph.value(expr)
    if op_name(value) == "relax.broadcast_to" and static_shape(value.args[0]) == static_shape(value):
        return value.args[0]
    return expr


def _plan(mod, graph: Graph) -> dict:
    recipes = {}
    for _, value in graph.order:
        name = op_name(value)
        if name == "relax.broadcast_to" and static_shape(value.args[0]) is not None and \
                static_shape(value.args[0]) == static_shape(value):
            recipes[value] = lambda bb, new, a=value.args[0]: new(a)
            continue
        if name not in _ELEMENTWISE or value.attrs.keepdims or value.attrs.axis is None or \
                len(value.attrs.axis) != 1:
            continue
        stack = graph.value(value.args[0])
        if op_name(stack) != "relax.stack" or int(stack.attrs.axis) != int(value.attrs.axis[0]):
            continue
        parts = graph.value(stack.args[0])
        if not isinstance(parts, relax.Tuple) or len(parts.fields) < 2:
            continue
        fields = [_unbroadcast(graph, f) for f in parts.fields]
        shape = static_shape(value)
        if shape is None or any(static_shape(f) != shape for f in fields) or \
                all(graph.constant(f) is not None for f in fields):
            continue

        def recipe(bb, new, fields=fields, fn=_ELEMENTWISE[name]):
            operands = []
            for f in fields:
                c = graph.constant(f)
                # a uniform constant (the stacked clip bound) as a scalar: the analysis then needs no x-space for it
                operands.append(relax.const(c.reshape(-1)[0], str(c.dtype)) if c is not None and c.size and
                                (c == c.reshape(-1)[0]).all() else new(f))
            out = operands[0]
            for f in operands[1:]:
                out = bb.emit(fn(out, f))
            return out

        recipes[value] = recipe
    return recipes


UnstackMinMax = rewrite_pass("tvm_bnn.UnstackMinMax", _plan)
