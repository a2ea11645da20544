"""Ops and expressions in the user's words, for the report's reasons.

Relax names ops after NumPy (``relax.greater_equal``); users meet them as ONNX node types (``GreaterOrEqual``) or as
the PyTorch/Keras calls the importers turned into them. Reasons name an op by its ONNX type, which both frontends'
users recognise, and show its operands in function notation (``an Equal of sign(x) with 0``), where ``x`` is the
tensor the analysed chain starts from.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .graph import Graph, op_name, tensor_args

OP_NAMES = {
    "equal": "Equal", "not_equal": "NotEqual", "greater": "Greater", "greater_equal": "GreaterOrEqual",
    "less": "Less", "less_equal": "LessOrEqual", "where": "Where", "sign": "Sign", "abs": "Abs", "negative": "Neg",
    "add": "Add", "subtract": "Sub", "multiply": "Mul", "divide": "Div", "maximum": "Max", "minimum": "Min",
    "clip": "Clip", "relu": "Relu", "leakyrelu": "LeakyRelu", "prelu": "PRelu", "round": "Round", "floor": "Floor",
    "ceil": "Ceil", "trunc": "Trunc", "astype": "Cast", "permute_dims": "Transpose", "reshape": "Reshape",
    "tanh": "Tanh", "sigmoid": "Sigmoid", "erf": "Erf", "atan": "Atan", "asinh": "Asinh", "sinh": "Sinh",
    "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "power": "Pow", "square": "Square", "conv2d": "Conv",
    "matmul": "MatMul", "max_pool2d": "MaxPool", "avg_pool2d": "AveragePool", "adaptive_avg_pool2d": "GlobalAveragePool",
    "concat": "Concat", "mean": "ReduceMean", "sum": "ReduceSum", "pad": "Pad", "split": "Split",
    "strided_slice": "Slice", "flatten": "Flatten", "squeeze": "Squeeze", "expand_dims": "Unsqueeze",
    "logical_not": "Not", "logical_and": "And", "logical_or": "Or", "logical_xor": "Xor", "gelu": "Gelu",
    "silu": "Silu", "softplus": "Softplus", "relu6": "Relu6", "isnan": "IsNaN", "ones_like": "ones_like",
    "zeros_like": "zeros_like", "full_like": "full_like",
}


def op_title(value) -> str:
    """The ONNX-style name of the op of ``value`` (``Equal``), or a readable fallback."""
    name = op_name(value)
    if name is None:
        return type(value).__name__
    if name == "relax.call_tir":
        return str(getattr(value.args[0], "name_hint", "fused"))
    short = name.removeprefix("relax.").removeprefix("nn.")
    return OP_NAMES.get(short, short)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeio" or word.startswith(("X", "Un")) else "a"


def _number(c: np.ndarray) -> str:
    c = np.asarray(c)
    if c.size == 1:
        return f"{float(c.reshape(-1)[0]) + 0.0:.6g}"
    return "a constant" if np.ptp(c.astype(np.float64)) else f"{float(c.reshape(-1)[0]) + 0.0:.6g}"


def render(graph: Graph | None, expr, root=None, depth: int = 2) -> str:
    """``expr`` in function notation: ``sign(x)``, ``0``, ``where(...)``; ``root`` prints as ``x``."""
    if root is not None and (expr.same_as(root) or (graph is not None and graph.value(expr).same_as(
            graph.value(root)))):
        return "x"
    if graph is not None:
        c = graph.constant(expr)
        if c is not None:
            return _number(c)
        value = graph.value(expr)
    else:
        value = expr
    if isinstance(value, tvm.ir.expr.GenericConst):
        return _number(value.value.numpy())
    if isinstance(value, relax.Var):
        return value.name
    if isinstance(value, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):
        return _number(np.asarray(value.value))
    if isinstance(value, relax.TupleGetItem):
        return f"{render(graph, value.tuple_value, root, depth)}[{value.index}]"
    name = op_name(value)
    if name is None:
        return type(value).__name__
    fn = op_title(value).lower() if name != "relax.call_tir" else op_title(value)
    if depth <= 0:
        return f"{fn}(...)"
    args = [a for a in value.args if isinstance(a, relax.Expr)]
    return f"{fn}({', '.join(render(graph, a, root, depth - 1) for a in args)})"


def describe(value, graph: Graph | None = None, root=None) -> str:
    """An op as the user wrote it: ``a Conv``, ``the model input 'x'``; with ``graph``, its operands too:
    ``an Equal of sign(x) with 0`` (``root`` prints as ``x``)."""
    if isinstance(value, relax.TupleGetItem):
        tup = graph.value(value.tuple_value) if graph is not None else value.tuple_value
        return "a Split" if op_name(tup) == "relax.split" else "an element of a tuple"
    if isinstance(value, relax.Var):
        return f"the model input {value.name!r}"
    title = op_title(value)
    text = f"{_article(title)} {title}"
    if graph is None or op_name(value) in (None, "relax.call_tir"):
        return text
    args = [render(graph, a, root, 1) for a in tensor_args(value)]
    if not args:
        return text
    text += f" of {args[0]}"
    if len(args) == 2:
        text += f" with {args[1]}"
    elif len(args) > 2:
        text += ", " + ", ".join(args[1:-1]) + f" and {args[-1]}"
    return text
