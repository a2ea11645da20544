"""FuseOutputTransform: per-channel scale / bias / BatchNorm after a binary layer -> the kernel's output transform.

Matches a float-output binary kernel (binary_conv2d, binary_dense) followed by a chain of single-use ops
``t (+-*/) c`` or ``c (+-*) t`` with ``c`` a per-output-channel constant (a bias, a scale, the arithmetic that
BatchNorm decomposes to) and emits one kernel computing ``dot * scale'[o] + bias'[o]``, with scale'/bias' folded
in float64 and rounded once to float32.
"""
import numpy as np
from tvm import relax

from .channel_ops import affine_step
from .graph import Graph
from .kernels import call_kernel, kernel_of
from .rewrite import rewrite_pass

FLOAT_KERNELS = ("binary_conv2d", "binary_dense")


def _plan(mod, graph: Graph) -> dict:
    recipes = {}
    for var, value in graph.order:
        kernel = kernel_of(mod, value)
        if kernel is None or kernel.op not in FLOAT_KERNELS:
            continue
        scale = graph.constant(kernel.args[2]).astype(np.float64)
        bias = graph.constant(kernel.args[3]).astype(np.float64)
        last, current = None, var
        while (user := graph.only_user(current)) is not None:
            step = affine_step(graph, user[1], current, scale.size)
            if step is None:
                break
            s, b = step
            scale, bias = scale * s, bias * s + b
            last, current = user[1], user[0]
        if last is None:
            continue

        def recipe(bb, new, k=kernel, s=scale.astype(np.float32), b=bias.astype(np.float32)):
            args = [new(k.args[0]), new(k.args[1]), relax.const(s), relax.const(b)]
            return call_kernel(bb, k.op, args, **k.params)

        recipes[last] = recipe
    return recipes


FuseOutputTransform = rewrite_pass("tvm_bnn.FuseOutputTransform", _plan)
