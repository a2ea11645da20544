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

Then, on x86 and (for layers of few words per output) in the C bundle without Helium, the activation planes
(``_plan_planes``): the ternary kernels of a few-level activation's planes (same
filters, scales in ratios 2^k, as its thermometer or binary-code planes have) summed, each maybe plus its constant
zero-padding offset, become one kernel over the planes stacked (``shifts``: ops/ternary_conv2d.py), repeated until
every plane of the layer is in it: one pass over the words, each filter word loaded once for all planes, one
epilogue and no float sum of the planes' outputs.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..ops import ternary_conv2d
from ..ops.binary_conv2d import Conv2dGeometry
from ..passes.graph import is_op, static_shape
from ..passes.kernels import call_kernel, kernel_of
from ..passes.rewrite import rewrite_pass


def _bound(mod, graph, expr, op: str):
    """(var, KernelCall) of our kernel ``op`` that ``expr`` is bound to through aliases, or None."""
    while isinstance(graph.value(expr), relax.Var) and not graph.value(expr).same_as(expr):  # an alias binding
        expr = graph.value(expr)
    call = kernel_of(mod, graph.value(expr))
    if call is None or call.op != op or call.params.get("prepared"):
        return None
    return expr, call


def _sums_of(mod, graph, op: str):
    """(binding value, (var a, call a), (var b, call b)) per ``add(a, b)`` of two distinct single-use calls of our
    kernel ``op``."""
    for _, value in graph.order:
        if not is_op(value, "add"):
            continue
        found = [_bound(mod, graph, arg, op) for arg in value.args]
        if any(f is None for f in found):
            continue
        (va, _), (vb, _) = found
        if not va.same_as(vb) and graph.single_use(va) and graph.single_use(vb):
            yield value, found[0], found[1]


def _plan_pairs(mod, graph, layout: str):
    recipes = {}
    for value, (_, a), (_, b) in _sums_of(mod, graph, "binary_conv2d"):
        if a.params != b.params or not a.args[0].same_as(b.args[0]):
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


def _plane_term(mod, graph, expr):
    """A summand of a layer's planes: (ternary var, its KernelCall, constant offset or None), through aliases and
    one ``add`` of a constant; or None."""
    found = _bound(mod, graph, expr, "ternary_conv2d")
    if found is not None:
        return found + (None,)
    while isinstance(graph.value(expr), relax.Var) and not graph.value(expr).same_as(expr):
        expr = graph.value(expr)
    value = graph.value(expr)
    if not is_op(value, "add") or not graph.single_use(expr):
        return None
    for x, c in (value.args, value.args[::-1]):
        offset = graph.constant(c)
        inner = _bound(mod, graph, x, "ternary_conv2d")
        if offset is not None and inner is not None:
            return inner + (offset,)
    return None


def _planes_of(graph, call):
    """[(packed plane var, shift, pad bit)] of a ternary kernel (its stacked planes, or its one input)."""
    if "shifts" not in call.params:
        return [(call.args[0], 0, int(call.params.get("pad_value", 0)))]
    stacked = graph.value(call.args[0])
    if not is_op(stacked, "stack"):
        return None
    return list(zip(stacked.args[0].fields, call.params["shifts"], call.params["pad_bits"]))


