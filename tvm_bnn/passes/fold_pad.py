"""FoldZeroPadIntoConv: conv2d(pad(x, zeros on H/W), W) -> conv2d(x, W, padding + pad).

``F.pad`` before a convolution (asymmetric "same" padding) exports as a separate zero pad. On a ±1 tensor those zeros
are exactly what the binary kernel's border handling computes, but only if the conv sees the binarized tensor
directly, so the pad is folded into the conv's own padding. Exact for float convolutions too. Matches a constant
pad with value 0, non-negative widths, and nothing padded on N or C.
"""
from tvm import relax

from .graph import Graph, is_op
from .rewrite import rewrite_pass


def _spatial_pad(pad_call):
    a = pad_call.attrs
    if str(a.pad_mode) != "constant" or float(a.pad_value) != 0.0:
        return None
    w = [int(v) for v in a.pad_width]
    if len(w) != 8 or any(v < 0 for v in w) or any(w[:4]):
        return None
    (top, bottom), (left, right) = (w[4], w[5]), (w[6], w[7])
    return top, left, bottom, right


def _plan(mod, graph: Graph) -> dict:
    recipes = {}
    for _, value in graph.order:
        if not is_op(value, "nn.conv2d") or value.attrs.data_layout != "NCHW":
            continue
        pad = graph.value(value.args[0])
        if not is_op(pad, "nn.pad"):
            continue
        extra = _spatial_pad(pad)
        if extra is None:
            continue
        a = value.attrs
        padding = [int(p) + e for p, e in zip(a.padding, extra)]

        def recipe(bb, new, x=pad.args[0], w=value.args[1], a=a, padding=padding):
            return relax.op.nn.conv2d(new(x), new(w), strides=a.strides, padding=padding, dilation=a.dilation,
                                      groups=a.groups, data_layout=a.data_layout, kernel_layout=a.kernel_layout,
                                      out_layout=a.out_layout, out_dtype=a.out_dtype)

        recipes[value] = recipe
    return recipes


FoldZeroPadIntoConv = rewrite_pass("tvm_bnn.FoldZeroPadIntoConv", _plan)
