"""PackPlanesTogether: the packings of one float tensor by several tests -> one ``bitpack_planes`` pass, for the C
bundle's kernels (schedules/cortexm.py).

A few-level activation is packed once per bit plane (BinarizeLayers: one ``bitpack_nchw(x, scale, threshold)`` per
thermometer test, a binary-code plane the XOR of some of them), each a pass over the float tensor. On an M-profile
core the element's load, its address and the loop cost as much as its test, so the planes are packed in one pass
(``ops.bitpack.compute_planes``: every element loaded once, tested once per plane) and each plane taken out of it.

Matches: two or more ``bitpack_nchw`` calls on the same tensor with constant per-channel tests; emits one
``bitpack_planes`` (at the first of them) and a slice of its plane for each. The bits are the same. When every
scale is exactly 1 (the usual activation quantizer) the tests are ``x >= threshold`` (``unit_scale``): ``x * 1`` is
``x`` in floating point, and each test saves a load and a multiply.
"""
from __future__ import annotations

import numpy as np
from tvm import relax

from ..passes.graph import static_shape
from ..passes.kernels import call_kernel, kernel_of
from ..passes.rewrite import rewrite_pass


def _plan(mod, graph):
    groups = {}  # (block, the packed tensor) -> [(binding value, scale, threshold)] in program order
    for block_index, block in enumerate(graph.func.body.blocks):  # a block's vars are not seen by the next one's
        for binding in block.bindings:
            call = kernel_of(mod, binding.value)
            if call is None or call.op != "bitpack_nchw" or len(call.args) != 3:
                continue
            scale, threshold = graph.constant(call.args[1]), graph.constant(call.args[2])
            x = call.args[0]
            if scale is None or threshold is None or static_shape(x) is None:
                continue
            key = next((k for k in groups if k[0] == block_index and k[1].same_as(x)), (block_index, x))
            groups.setdefault(key, []).append((binding.value, scale, threshold))
    recipes = {}
    for (_, x), members in groups.items():
        if len(members) < 2:
            continue
        scales = np.stack([s.astype(np.float32) for _, s, _ in members])
        thresholds = np.stack([t.astype(np.float32) for _, _, t in members])
        emitted = {}

        def packed(bb, new, x=x, scales=scales, thresholds=thresholds, emitted=emitted):
            if "planes" not in emitted:  # at the first member: x is bound by then
                if np.all(scales == 1.0):  # the common case: no multiply, no scale to load
                    call = call_kernel(bb, "bitpack_planes", [new(x), relax.const(thresholds)], unit_scale=True)
                else:
                    call = call_kernel(bb, "bitpack_planes", [new(x), relax.const(scales), relax.const(thresholds)])
                emitted["planes"] = bb.emit(call)
            return emitted["planes"]

        shape = static_shape(x)
        words = [int(shape[0]), int(shape[2]), int(shape[3]), (int(shape[1]) + 63) // 64]
        for p, (value, _, _) in enumerate(members):  # plane p: a slice of the last axis, the axis dropped
            recipes[value] = lambda bb, new, p=p, packed=packed, words=words: relax.op.reshape(bb.emit(
                relax.op.strided_slice(packed(bb, new), axes=[4], begin=[p], end=[p + 1])), words)
    return recipes


PackPlanesTogether = rewrite_pass("tvm_bnn.PackPlanesTogether", _plan)
