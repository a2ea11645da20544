"""LayOutConvWeights: the binary conv's weight stages done once at compile time, for the x86 kernels that read them.

The generic x86 binary conv (ops/binary_conv2d.compute_dot, vectorised over output channels) transposes its packed
filters to [KH, KW, CW, O] and, under zero padding, tabulates the border correction from each tap's popcount: work
that depends on the weights only, and was redone on every call (23% of a 7x7x512 conv's time on AVX-512). This
pass matches every ``binary_conv2d`` / ``binary_conv2d_bits`` call_tir whose filters are a constant, computes both
tables with numpy (``binary_conv2d.prepared_weights``) and re-emits the kernel reading them as constants
(``tvm_bnn.params["prepared"]``). It applies to the targets that build that kernel (x86 with a 64-bit vector or
scalar popcount); the byte-lane kernels (AVX2, NEON) and the Cortex-M ones lay out their own.
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


def applies_to(target) -> bool:
    """Targets whose binary convs are the generic channel-vectorised TE: x86 (LLVM) without the byte-lane form."""
    from .x86 import simd_flavour

    if target is None or target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", ""))
    return (not triple or triple.startswith(("x86_64", "i386", "i686"))) and simd_flavour(target) is None


def _plan(mod, graph):
    recipes = {}
    for _, value in graph.order:
        call = kernel_of(mod, value)
        if call is None or call.op not in CONV_OPS or call.params.get("prepared"):
            continue
        x_shape = static_shape(call.args[0])
        packed = graph.constant(call.args[1])
        if packed is None or x_shape is None:
            continue
        geo = binary_conv2d.Conv2dGeometry.from_params(call.params)
        extent = binary_conv2d.bits_extent(packed.shape[0]) if call.op.endswith("bits") else None
        wt, adjust = binary_conv2d.prepared_weights(packed, geo, x_shape[1:3], extent)
        params = dict(call.params, prepared="weights_t" if adjust is None else "weights_t+pad_adjust",
                      out_channels=int(packed.shape[0]))
        tables = [relax.const(wt)] + ([] if adjust is None else [relax.const(adjust)])

        def recipe(bb, new, call=call, tables=tables, params=params):
            args = [new(call.args[0]), *tables, *(new(a) for a in call.args[2:])]
            return call_kernel(bb, call.op, args, **params)

        recipes[value] = recipe
    return recipes


def LayOutConvWeights(target) -> tvm.transform.Pass:  # noqa: N802 - TVM pass naming
    """The pass for ``target``; the identity where it does not apply (``applies_to``)."""
    if not applies_to(target):
        return tvm.transform.Sequential([], name="tvm_bnn.LayOutConvWeights")
    return rewrite_pass("tvm_bnn.LayOutConvWeights", _plan)
