"""LayOutConvWeights: the binary conv's weight stages done once at compile time, in the layout each target reads.

A binary conv kernel lays out its packed filters for its inner loop (x86's generic kernel: output channels
innermost, ops/binary_conv2d.compute_dot; the byte-lane kernels of AVX2 and NEON: blocks of output channels, as
nibble planes on x86, schedules/simd_bytes.conv_dot) and, under zero padding, tabulates the border correction from
each tap's popcount: work that depends on the weights only, and was redone on every call (23% of a 7x7x512 conv's
time on AVX-512, 14% on AVX2). This pass matches every ``binary_conv2d`` / ``binary_conv2d_bits`` call_tir whose
filters are a constant, computes both tables with numpy (``binary_conv2d.prepared_weights``,
``simd_bytes.conv_weight_tables``) and re-emits the kernel reading them as constants (``tvm_bnn.params``:
``prepared``, ``out_channels`` and, for a byte-lane kernel, ``flavour``). Cortex-M and portable C kernels read the
packed filters as they are. A ternary conv of a byte-lane target (its sign and mask planes, from
schedules/ternary_pairs.py) gets its filters in that target's blocks too (``simd_bytes.ternary_weight_tables``).
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..ops import binary_conv2d
from ..passes.graph import static_shape
from ..passes.kernels import call_kernel, kernel_of
from ..passes.rewrite import rewrite_pass

CONV_OPS = ("binary_conv2d", "binary_conv2d_bits")


def layout_for(target):
    """How ``target``'s binary convs read their weights: "generic" (x86 with a 64-bit vector or scalar popcount:
    ops/binary_conv2d's channel-vectorised kernel), the byte-lane flavour (schedules/simd_bytes.py: x86 AVX2,
    aarch64, armv7 NEON), or None (Cortex-M and portable C lay out their own; other targets keep the packed
    filters)."""
    from .x86 import is_arm, simd_flavour

    if target is None or target.kind.name != "llvm":
        return None
    flavour = simd_flavour(target)
    if flavour is not None:
        return flavour
    triple = str(target.attrs.get("mtriple", ""))
    x86 = not triple or triple.startswith(("x86_64", "i386", "i686"))
    return "generic" if x86 and not is_arm(target) else None


def _plan_for(layout):
    from . import simd_bytes

    def plan(mod, graph):
        recipes = {}
        for _, value in graph.order:
            call = kernel_of(mod, value)
            if call is not None and call.op == simd_bytes.TERNARY_OP and layout != "generic":
                recipe = _ternary_recipe(graph, call, layout)
                if recipe is not None:
                    recipes[value] = recipe
                continue
            if call is None or call.op not in CONV_OPS or call.params.get("prepared"):
                continue
            x_shape = static_shape(call.args[0])
            packed = graph.constant(call.args[1])
            if packed is None or x_shape is None:
                continue
            geo = binary_conv2d.Conv2dGeometry.from_params(call.params)
            extent = binary_conv2d.bits_extent(packed.shape[0]) if call.op.endswith("bits") else None
            params = dict(call.params, out_channels=int(packed.shape[0]))
            if layout == "generic":
                table, adjust = binary_conv2d.prepared_weights(packed, geo, x_shape[1:3], extent)
            else:
                table, adjust = simd_bytes.conv_weight_tables(packed, geo, x_shape[1:3], layout, extent)
                params["flavour"] = layout.name
            params["prepared"] = "weights_t" if adjust is None else "weights_t+pad_adjust"
            tables = [relax.const(table)] + ([] if adjust is None else [relax.const(adjust)])

            te_func = None if layout == "generic" else (
                lambda *a, op=call.op, params=params: simd_bytes.kernel_compute(op, params, a, layout))

            def recipe(bb, new, call=call, tables=tables, params=params, te_func=te_func):
                args = [new(call.args[0]), *tables, *(new(a) for a in call.args[2:])]
                return call_kernel(bb, call.op, args, te_func=te_func, **params)

            recipes[value] = recipe
        return recipes

    return plan


def _ternary_recipe(graph, call, fl):
    """A ternary conv of one input (filters OHWI, ``ternary_pairs``) in the byte-lane form of flavour ``fl``: its
    sign and mask planes in blocks of output channels (``simd_bytes.ternary_weight_tables``)."""
    from . import simd_bytes

    filters = graph.constant(call.args[1])
    if filters is None or call.params.get("flavour") or call.params.get("shifts") or \
            call.params.get("layout", "OHWI") != "OHWI":
        return None
    params = dict(call.params, flavour=fl.name, out_channels=int(filters.shape[1]))
    table = relax.const(simd_bytes.ternary_weight_tables(filters, fl))

    def recipe(bb, new):
        args = [new(call.args[0]), table, *(new(a) for a in call.args[2:])]
        return call_kernel(bb, call.op, args, te_func=lambda *a: simd_bytes.kernel_compute(call.op, params, a, fl),
                           **params)

    return recipe


def LayOutConvWeights(target) -> tvm.transform.Pass:  # noqa: N802 - TVM pass naming
    """The pass for ``target``; the identity where its kernels lay out their own weights (``layout_for``)."""
    layout = layout_for(target)
    if layout is None:
        return tvm.transform.Sequential([], name="tvm_bnn.LayOutConvWeights")
    return rewrite_pass("tvm_bnn.LayOutConvWeights", _plan_for(layout))
