"""Is a conv/dense input binarized, and how are its bits computed? (see binary_values.py for the analysis)

``binary_source(graph, expr)`` walks from the layer's input back through the ops that keep a two-valued tensor
two-valued (layout ops, split/slices, max-pool, a constant pad, and elementwise ops of a tensor already two-valued,
such as Brevitas' ``* scale``) to the elementwise chain that binarizes a float tensor, and returns a
:class:`~.binary_values.BinaryTensor`, or the reason in words for the report. ``emit_packed`` re-emits the bits: the
packing kernel reads the float tensor the chain starts from (``bitpack(sign(x))`` is ``bitpack(x)``), with the
chain's thresholds when they are not the plain ``x >= 0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from .atoms import AtomAnalysis
from .binary_values import (BinaryTensor, Chain, LevelTensor, ParityPlane, Refused, _Roots, analyse_chain, describe,
                            negate_test)
from .graph import Graph, op_name, static_shape
from .kernels import call_kernel
from .weights import binary_weight_scale

_LAYOUT_OPS = ("relax.reshape", "relax.permute_dims", "relax.flatten", "relax.squeeze", "relax.expand_dims",
               "relax.nn.max_pool2d", "relax.strided_slice", "relax.nn.batch_flatten")


@dataclass(frozen=True)
class Slice:
    """A slice [begin, end) along ``axis`` (a split's output, one group of a grouped conv)."""

    axis: int
    begin: int
    end: int


def binary_source(graph: Graph, expr) -> BinaryTensor | str:
    """The bits of ``expr``, or the reason (for the report) it is not a binarized tensor."""
    try:
        return _analysed(graph, expr)
    except Refused as why:
        return f"activation input is not binarized: {why}"


def padded_root_source(graph: Graph, expr):
    """The bits of ``expr`` as a threshold test of a float root that keeps any padding inside it (a binarizer of
    ``pad(y)``: the padded float tensor is packed, the padding's bits are the test's of the padding value), or None.
    The alternative when the padding, carried to the bits as a padding value, cannot be one conv's padding."""
    try:
        chain = analyse_chain(graph, expr, atoms_of(graph))
    except Refused:
        return None
    return chain if isinstance(chain, (BinaryTensor, LevelTensor)) and chain.pad is None else None


def _analysed(graph: Graph, expr) -> BinaryTensor:
    """_analyse, memoised per graph (a layer's analysis needs the previous layers': the exact values of a binary
    layer's output, atoms.py)."""
    memo = graph.__dict__.setdefault("_binary_sources", {})
    key = graph.value(expr)
    if key not in memo:
        try:
            memo[key] = _analyse(graph, expr)
        except Refused as why:
            memo[key] = why
    if isinstance(memo[key], Refused):
        raise memo[key]
    return memo[key]


def atoms_of(graph: Graph) -> AtomAnalysis:
    """The exact values of the graph's tensors (atoms.py), memoised with the graph."""
    analysis = graph.__dict__.get("_atoms")
    if analysis is None:
        def binary_of(expr):
            try:
                return _analysed(graph, expr)
            except Refused:
                return None

        analysis = graph.__dict__["_atoms"] = AtomAnalysis(graph, binary_of, binary_weight_scale)
    return analysis


def is_binarizer(graph: Graph, expr) -> bool:
    return isinstance(binary_source(graph, expr), BinaryTensor)


def is_quantizer(graph: Graph, expr, max_values: int = 16) -> bool:
    """Does ``expr`` take a few exact values (two: a binarizer; three: a sign with the model's zeros; 2^k levels)?"""
    try:
        _analysed(graph, expr)
        return True
    except Refused as why:
        return why.values is not None and len(why.values) <= max_values


def _analyse(graph: Graph, expr) -> BinaryTensor:
    value = graph.value(expr)
    name = op_name(value)
    if name in _LAYOUT_OPS:
        return _then(_analysed(graph, value.args[0]), value)
    if isinstance(value, relax.TupleGetItem) and op_name(graph.value(value.tuple_value)) == "relax.split":
        split = graph.value(value.tuple_value)
        return _then(_analysed(graph, split.args[0]), _split_slice(split, int(value.index)))
    if name == "relax.nn.pad":
        return _padded(_analysed(graph, value.args[0]), value)
    gather = _gather(graph, value) if name == "relax.take" else None
    if gather is not None:
        # a gather with constant indices (a reflect / replicate pad, index_select): each element is one of the
        # input's, so the bits are the input's bits gathered the same way
        return _then(_analysed(graph, value.args[0]), gather)
    if isinstance(value, relax.Var):
        raise Refused(f"it is {describe(value)}, a float tensor")
    root = _Roots(graph)(expr)
    if root is not None and not root.same_as(expr):
        try:
            inner = _analysed(graph, root)
        except Refused:
            inner = None
        if inner is not None:  # a function of a tensor that is already two-valued: new values, maybe flipped
            return _remapped(graph, expr, root, inner)
        chain = analyse_chain(graph, expr, atoms_of(graph))
        if chain is not None:
            return chain
    raise Refused(f"it is a float tensor computed by {describe(value, graph)}")


@dataclass(frozen=True)
class Gather:
    """``take(x, indices, axis)`` with constant 1-D indices, as a layout op of the bits."""

    axis: int
    indices: tuple


def _gather(graph: Graph, take) -> Gather | None:
    indices = graph.constant(take.args[1])
    shape = static_shape(take.args[0])
    if indices is None or indices.ndim != 1 or take.attrs.axis is None or shape is None:
        return None
    axis = int(take.attrs.axis) % len(shape)
    indices, n, mode = indices.astype(np.int64), shape[axis], str(take.attrs.mode)
    if mode == "clip":
        indices = np.clip(indices, 0, n - 1)
    elif mode == "wrap":
        indices = indices % n
    elif indices.min(initial=0) < 0 or indices.max(initial=0) >= n:
        return None  # "fast" with an index out of range: what TVM computes there is not defined
    return Gather(axis, tuple(int(i) for i in indices))


def _split_slice(split, index: int) -> Slice:
    axis = int(split.attrs.axis)
    extent = static_shape(split.args[0])[axis]
    parts = split.attrs.indices_or_sections
    if isinstance(parts, (int,)) or hasattr(parts, "value"):
        n = int(parts.value if hasattr(parts, "value") else parts)
        size = extent // n
        bounds = [k * size for k in range(n)] + [extent]
    else:
        bounds = [0] + [int(p) for p in parts] + [extent]
    return Slice(axis, bounds[index], bounds[index + 1])


def _then(inner: BinaryTensor, op) -> BinaryTensor:
    if inner.pad is not None:
        if not (not isinstance(op, Slice) and op_name(op) == "relax.permute_dims"):
            raise Refused("its padding is followed by a layout change other than a transpose")
        axes = [int(a) for a in op.attrs.axes]
        widths, value = inner.pad
        return inner.replace(pad=([widths[a] for a in axes], value), post=inner.post + [op])
    return inner.replace(post=inner.post + [op])


def _padded(inner: BinaryTensor, pad) -> BinaryTensor:
    a = pad.attrs
    if not any(int(v) for v in a.pad_width):
        return inner  # F.pad(x, (0, 0, 0, 0)) pads nothing: no padding value to account for
    if str(a.pad_mode) != "constant":
        raise Refused(f"it is padded in mode {a.pad_mode!r} (only constant padding keeps it binary)")
    if inner.pad is not None:
        raise Refused("it is padded twice")
    w = [int(v) for v in a.pad_width]
    widths = [(w[2 * i], w[2 * i + 1]) for i in range(len(w) // 2)]
    value = float(a.pad_value)
    if value != 0.0 and value not in inner.values:
        raise Refused(f"it is padded with {value:g}, which is neither 0 nor one of its "
                      f"{'two ' if len(inner.values) == 2 else ''}values {', '.join(f'{v:g}' for v in inner.values)}")
    return inner.replace(pad=(widths, value), post=inner.post + [pad])


def _remapped(graph: Graph, expr, root, inner):
    if isinstance(inner, LevelTensor):
        return _remapped_levels(graph, expr, root, inner)
    return _remapped_binary(graph, expr, root, inner)


def _remapped_levels(graph: Graph, expr, root, inner: LevelTensor) -> LevelTensor:
    """``f(inner)`` of a few-level tensor: the levels' images must stay equally spaced and rising (an affine map
    with a positive scale, Brevitas' ``* s``)."""
    shape = static_shape(root)
    chain = Chain(graph, expr, root, tuple(shape))
    images = []
    for v in inner.values:
        image = np.asarray(chain.evaluate(np.full(shape, v, np.float32)), np.float64)
        if np.ptp(image):
            raise Refused(f"{describe(graph.value(expr))} gives its values a different scale per element")
        images.append(float(image.reshape(-1)[0]))
    steps = np.diff(images)
    if not np.all(steps > 0) or np.ptp(steps) > 1e-6 * abs(steps[0]):
        raise Refused(f"{describe(graph.value(expr))} maps its levels {', '.join(f'{v:g}' for v in inner.values)} to "
                      f"{', '.join(f'{v:g}' for v in images)}: not equally spaced and rising")
    if inner.pad is not None and inner.pad[1] != 0:
        raise Refused(f"{describe(graph.value(expr))} follows a padding of a multi-level activation")
    return inner.replace(lo=images[0], step=float(steps[0]))


def _remapped_binary(graph: Graph, expr, root, inner: BinaryTensor) -> BinaryTensor:
    """``f(inner)`` for an elementwise ``f``: evaluate ``f`` on both values (the model's own: exactly, sign(0) = 0);
    they must stay uniform and distinct."""
    shape = static_shape(root)
    chain = Chain(graph, expr, root, tuple(shape))

    def image(value: float) -> np.ndarray:
        return np.asarray(chain.evaluate(np.full(shape, value, np.float32)), np.float64)

    f_low, f_high = image(inner.low), image(inner.high)
    if np.ptp(f_low) or np.ptp(f_high):
        raise Refused(f"{describe(graph.value(expr))} gives its two values a different scale per element "
                      "(the activation scale must be one per tensor)")
    lo, hi = float(f_low.reshape(-1)[0]), float(f_high.reshape(-1)[0])
    if np.isnan(lo) or np.isnan(hi) or (lo == hi == 0.0):
        raise Refused(f"{describe(graph.value(expr))} maps both of its values to {lo:g}")
    if lo == hi:
        # the constant c: one of the two values {-|c|, |c|}, by a test every element passes (x * 0 >= 0: c > 0) or
        # fails (x * 0 >= 1: c < 0)
        c = lo
        inner = inner.replace(scale=np.zeros_like(np.asarray(inner.scale, np.float32)),
                              threshold=np.full_like(np.asarray(inner.threshold, np.float32), 0.0 if c > 0 else 1.0))
        lo, hi = -abs(c), abs(c)
    if inner.pad is not None:
        # An elementwise op after the padding maps the padding value too, e.g. sign(pad(sign(x), 0)) pads with +1.
        widths, value = inner.pad
        f_pad = image(value)
        mapped = float(f_pad.reshape(-1)[0])
        if np.ptp(f_pad) or mapped not in (0.0, lo, hi):
            raise Refused(f"{describe(graph.value(expr))} after its padding maps the padding value {value:g} "
                          f"to {mapped:g}, which is neither 0 nor one of its two values {min(lo, hi):g}, "
                          f"{max(lo, hi):g}")
        inner = inner.replace(pad=(widths, mapped))
    if hi > lo:
        return inner.replace(low=lo, high=hi)
    if any(not isinstance(op, Slice) and op_name(op) == "relax.nn.max_pool2d" for op in inner.post):
        raise Refused("a decreasing function follows a max-pool of it")
    scale, threshold = negate_test(inner.scale, inner.threshold)
    return inner.replace(low=hi, high=lo, scale=scale, threshold=threshold)


# ------------------------------------------------------------------------------------------------------ emission


def emit_post(bb, new, source: BinaryTensor, x, post=None):
    """Re-apply the layout ops of ``source`` (except its pad) to ``x``."""
    out = x
    for op in source.post if post is None else post:
        if isinstance(op, Slice):
            out = bb.emit(relax.op.strided_slice(out, axes=[op.axis], begin=[op.begin], end=[op.end]))
        elif isinstance(op, Gather):
            out = bb.emit(relax.op.take(out, relax.const(np.array(op.indices, np.int64)), axis=op.axis,
                                         mode="clip"))
        elif op_name(op) == "relax.nn.pad":
            continue  # folded into the conv's padding
        else:
            out = bb.emit(relax.Call(op.op, [out] + [new(a) for a in op.args[1:]], op.attrs, op.ty_args))
    return out


def _layout_numpy(op, arr: np.ndarray, batch_reduced: bool):
    """A post op applied to an x-space array of per-element test parameters, or None if it cannot be."""
    if isinstance(op, Slice):
        if op.axis == 0 and batch_reduced:
            return None
        index = [slice(None)] * arr.ndim
        index[op.axis] = slice(op.begin, op.end)
        return arr[tuple(index)]
    if isinstance(op, Gather):
        if op.axis == 0 and batch_reduced:
            return None
        if arr.shape[op.axis] == 1:  # uniform along the gathered axis
            shape = list(arr.shape)
            shape[op.axis] = len(op.indices)
            return np.broadcast_to(arr, shape)
        return np.take(arr, op.indices, axis=op.axis)
    name = op_name(op)
    out_shape = static_shape(op)
    if out_shape is None:
        return None
    if batch_reduced:
        in_shape = static_shape(op.args[0])
        if not out_shape or not in_shape or out_shape[0] != in_shape[0]:
            return None  # the op mixes the batch with other axes
        out_shape = (1,) + tuple(out_shape[1:])
    if name == "relax.permute_dims":
        axes = [int(a) for a in op.attrs.axes] if op.attrs.axes is not None else None
        return np.transpose(arr, axes)
    if name == "relax.nn.max_pool2d":
        if str(op.attrs.layout) != "NCHW" or np.ptp(arr, axis=(2, 3)).any():
            return None
        return np.broadcast_to(arr[:, :, :1, :1], out_shape)
    if name == "relax.nn.pad":
        return None
    return arr.reshape(out_shape)


def _packing_test(source: BinaryTensor, post) -> tuple | None:
    """Per-channel (scale, threshold) along axis 1 of the packed tensor, when the post ops allow, else None."""
    batch_reduced = static_shape(source.root)[0] != source.scale.shape[0] if source.scale.ndim else False
    s, t = source.scale, source.threshold
    for op in post:
        if not isinstance(op, Slice) and op_name(op) == "relax.nn.pad":
            continue  # folded into the conv's padding: the packed tensor is the unpadded one
        if not isinstance(op, Slice) and op_name(op) == "relax.nn.max_pool2d" and np.any(s < 0):
            return None  # max-pool commutes with an increasing test only
        s, t = _layout_numpy(op, s, batch_reduced), _layout_numpy(op, t, batch_reduced)
        if s is None or t is None:
            return None
    if s.ndim < 2:
        return None
    s, t = np.moveaxis(s, 1, 0).reshape(s.shape[1], -1), np.moveaxis(t, 1, 0).reshape(t.shape[1], -1)
    if np.ptp(s, axis=1).any() or np.ptp(t, axis=1).any():
        return None
    return s[:, 0].astype(np.float32), t[:, 0].astype(np.float32)


def _compact(arr: np.ndarray) -> np.ndarray:
    """A per-element constant as a scalar when it is uniform."""
    return np.asarray(arr.reshape(-1)[0], arr.dtype) if arr.size and not np.ptp(arr) else arr


def emit_packed(bb, new, source: BinaryTensor, rows: bool, extra_post=()):
    """Emit the packed bits of ``source`` (then ``extra_post``, e.g. a group's channel slice): ``bitpack_rows`` for
    a dense input [M, K], ``bitpack_nchw`` for a conv input; a :class:`ParityPlane`'s as the XOR of its tests'."""
    if isinstance(source, ParityPlane):
        words = [emit_packed(bb, new, test, rows, extra_post) for test in source.tests]
        out = words[0]
        for other in words[1:]:
            out = bb.emit(relax.op.bitwise_xor(out, other))
        return out
    op = "bitpack_rows" if rows else "bitpack_nchw"
    post = list(source.post) + list(extra_post)
    x = new(source.root)
    if np.all(source.scale == 1) and np.all(source.threshold == 0):
        return bb.emit(call_kernel(bb, op, [emit_post(bb, new, source, x, post)]))
    test = _packing_test(source, post)
    if test is not None:
        args = [emit_post(bb, new, source, x, post), relax.const(test[0]), relax.const(test[1])]
        return bb.emit(call_kernel(bb, op, args))
    # the general case: the ±1 tensor in x-space, then the layout ops, then the plain packing test
    cond = relax.op.greater_equal(relax.op.multiply(x, relax.const(_compact(source.scale))),
                                  relax.const(_compact(source.threshold)))
    pm1 = bb.emit(relax.op.where(bb.emit(cond), relax.const(1.0, "float32"), relax.const(-1.0, "float32")))
    return bb.emit(call_kernel(bb, op, [emit_post(bb, new, source, pm1, post)]))
