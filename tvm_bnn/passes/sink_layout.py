"""SinkTransposes: move transposes below the elementwise ops that follow them, and merge them.

Matches an elementwise op (unary, binary, ``where``, a cast) whose non-constant operands are all ``permute_dims`` of
the same axes, ``u(T(a), c, T(b))``, and emits ``T(u(a, T^-1(c), b))`` (constants permuted back, broadcasting kept);
``T2(T1(a))`` becomes one transpose, or ``a`` when they cancel. Repeated until nothing moves.

Exporters from NHWC frameworks (tf2onnx) put transposes between the pieces of one elementwise computation: QKeras'
straight-through sum ``Add(x, Add(Neg(x), Transpose(k(Transpose(x)))))`` reaches ``x`` through two layout paths. Once
the transposes sink and cancel, the computation is one chain on one tensor, which the straight-through algebra
(straight_through.py) and the activation analysis (binary_values.py) see whole. Exact: an elementwise op commutes
with a permutation of its elements.
"""
from __future__ import annotations

import numpy as np
from tvm import relax

import tvm

from .graph import Graph, op_name, static_shape, tensor_args
from .rewrite import apply_recipes, relax_functions

ELEMENTWISE = {
    "relax.sign", "relax.abs", "relax.negative", "relax.nn.relu", "relax.nn.relu6", "relax.clip", "relax.floor",
    "relax.ceil", "relax.round", "relax.trunc", "relax.tanh", "relax.sigmoid", "relax.erf", "relax.atan",
    "relax.asinh", "relax.sinh", "relax.exp", "relax.square", "relax.sqrt", "relax.logical_not", "relax.astype",
    "relax.nn.leakyrelu", "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum", "relax.power", "relax.greater", "relax.greater_equal", "relax.less", "relax.less_equal",
    "relax.equal", "relax.not_equal", "relax.logical_and", "relax.logical_or", "relax.logical_xor", "relax.where",
}
MAX_ROUNDS = 32


def _axes(value, ndim: int) -> tuple:
    axes = value.attrs.axes
    return tuple(int(a) for a in axes) if axes is not None else tuple(reversed(range(ndim)))


def _transpose_of(graph: Graph, expr):
    """(input, axes) if ``expr`` is bound to a permute_dims, else None."""
    value = graph.value(expr)
    if op_name(value) != "relax.permute_dims":
        return None
    shape = static_shape(value.args[0])
    if shape is None:
        return None
    return value.args[0], _axes(value, len(shape))


def _unpermute(c: np.ndarray, axes: tuple) -> np.ndarray:
    """A constant broadcast against T(a) (T = permute_dims(axes)) -> the same constant against a."""
    full = c.reshape((1,) * (len(axes) - c.ndim) + c.shape)
    return np.transpose(full, np.argsort(axes))


def _plan(mod, graph: Graph) -> dict:
    recipes = {}
    for _, value in graph.order:
        name = op_name(value)
        if name == "relax.permute_dims":
            inner = _transpose_of(graph, value.args[0])
            if inner is None:
                continue
            a, first = inner
            second = _axes(value, len(first))
            axes = tuple(first[i] for i in second)
            if axes == tuple(range(len(axes))):
                recipes[value] = lambda bb, new, a=a: new(a)
            else:
                recipes[value] = lambda bb, new, a=a, axes=axes: relax.op.permute_dims(new(a), list(axes))
            continue
        if name not in ELEMENTWISE:
            continue
        args = tensor_args(value)
        plan = []  # per operand: ("t", input) or ("c", numpy constant)
        axes = None
        for arg in args:
            c = graph.constant(arg)
            if c is not None:
                plan.append(("c", c))
                continue
            t = _transpose_of(graph, arg)
            if t is None or (axes is not None and t[1] != axes):
                break
            axes = t[1]
            plan.append(("t", t[0]))
        else:
            if axes is None:
                continue
            if any(kind == "c" and c.ndim > len(axes) for kind, c in plan):
                continue

            def recipe(bb, new, value=value, plan=plan, axes=axes):
                operands = iter(new(x) if kind == "t" else relax.const(_unpermute(x, axes), str(x.dtype))
                                for kind, x in plan)
                call_args = [next(operands) if isinstance(getattr(a, "ty", None), relax.TensorType) else a
                             for a in value.args]
                inner = bb.emit(relax.Call(value.op, call_args, value.attrs, value.ty_args))
                return relax.op.permute_dims(inner, list(axes))

            recipes[value] = recipe
    return recipes


@tvm.transform.module_pass(opt_level=0, name="tvm_bnn.SinkTransposes")
def SinkTransposes(mod, _ctx):  # noqa: N802 - a pass
    """Rewrite until no transpose moves (each round moves every transpose one op down)."""
    for _ in range(MAX_ROUNDS):
        changed = False
        for gvar, func in relax_functions(mod):
            recipes = _plan(mod, Graph(func))
            if recipes:
                mod, changed = apply_recipes(mod, gvar, recipes), True
        if not changed:
            break
    return mod
