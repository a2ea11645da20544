"""BinarizeLayers: conv2d / matmul on a binarized activation and binary weights -> bit-packed kernels.

Matches ``conv2d(A, W)`` (NCHW / OIHW, groups 1) and ``matmul(A, W)`` (A of rank 2, W a constant [K, N]) where

* ``A`` is a binarized tensor (see binarizers.binary_source: sign, where(x >= 0, 1, -1), through Hardtanh and layout
  ops such as the flatten before a classifier), and
* ``W`` is a constant whose values in each output channel are +-alpha_o with alpha_o > 0 (sign(W), sign(W) * alpha,
  XNOR-Net's sign(W) * mean|W| after constant folding, or any such tensor).

Emits ``bitpack(x)`` then ``binary_conv2d`` / ``binary_dense`` with output ``dot * alpha_o + 0`` (float32), exact
under zero padding. Every conv2d/matmul gets a LayerRecord; one that stays float says why.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..ops.binary_conv2d import pack_weights as pack_conv_weights
from ..ops.bitpack import pack_bits_last_axis
from ..report import LayerRecord
from .binarizers import binary_source
from .graph import Graph, is_op, static_shape
from .kernels import call_kernel
from .rewrite import apply_recipes, relax_functions


def binary_weight_scale(w: np.ndarray, out_axis: int) -> np.ndarray | str:
    """alpha per output channel if every value of channel o is +-alpha_o, else the reason.

    alpha_o = 0 is allowed for a channel that is entirely zero (its output is the bias whatever the input: what an
    exporter makes of a conv followed by a BatchNorm with gamma = 0); a zero among nonzero weights is refused."""
    if not np.all(np.isfinite(w)):
        return "weights contain NaN or Inf"
    mags = np.abs(np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1))
    alpha = mags[:, 0]
    bad = np.nonzero(np.any(mags != alpha[:, None], axis=1))[0]
    if bad.size:
        o = int(bad[0])
        if np.any(mags[o] == 0):
            return f"weights of output channel {o} contain zeros (sign(0) = 0 is not +-1)"
        return (f"weights are not binary: output channel {o} has {np.unique(mags[o]).size} distinct magnitudes "
                f"(expected +-alpha per channel)")
    return alpha.astype(np.float32)


class BinarizeLayers:
    """A module pass; after it runs, ``records`` holds one LayerRecord per conv2d/matmul, in program order."""

    def __init__(self, layer_names=None):
        self.layer_names = list(layer_names or [])
        self.records: list[LayerRecord] = []

    def __call__(self, mod: tvm.IRModule) -> tvm.IRModule:
        self.records = []
        for gvar, func in relax_functions(mod):
            graph = Graph(func)
            recipes = {}
            for var, value in graph.order:
                if is_op(value, "nn.conv2d"):
                    kind = "conv2d"
                elif is_op(value, "matmul"):
                    kind = "dense"
                else:
                    continue
                name = self._name(len(self.records), var)
                plan = (self._plan_conv if kind == "conv2d" else self._plan_dense)(graph, var, value)
                record, recipe = plan
                record.name = name
                self.records.append(record)
                if recipe is not None:
                    recipes[value] = recipe
            mod = apply_recipes(mod, gvar, recipes)
        return mod

    def _name(self, index, var):
        if len(self.layer_names) > index:
            return self.layer_names[index]
        return var.name

    @staticmethod
    def _float_record(kind, value, w_shape, reason):
        x_shape, out_shape = static_shape(value.args[0]), static_shape(value)
        nbytes = int(np.prod(w_shape)) * 4 if w_shape else 0
        return LayerRecord("", kind, x_shape or (), tuple(w_shape or ()), out_shape or (), False, reason, nbytes,
                           nbytes)

    def _plan_conv(self, graph: Graph, var, value):
        data, weight = value.args
        attrs = value.attrs
        w = graph.constant(weight)
        w_shape = static_shape(weight)

        def refuse(reason):
            return self._float_record("conv2d", value, w_shape, reason), None

        if static_shape(data) is None or w_shape is None:
            return refuse("dynamic shape: binarization needs static shapes")
        if w is None:
            return refuse("weights are not a constant")
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
            return refuse(f"layout {attrs.data_layout}/{attrs.kernel_layout} (only NCHW/OIHW is binarized)")
        if int(attrs.groups) != 1:
            return refuse(f"grouped conv (groups={int(attrs.groups)}) stays float")
        if str(data.ty.dtype) != "float32":
            return refuse(f"activation dtype {data.ty.dtype} (only float32 is binarized)")
        alpha, source = binary_weight_scale(w, 0), binary_source(graph, data)
        if isinstance(alpha, str) or isinstance(source, str):
            return refuse("; ".join(r for r in (source, alpha) if isinstance(r, str)))
        o, i, kh, kw = w.shape
        packed = pack_conv_weights(w)
        geometry = dict(in_channels=int(i), kernel=[int(kh), int(kw)], strides=[int(s) for s in attrs.strides],
                        padding=[int(p) for p in attrs.padding], dilation=[int(d) for d in attrs.dilation])
        record = LayerRecord("", "conv2d", static_shape(data), tuple(w.shape), static_shape(value), True, "",
                             w.size * 4, packed.nbytes + alpha.nbytes)

        def recipe(bb, new, source=source, packed=packed, alpha=alpha, geometry=geometry):
            xp = bb.emit(call_kernel(bb, "bitpack_nchw", [source.emit(bb, new)]))
            args = [xp, relax.const(packed), relax.const(alpha), relax.const(np.zeros_like(alpha))]
            return call_kernel(bb, "binary_conv2d", args, **geometry)

        return record, recipe

    def _plan_dense(self, graph: Graph, var, value):
        data, weight = value.args
        w = graph.constant(weight)
        w_shape = static_shape(weight)

        def refuse(reason):  # report dense weights as (out, in) like conv2d's (O, I, KH, KW)
            return self._float_record("dense", value, w_shape[::-1] if w_shape else None, reason), None

        x_shape = static_shape(data)
        if x_shape is None or w_shape is None:
            return refuse("dynamic shape: binarization needs static shapes")
        if w is None:
            if graph.constant(data) is not None:
                return refuse("constant left operand (weights @ activation) is not binarized")
            return refuse("weights are not a constant")
        if len(x_shape) != 2 or w.ndim != 2:
            return refuse(f"matmul of rank {len(x_shape)} x {w.ndim} (only [M, K] x [K, N] is binarized)")
        if str(data.ty.dtype) != "float32":
            return refuse(f"activation dtype {data.ty.dtype} (only float32 is binarized)")
        alpha, source = binary_weight_scale(w, 1), binary_source(graph, data)
        if isinstance(alpha, str) or isinstance(source, str):
            return refuse("; ".join(r for r in (source, alpha) if isinstance(r, str)))
        k = int(w.shape[0])
        packed = pack_bits_last_axis(w.T >= 0)
        record = LayerRecord("", "dense", x_shape, tuple(w.T.shape), static_shape(value), True, "", w.size * 4,
                             packed.nbytes + alpha.nbytes)

        def recipe(bb, new, source=source, packed=packed, alpha=alpha, k=k):
            xp = bb.emit(call_kernel(bb, "bitpack_rows", [source.emit(bb, new)]))
            args = [xp, relax.const(packed), relax.const(alpha), relax.const(np.zeros_like(alpha))]
            return call_kernel(bb, "binary_dense", args, k=k)

        return record, recipe

