"""FuseTernaryPairs: two binary convs of one packed input summed, their weight planes of equal scale -> one
ternary_conv2d, on the targets whose kernels have a ternary form.

A layer with ternary weights {-a, 0, a} is two ±1 weight planes of scale a/2 (passes/weights.weight_planes), so
BinarizeLayers emits, per activation plane, ``add(binary_conv2d(xp, w1, s, b1), binary_conv2d(xp, w2, s, b2))``. Any
two ±1 planes of equal per-channel scale sum to a ternary filter, ``(w1 + w2) / 2`` in {-1, 0, 1}, so the pair is
``ternary_conv2d(xp, [sign, mask], 2 * s, b1 + b2)`` (ops/ternary_conv2d.py): one popcount per word instead of two,
with the mask load and AND on top. On an M-profile core, where a popcount costs 5-7 instructions, that is most of
the pair's cost (bench/cmsis_nn.py --part 1 --low-bit: a W2A2 conv in 0.59x the instructions of its four binary
kernels; the C bundle: filters "OHWI", schedules/cortexm.py). x86 with a 64-bit vector
popcount (AVX-512 VPOPCNTDQ) or scalar popcnt, whose binary kernel vectorises over output channels, gets the filters
in that layout ("HWIO") and the same schedule (schedules/x86.py); AVX2 and NEON (byte-lane kernels,
schedules/simd_bytes.py) keep the pair.

Matches: ``add(a, b)`` where ``a`` and ``b`` are (aliases of) single-use float ``binary_conv2d`` calls with the same
packed input, the same parameters and constant filters and scales, the scales equal. The output differs from the
pair's only by float rounding (one ``dot * scale + bias`` instead of two summed).
"""
from __future__ import annotations

import numpy as np
from tvm import relax

from ..ops import ternary_conv2d
from ..ops.binary_conv2d import Conv2dGeometry
from ..passes.graph import is_op, static_shape
from ..passes.kernels import call_kernel, kernel_of
from ..passes.rewrite import rewrite_pass


def _conv_behind(mod, graph, expr):
    """(var, KernelCall) of the float binary conv ``expr`` is bound to through aliases, or None."""
    while isinstance(graph.value(expr), relax.Var) and not graph.value(expr).same_as(expr):  # an alias binding
        expr = graph.value(expr)
    call = kernel_of(mod, graph.value(expr))
    if call is None or call.op != "binary_conv2d" or call.params.get("prepared"):
        return None
    return expr, call


def _plan_for(layout: str):
    return lambda mod, graph: _plan(mod, graph, layout)


def _plan(mod, graph, layout: str):
    recipes = {}
    for _, value in graph.order:
        if not is_op(value, "add"):
            continue
        found = [_conv_behind(mod, graph, arg) for arg in value.args]
        if any(f is None for f in found):
            continue
        (va, a), (vb, b) = found
        if not (graph.single_use(va) and graph.single_use(vb)) or va.same_as(vb) or a.params != b.params:
            continue
        if not a.args[0].same_as(b.args[0]):
            continue
        w1, s1, b1, w2, s2, b2 = (graph.constant(arg) for arg in a.args[1:4] + b.args[1:4])
        x_shape = static_shape(a.args[0])
        if any(c is None for c in (w1, s1, b1, w2, s2, b2)) or x_shape is None or w1.shape != w2.shape or \
                not np.array_equal(s1, s2):
            continue
        geo = Conv2dGeometry.from_params(a.params)
        filters = ternary_conv2d.from_plane_pair(w1, w2, geo.in_channels)
        corr = ternary_conv2d.correction_table(filters, geo, x_shape[1:3])
        scale = (s1.astype(np.float64) * 2).astype(np.float32)
        bias = (b1.astype(np.float64) + b2.astype(np.float64)).astype(np.float32)

        consts = (ternary_conv2d.to_layout(filters, layout), scale, bias, corr)

        def recipe(bb, new, xp=a.args[0], consts=consts, params=dict(a.params, layout=layout)):
            args = [new(xp)] + [relax.const(c) for c in consts]
            return call_kernel(bb, "ternary_conv2d", args, **params)

        recipes[value] = recipe
    return recipes


def FuseTernaryPairs(layout: str = "OHWI"):  # noqa: N802 - TVM pass naming
    """The pass, emitting filters in ``layout`` (ops/ternary_conv2d.LAYOUTS): "OHWI" for the C kernels, "HWIO" for
    x86's kernel vectorised over output channels."""
    return rewrite_pass("tvm_bnn.FuseTernaryPairs", _plan_for(layout))
