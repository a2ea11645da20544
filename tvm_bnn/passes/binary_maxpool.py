"""PackBeforeMaxPool: bitpack(max_pool2d(z)) -> binary_maxpool(bitpack(z)).

An increasing binarization (``z >= t``, the packing test with scale >= 0) commutes with max-pooling; max-pooling
two-valued activations is a bitwise OR of their bits, 64 channels per instruction. Moving the pack before the pool
also lets FuseThreshold reach the layer producing z. Matches NCHW max_pool2d only, and a packing test that is
increasing (or constant) in every channel.
"""
import numpy as np

from .graph import Graph, is_op
from .kernels import call_kernel, kernel_of
from .rewrite import rewrite_pass


def _plan(mod, graph: Graph) -> dict:
    recipes = {}
    for _, value in graph.order:
        kernel = kernel_of(mod, value)
        if kernel is None or kernel.op != "bitpack_nchw":
            continue
        pool = graph.value(kernel.args[0])
        if not is_op(pool, "nn.max_pool2d") or pool.attrs.layout != "NCHW":
            continue
        if len(kernel.args) > 1 and np.any(graph.constant(kernel.args[1]) < 0):
            continue  # a decreasing test turns max into min
        a = pool.attrs
        params = dict(pool=[int(v) for v in a.pool_size], strides=[int(v) for v in a.strides],
                      padding=[int(v) for v in a.padding], dilation=[int(v) for v in a.dilation],
                      ceil_mode=bool(a.ceil_mode))

        def recipe(bb, new, z=pool.args[0], params=params, test=kernel.args[1:]):
            packed = bb.emit(call_kernel(bb, "bitpack_nchw", [new(z)] + [new(a) for a in test]))
            return call_kernel(bb, "binary_maxpool", [packed], **params)

        recipes[value] = recipe
    return recipes


PackBeforeMaxPool = rewrite_pass("tvm_bnn.PackBeforeMaxPool", _plan)
