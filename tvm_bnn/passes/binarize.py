"""BinarizeLayers: conv2d / matmul on a binarized activation and binary weights -> bit-packed kernels.

Matches ``conv2d(A, W)`` (NCHW / OIHW, any groups) and ``matmul(A, W)`` (A of rank 2, W a constant [K, N]) where

* ``A`` is a two-valued tensor ``mid ± half`` set by a threshold test on a float tensor (binarizers.binary_source,
  the analysis of binary_values.py: whatever ops compute it), possibly padded with a constant, and
* ``W`` is a constant whose values in each output channel are +-alpha_o (sign(W), sign(W) * alpha, XNOR-Net's
  sign(W) * mean|W| after constant folding, Brevitas' quantized weights, or any such tensor), or at most four
  levels (ternary {-a, 0, a}, 2-bit): a sum of +-1 weight planes (weights.weight_planes).

Emits the packing of A's source tensor (of each of its bit planes, for a 3-4 level activation), then one
``binary_conv2d`` / ``binary_dense`` per (activation plane, weight plane, group) with output
``dot * half * scale_o + mid * sum(W_o)`` (float32), and their sum. Each kernel is exact: ``dot`` counts zero padding
as zero (or padding with one of A's values as that value's bit); the sum of the planes' outputs is rounded in float32.
Every conv2d/matmul gets a LayerRecord; one that stays float says why.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..ops.binary_conv2d import Conv2dGeometry
from ..ops.binary_conv2d import pack_weights as pack_conv_weights
from ..ops.bitpack import pack_bits_last_axis
from ..report import LayerRecord
from .binarizers import Slice, binary_source, emit_packed, padded_root_source
from .binary_values import LevelTensor, Refused
from .graph import Graph, is_op, static_shape
from .kernels import call_kernel
from .rewrite import apply_recipes, relax_functions
from .weights import binary_weight_scale, weight_planes


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
    def _float_record(kind, value, w_shape, reason, binary_weights=False):
        x_shape, out_shape = static_shape(value.args[0]), static_shape(value)
        nbytes = int(np.prod(w_shape)) * 4 if w_shape else 0
        return LayerRecord("", kind, x_shape or (), tuple(w_shape or ()), out_shape or (), False, reason, nbytes,
                           nbytes, binary_weights)

    def _plan_conv(self, graph: Graph, var, value):
        data, weight = value.args
        attrs = value.attrs
        w = graph.constant(weight)
        w_shape = static_shape(weight)

        alpha = None

        def refuse(reason):
            return self._float_record("conv2d", value, w_shape, reason, isinstance(alpha, np.ndarray)), None

        if static_shape(data) is None or w_shape is None:
            return refuse("dynamic shape: binarization needs static shapes")
        if w is None:
            return refuse("weights are not a constant")
        alpha = binary_weight_scale(w, 0)
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
            return refuse(f"layout {attrs.data_layout}/{attrs.kernel_layout} (only NCHW/OIHW is binarized)")
        if str(data.ty.dtype) != "float32":
            return refuse(f"activation dtype {data.ty.dtype} (only float32 is binarized)")
        source = binary_source(graph, data)
        wplanes = weight_planes(w, 0)
        if isinstance(wplanes, str) or isinstance(source, str):
            return refuse("; ".join(r for r in (source, wplanes) if isinstance(r, str)))
        planes = _planes(source)
        if isinstance(planes, str):
            return refuse(planes)
        if source.pad is not None and any(isinstance(conv_padding(p, [int(v) for v in attrs.padding]), str)
                                          for p in planes):
            # the padding value it carries and the conv's cannot be one padding: pack the padded float tensor
            alternative = padded_root_source(graph, data)
            if alternative is not None and not isinstance(_planes(alternative), str):
                source, planes = alternative, _planes(alternative)
        groups = int(attrs.groups)
        o, cg, kh, kw = w.shape
        og = o // groups
        plans = []  # per (activation plane, weight plane): which weights, geometry, output transform, offset
        terms = wplanes.terms(0)
        for plane in planes:
            padding = conv_padding(plane, [int(p) for p in attrs.padding])
            if isinstance(padding, str):
                return refuse(padding)
            padding, pad_value = padding
            geometry = Conv2dGeometry(int(cg), (int(kh), int(kw)), tuple(int(v) for v in attrs.strides),
                                      tuple(padding), tuple(int(d) for d in attrs.dilation), pad_value)
            for j, (wj, scale_j) in enumerate(terms):
                scale, bias = output_transform(plane, scale_j, wj, (1, 2, 3))
                offset = None
                if plane.mid != 0 and pad_value == 0 and any(padding):  # zero-padded taps lack the mid: per pixel
                    offset = self._padding_offset(plane, wj, geometry, static_shape(data))
                    bias = np.zeros_like(bias)
                plans.append((plane, j, geometry, scale, bias, offset))
        packed_planes = [[pack_conv_weights(signs[g * og:(g + 1) * og]) for g in range(groups)]
                         for signs in wplanes.signs]
        packed_bytes = sum(p.nbytes for groups_packed in packed_planes for p in groups_packed)
        record = LayerRecord("", "conv2d", static_shape(data), tuple(w.shape), static_shape(value), True, "",
                             w.size * 4, packed_bytes + 2 * o * 4 * len(plans), isinstance(alpha, np.ndarray),
                             wplanes.bits, source.bits)
        single = groups == 1 and len(plans) == 1

        def recipe(bb, new):
            # one copy of each weight plane, read by every activation plane's kernel
            weights = [[relax.const(p) for p in groups_packed] for groups_packed in packed_planes]
            total = None
            # summed per activation plane first: the kernels of one plane read one packed input, and a pair of
            # them with equal scales is one ternary kernel where a target has one (schedules/ternary_pairs.py)
            for plane in planes:
                part, offsets = None, []
                for _, j, geometry, scale, bias, offset in (p for p in plans if p[0] is plane):
                    outs = []
                    for g, packed in enumerate(weights[j]):
                        chans = [Slice(1, g * int(cg), (g + 1) * int(cg))] if groups > 1 else []
                        xp = emit_packed(bb, new, plane, rows=False, extra_post=chans)
                        cut = slice(g * og, (g + 1) * og)
                        args = [xp, packed, relax.const(scale[cut]), relax.const(bias[cut])]
                        call = call_kernel(bb, "binary_conv2d", args, **geometry.params())
                        outs.append(call if single and offset is None else bb.emit(call))
                    out = outs[0] if groups == 1 else bb.emit(relax.op.concat(outs, axis=1))
                    part = out if part is None else relax.op.add(bb.emit(part), bb.emit(out))
                    if offset is not None:
                        offsets.append(offset.astype(np.float64))
                if offsets:
                    part = relax.op.add(bb.emit(part), relax.const(np.sum(offsets, axis=0).astype(np.float32)))
                total = part if total is None else relax.op.add(bb.emit(total), bb.emit(part))
            return total

        return record, recipe

    @staticmethod
    def _padding_offset(source, w, geometry, x_shape):
        """mid * (the conv of a tensor of ones, zero-padded): what the mid-point of the two values contributes at
        each output pixel when the zero-padded taps are missing (a per-pixel [1, O, OH, OW] float32 constant)."""
        h, wd = x_shape[2:]
        oh, ow = geometry.output_hw(h, wd)
        (sh, sw), (dh, dw), (pt, pl) = geometry.strides, geometry.dilation, geometry.padding[:2]
        kh, kw = geometry.kernel
        rows = np.arange(oh)[None, :] * sh - pt + np.arange(kh)[:, None] * dh  # [KH, OH]
        cols = np.arange(ow)[None, :] * sw - pl + np.arange(kw)[:, None] * dw  # [KW, OW]
        inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < wd))[None, :, None, :]
        tap_sums = w.astype(np.float64).sum(axis=1)  # [O, KH, KW]: every input is 1
        pixel = np.einsum("oij,ijyx->oyx", tap_sums, inside.astype(np.float64))
        return (source.mid * pixel[None]).astype(np.float32)

    def _plan_dense(self, graph: Graph, var, value):
        data, weight = value.args
        w = graph.constant(weight)
        w_shape = static_shape(weight)

        alpha = None

        def refuse(reason):  # report dense weights as (out, in) like conv2d's (O, I, KH, KW)
            return self._float_record("dense", value, w_shape[::-1] if w_shape else None, reason,
                                      isinstance(alpha, np.ndarray)), None

        x_shape = static_shape(data)
        if x_shape is None or w_shape is None:
            return refuse("dynamic shape: binarization needs static shapes")
        if w is None:
            if graph.constant(data) is not None:
                return refuse("constant left operand (weights @ activation) is not binarized")
            return refuse("weights are not a constant")
        alpha = binary_weight_scale(w, 1) if w.ndim == 2 else None
        if len(x_shape) != 2 or w.ndim != 2:
            return refuse(f"matmul of rank {len(x_shape)} x {w.ndim} (only [M, K] x [K, N] is binarized)")
        if str(data.ty.dtype) != "float32":
            return refuse(f"activation dtype {data.ty.dtype} (only float32 is binarized)")
        source = binary_source(graph, data)
        wplanes = weight_planes(w, 1)
        if isinstance(wplanes, str) or isinstance(source, str):
            return refuse("; ".join(r for r in (source, wplanes) if isinstance(r, str)))
        if source.pad is not None:  # a padding value has no place in a dense layer: the padded float tensor, packed
            source = padded_root_source(graph, data) or source
        if source.pad is not None:
            return refuse("the activation of a dense layer is padded")
        k = int(w.shape[0])
        packed_planes = [pack_bits_last_axis(signs.T >= 0) for signs in wplanes.signs]
        planes = _planes(source)
        if isinstance(planes, str):
            return refuse(planes)
        plans = [(plane, j) + output_transform(plane, scale_j, wj.T, (1,))
                 for plane in planes for j, (wj, scale_j) in enumerate(wplanes.terms(1))]
        record = LayerRecord("", "dense", x_shape, tuple(w.T.shape), static_shape(value), True, "", w.size * 4,
                             sum(p.nbytes for p in packed_planes) + 2 * int(w.shape[1]) * 4 * len(plans),
                             isinstance(alpha, np.ndarray), wplanes.bits, source.bits)

        def recipe(bb, new):
            weights = [relax.const(p) for p in packed_planes]
            total = None
            for plane, j, scale, bias in plans:
                xp = emit_packed(bb, new, plane, rows=True)
                out = call_kernel(bb, "binary_dense", [xp, weights[j], relax.const(scale), relax.const(bias)], k=k)
                total = out if total is None else relax.op.add(bb.emit(total), bb.emit(out))
            return total

        return record, recipe


def _planes(source) -> list | str:
    """The two-valued tensors whose sum is the activation: itself, or a few-level one's bit planes (or the reason
    they cannot be: a padding value off its levels)."""
    if not isinstance(source, LevelTensor):
        return [source]
    try:
        return source.planes()
    except Refused as why:
        return f"activation input is not binarized: {why}"


def conv_padding(source, padding: list):
    """(padding, pad_value) of the binary conv on ``source``: its own zero padding and a pad before it, or the
    reason they cannot be one binary conv. A padding value that is one of the activation's two values is a constant
    bit (pad_value +1 / -1, no correction); 0 otherwise is zero padding, corrected exactly in the kernel."""

    def kind(v):
        return 1 if v == source.high else -1 if v == source.low else 0 if v == 0 else None

    own = kind(0.0) if any(padding) else None
    if source.pad is None:
        return padding, own or 0
    widths, value = source.pad
    if widths[0] != (0, 0) or widths[1] != (0, 0):
        return "the activation is padded along the batch or channel axis"
    extra = kind(value)
    if own is not None and own != extra:
        return (f"the activation is padded with {value:g} and then zero-padded by the conv: two padding values in "
                "one conv")
    (top, bottom), (left, right) = widths[2], widths[3]
    return [padding[0] + top, padding[1] + left, padding[2] + bottom, padding[3] + right], extra


def output_transform(source, alpha, w, reduce_axes):
    """The float epilogue ``dot * scale[o] + bias[o]`` of a binary layer whose input takes the values
    ``mid ± half``: ``w . x = half * alpha_o * dot + mid * sum(w_o)`` (folded in float64, rounded once)."""
    scale = (source.half * alpha.astype(np.float64)).astype(np.float32)
    bias = (source.mid * w.astype(np.float64).sum(axis=reduce_axes)).astype(np.float32)
    return scale, bias