def _power_of_two_ratio(a: np.ndarray, b: np.ndarray):
    """k with b == a * 2^k exactly (float32, per channel; zeros in the same channels), or None."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0) or not np.any(a != 0):
        return None
    ratio = b[a != 0].astype(np.float64) / a[a != 0].astype(np.float64)
    k = np.log2(ratio[0]) if ratio[0] > 0 else np.nan
    if not np.isfinite(k) or k != np.round(k) or abs(k) > 3:
        return None
    k = int(k)
    return k if np.array_equal((a.astype(np.float64) * 2.0 ** k).astype(np.float32), b) else None


def few_words_per_output(params: dict, limit: int = 9) -> bool:
    """Whether a ternary conv of ``params`` counts at most ``limit`` words per output (KH x KW x ceil(C/64)): where
    the C bundle stacks a layer's planes. Stacking saves one epilogue per output and costs reuse per word (the
    M-profile block holds channels x planes accumulators, so half the channels: each input word serves fewer).
    Measured on the M4 (bench/cmsis_nn.py --part 1 --low-bit, W2A2 3x3 convs): 9 words -4 % instructions, 18 words
    +7 %, 36 words +4 %."""
    c = int(params["in_channels"])
    return int(np.prod(params["kernel"])) * ((c + 63) // 64) <= limit


def _plan_planes(mod, graph, stack_if=None):
    recipes = {}
    for _, value in graph.order:
        if not is_op(value, "add"):
            continue
        terms = [_plane_term(mod, graph, arg) for arg in value.args]
        if any(t is None for t in terms):
            continue
        (va, a, off_a), (vb, b, off_b) = terms
        if va.same_as(vb) or not (graph.single_use(va) and graph.single_use(vb)):
            continue
        same = ("in_channels", "kernel", "strides", "padding", "dilation", "layout")
        if any(a.params.get(key) != b.params.get(key) for key in same) or (stack_if and not stack_if(a.params)):
            continue
        planes_a, planes_b = _planes_of(graph, a), _planes_of(graph, b)
        fa, sa, ba, fb, sb, bb_ = (graph.constant(arg) for arg in a.args[1:4] + b.args[1:4])
        if planes_a is None or planes_b is None or any(c is None for c in (fa, sa, ba, fb, sb, bb_)) or \
                fa.shape != fb.shape or not np.array_equal(fa, fb):
            continue
        shapes = {static_shape(v) for v, _, _ in planes_a + planes_b}
        k = _power_of_two_ratio(sa, sb)
        if len(shapes) != 1 or None in shapes or k is None:
            continue
        if k < 0:  # the smaller scale is the unit: the other's planes count 2^|k| times
            (planes_a, sa), (planes_b, k) = (planes_b, sb), (planes_a, -k)
        planes = planes_a + [(v, shift + k, bit) for v, shift, bit in planes_b]
        layout = a.params.get("layout", "OHWI")
        ohwi = fa if layout == "OHWI" else np.ascontiguousarray(np.transpose(fa, (0, 4, 1, 2, 3)))
        geo = Conv2dGeometry.from_params(a.params)
        shifts, bits = [s for _, s, _ in planes], [b_ for _, _, b_ in planes]
        corr = ternary_conv2d.planes_correction(ohwi, geo, shapes.pop()[1:3], shifts, bits)
        bias = (ba.astype(np.float64) + bb_.astype(np.float64)).astype(np.float32)
        offsets = [o.astype(np.float64) for o in (off_a, off_b) if o is not None]
        offset = np.sum(np.broadcast_arrays(*offsets), axis=0).astype(np.float32) if offsets else None
        params = dict(a.params, pad_value=0, shifts=shifts, pad_bits=bits)

        def recipe(bb, new, vars_=[v for v, _, _ in planes], consts=(fa, sa, bias, corr), params=params,
                   offset=offset):
            stacked = bb.emit(relax.op.stack([new(v) for v in vars_], axis=0))
            call = call_kernel(bb, "ternary_conv2d", [stacked] + [relax.const(c) for c in consts], **params)
            return call if offset is None else relax.op.add(bb.emit(call), relax.const(offset))

        recipes[value] = recipe
    return recipes


def FuseTernaryPairs(layout: str = "OHWI", stack_planes=False):  # noqa: N802 - TVM pass naming
    """The pass, emitting filters in ``layout`` (ops/ternary_conv2d.LAYOUTS): "OHWI" for the C kernels, "HWIO" for
    x86's kernel vectorised over output channels. ``stack_planes`` (True, or a predicate of a ternary kernel's params
    saying for which layers): the planes of each layer then stacked into one kernel (x86: a 2-plane W2A2 conv at
    28x28x256 in 0.22 ms against 2 x 0.125; the C bundle: :func:`few_words_per_output`); a layer left with one
    kernel per plane adds the previous plane's output in its epilogue (passes/fuse_residual.py, which the fused
    pipeline runs next)."""
    pairs = rewrite_pass("tvm_bnn.FuseTernaryPairs", lambda mod, graph: _plan_pairs(mod, graph, layout))
    stack_if = stack_planes if callable(stack_planes) else None
    planes = rewrite_pass("tvm_bnn.FuseTernaryPlanes", lambda mod, graph: _plan_planes(mod, graph, stack_if))

    @tvm.transform.module_pass(opt_level=0, name="tvm_bnn.FuseTernaryPairs")
    def _pass(mod, _ctx):
        mod = pairs(mod)
        if stack_planes:
            for _ in range(3):  # one more plane per round (at most 3 planes: 8 levels)
                before = mod
                mod = planes(mod)
                if mod.same_as(before):
                    break
        return mod

    return _pass
