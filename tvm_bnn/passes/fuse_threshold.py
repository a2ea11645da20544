"""FuseThreshold: a binary layer whose result is only binarized again -> one integer threshold per channel.

Matches ``bitpack(z)`` where ``z`` is computed from a float-output binary kernel (``dot * s[o] + b[o]``) by a chain of
single-use per-channel elementwise ops (affine, clip/Hardtanh, ReLU, PReLU, LeakyReLU, max/min with a constant,
tanh, ...). The whole epilogue is a function f_o of the integer dot, so the packed bit is ``f_o(dot) >= 0``. We
evaluate f_o on every dot the layer can produce (|dot| <= fan-in) and, when the bit is a step function of dot in
every channel, emit the kernel's bit output ``dot * direction[o] >= threshold[o]``:

* increasing: direction 1, threshold = first dot with bit 1;
* decreasing (gamma < 0): direction -1, threshold = -(last dot with bit 1);
* constant (gamma == 0, or a ReLU that hides the sign): direction 0, threshold 0 (always 1) or 1 (always 0).

A channel whose bit is not a step function (a non-monotone epilogue) leaves the layer unfused, and still exact.
Consecutive binary layers then exchange packed bits and never materialise float tensors.
"""
import numpy as np
from tvm import relax

from .channel_ops import channel_function
from .fuse_output import FLOAT_KERNELS
from .graph import Graph
from .kernels import call_kernel, kernel_of
from .rewrite import rewrite_pass

_PACK_FOR = {"binary_conv2d": "bitpack_nchw", "binary_dense": "bitpack_rows"}


def fan_in(kernel) -> int:
    p = kernel.params
    if kernel.op == "binary_conv2d":
        return p["in_channels"] * p["kernel"][0] * p["kernel"][1]
    return p["k"]


def step_thresholds(bits: np.ndarray, dots: np.ndarray):
    """bits[o, i] = bit of channel o at dot = dots[i] -> (direction, threshold) int32 arrays, or None."""
    channels = bits.shape[0]
    direction = np.zeros(channels, np.int64)
    threshold = np.zeros(channels, np.int64)
    for o in range(channels):
        row = bits[o]
        if row.all() or not row.any():
            threshold[o] = 0 if row.all() else 1
            continue
        changes = np.flatnonzero(row[1:] != row[:-1])
        if changes.size != 1:
            return None
        if row[-1]:  # 0..0 1..1
            direction[o], threshold[o] = 1, dots[changes[0] + 1]
        else:  # 1..1 0..0
            direction[o], threshold[o] = -1, -dots[changes[0]]
    return direction.astype(np.int32), threshold.astype(np.int32)


def packing_test(graph: Graph, pack, values: np.ndarray) -> np.ndarray:
    """The bits ``bitpack`` makes of ``values`` [channels, n] (``x >= 0``, or its per-channel threshold test)."""
    if len(pack.args) == 1:
        return values >= 0
    s, t = (graph.constant(a).astype(np.float32)[:, None] for a in pack.args[1:3])
    with np.errstate(invalid="ignore"):
        return (values.astype(np.float32) * s).astype(np.float32) >= t


def _chain_back(graph: Graph, mod, z):
    """Walk from z back to a float binary kernel through single-use per-channel ops: (kernel, var, [fns])."""
    fns = []
    current = z
    while True:
        value = graph.value(current)
        kernel = kernel_of(mod, value)
        if not graph.single_use(current):
            return None  # another reader needs the float value: keep it
        if kernel is not None:
            return (kernel, fns) if kernel.op in FLOAT_KERNELS else None
        if not isinstance(value, relax.Call) or not value.args:
            return None
        prev = value.args[0] if isinstance(value.args[0], relax.Var) else None
        if prev is None and len(value.args) > 1:
            prev = value.args[1] if isinstance(value.args[1], relax.Var) else None
        if prev is None:
            return None
        fns.insert(0, (value, prev))
        current = prev


def _plan(mod, graph: Graph) -> dict:
    recipes = {}
    for _, value in graph.order:
        pack = kernel_of(mod, value)
        if pack is None or pack.op not in ("bitpack_nchw", "bitpack_rows"):
            continue
        found = _chain_back(graph, mod, pack.args[0])
        if found is None:
            continue
        kernel, chain = found
        if _PACK_FOR[kernel.op] != pack.op:
            continue
        scale = graph.constant(kernel.args[2]).astype(np.float64)
        bias = graph.constant(kernel.args[3]).astype(np.float64)
        dots = np.arange(-fan_in(kernel), fan_in(kernel) + 1, dtype=np.float64)
        if chain:  # float64 evaluation of a per-channel chain (the pre-analysis form, e.g. tanh after the kernel)
            t = dots[None, :] * scale[:, None] + bias[:, None]
        else:  # exactly the float32 values the kernel would output, tested as the packing kernel tests them
            t = (dots.astype(np.float32)[None, :] * scale.astype(np.float32)[:, None]
                 + bias.astype(np.float32)[:, None]).astype(np.float32)
        for call, var_in in chain:
            fn = channel_function(graph, call, var_in, scale.size)
            if fn is None:
                break
            t = fn(t)
        else:
            steps = step_thresholds(packing_test(graph, pack, t), dots.astype(np.int64))
            if steps is None:
                continue

            def recipe(bb, new, k=kernel, steps=steps):
                args = [new(k.args[0]), new(k.args[1]), relax.const(steps[0]), relax.const(steps[1])]
                return call_kernel(bb, k.op + "_bits", args, **k.params)

            recipes[value] = recipe
    return recipes


FuseThreshold = rewrite_pass("tvm_bnn.FuseThreshold", _plan)
