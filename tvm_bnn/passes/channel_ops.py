"""Per-channel elementwise ops that may follow a binary layer, and how to evaluate them exactly in numpy.

Channel axis is 1 for both our float kernel outputs (conv2d NCHW, dense [M, N]).
"""
from __future__ import annotations

import numpy as np

from .graph import Graph, is_op, op_name, per_channel, static_shape

AFFINE = ("add", "subtract", "multiply", "divide")


def affine_step(graph: Graph, value, var_in, channels: int):
    """If ``value`` is ``var_in (+-*/) c`` or ``c (+-*) var_in`` with ``c`` per channel: (s, b) such that the op
    maps t -> t * s + b per channel; else None."""
    if not is_op(value, *AFFINE):
        return None
    lhs, rhs = value.args
    ndim = len(static_shape(value) or ())
    if lhs.same_as(var_in) and not rhs.same_as(var_in):
        c, x_first = graph.constant(rhs), True
    elif rhs.same_as(var_in) and not lhs.same_as(var_in):
        c, x_first = graph.constant(lhs), False
    else:
        return None
    if c is None or ndim < 2:
        return None
    c = per_channel(c, channels, 1, ndim)
    if c is None:
        return None
    one, zero = np.ones(channels), np.zeros(channels)
    name = op_name(value).removeprefix("relax.")
    if name == "add":
        return one, c
    if name == "subtract":
        return (one, -c) if x_first else (-one, c)
    if name == "multiply":
        return c, zero
    if name == "divide" and x_first:
        return 1.0 / c, zero
    return None


def channel_function(graph: Graph, value, var_in, channels: int):
    """``value`` as a function of ``var_in`` evaluated per channel on a [channels, n] float64 array, or None."""
    step = affine_step(graph, value, var_in, channels)
    if step is not None:
        s, b = step
        return lambda t: t * s[:, None] + b[:, None]
    if not value.args[0].same_as(var_in):
        return None
    name = op_name(value)
    if name == "relax.clip":
        lo, hi = (float(a.value) for a in value.args[1:3])
        return lambda t: np.clip(t, lo, hi)
    if name == "relax.nn.relu":
        return lambda t: np.maximum(t, 0.0)
    if name == "relax.nn.leakyrelu":
        a = float(value.attrs.alpha)
        return lambda t: np.where(t >= 0, t, a * t)
    if name == "relax.nn.prelu":
        slope = graph.constant(value.args[1])
        if slope is None or int(value.attrs.axis) != 1:
            return None
        slope = np.broadcast_to(slope.reshape(-1), (channels,)).astype(np.float64)
        return lambda t: np.where(t >= 0, t, slope[:, None] * t)
    if name in ("relax.maximum", "relax.minimum"):
        c = graph.constant(value.args[1])
        ndim = len(static_shape(value) or ())
        c = per_channel(c, channels, 1, ndim) if c is not None else None
        if c is None:
            return None
        f = np.maximum if name == "relax.maximum" else np.minimum
        return lambda t: f(t, c[:, None])
    if name in ("relax.tanh", "relax.sigmoid", "relax.nn.gelu", "relax.nn.silu"):
        import math

        fn = {"relax.tanh": np.tanh, "relax.sigmoid": lambda t: 1 / (1 + np.exp(-t)),
              "relax.nn.gelu": lambda t: 0.5 * t * (1 + np.vectorize(math.erf)(t / math.sqrt(2))),
              "relax.nn.silu": lambda t: t / (1 + np.exp(-t))}[name]
        return fn
    return None
