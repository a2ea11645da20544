"""Which values does a tensor take *exactly*, on a set of inputs the model makes, not by chance?

A float conv's output is exactly 0 only by chance: a measure-zero set of inputs hits it. A ReLU's output is exactly 0
for half of them; so is a max-pool of it, a zero padding, an average of zeros, a conv whose receptive field is all
zeros, and an integer-valued binary conv (``dot = 0`` whenever as many taps agree as disagree). These exact values
are the tensor's *atoms*. The tie rule (``sign(0)`` taken as +1, README "Tie rule") is a convention for a ``sign``
whose input is 0 by chance; where the root of a binarizer has an atom at the tie, ``sign(0) = 0`` is what the model
computes, and the analysis must keep it.

:class:`Atoms` over-approximates the atoms of a tensor (``contains`` may say yes for a value that is never exact; it
never says no for one that is): a union of *points* (a value per element, NaN where there is none) and *grids*
(``offset + unit * m`` for integers m: the outputs of a binary layer), or ``TOP`` (anything may be exact). Arrays
broadcast to the tensor's shape with batch 1. :func:`tensor_atoms` derives them op by op; an op it does not know has
no atoms if its inputs have none (a float computation of float inputs), and any (``TOP``) otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tvm import relax

from .graph import Graph, op_name, static_shape, tensor_args

_LAYOUT = ("relax.reshape", "relax.permute_dims", "relax.flatten", "relax.squeeze", "relax.expand_dims",
           "relax.nn.batch_flatten")
_LINEAR = ("relax.nn.conv2d", "relax.matmul")
_AVERAGES = ("relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d", "relax.mean", "relax.sum")
_FLAT_MAKERS = ("relax.round", "relax.floor", "relax.ceil", "relax.trunc", "relax.sign")
GRID_TOL = 2.0 ** -20  # relative slack of an inexact grid (a BatchNorm scale applied to a binary layer's output)


@dataclass
class Atoms:
    points: list = field(default_factory=list)  # arrays of exact values (NaN: none at that element)
    grids: list = field(default_factory=list)  # Grid: offset + unit * m, m an integer, |m| <= bound
    sets: list = field(default_factory=list)  # arrays [M, ...]: M exact values per element
    top: bool = False
    why: str = ""  # what makes them, for the report ("a Relu", "an integer-valued Conv")

    @property
    def none(self) -> bool:
        return not (self.points or self.grids or self.sets or self.top)

    def arrays(self) -> list:
        """Every per-element array (for the shape of the analysis' x-space)."""
        if self.top:
            return []
        return [np.asarray(a) for a in self.points] + [np.asarray(x) for g in self.grids for x in (g.unit, g.offset)] \
            + [np.asarray(a)[0] for a in self.sets]

    def contains(self, lo, hi) -> np.ndarray:
        """Per element: may an atom lie in the closed interval [lo, hi]?"""
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        out = np.zeros(np.broadcast_shapes(lo.shape, hi.shape), bool)
        if self.top:
            return out | True
        for p in self.points:
            p = np.asarray(p, np.float64)
            out = out | ((p >= lo) & (p <= hi))
        for a in self.sets:
            a = np.asarray(a, np.float64).reshape(np.shape(a)[:1] + (1,) * (out.ndim - np.ndim(a) + 1) +
                                                  np.shape(a)[1:])
            out = out | np.any((a >= lo) & (a <= hi), axis=0)
        for g in self.grids:
            unit, offset, tol = np.abs(np.asarray(g.unit, np.float64)), np.asarray(g.offset, np.float64), g.tol
            slack = tol * np.maximum(np.maximum(np.abs(lo), np.abs(hi)), unit)
            with np.errstate(all="ignore"):
                m_lo = np.ceil((lo - slack - offset) / unit)
                m_hi = np.floor((hi + slack - offset) / unit)
            hit = np.where(unit == 0, (offset >= lo - slack) & (offset <= hi + slack), m_lo <= m_hi)
            out = out | hit
        return out

    def union(self, other: "Atoms") -> "Atoms":
        return Atoms(self.points + other.points, self.grids + other.grids, self.sets + other.sets,
                     self.top or other.top, self.why or other.why)

    def mapped(self, fn_point, fn_grid=None) -> "Atoms":
        if self.top or (self.grids and fn_grid is None):
            return TOP_OF(self.why)
        return Atoms([fn_point(p) for p in self.points], [fn_grid(g) for g in self.grids],
                     [fn_point(a) for a in self.sets], False, self.why)

    def enumerate(self, limit: int = 1 << 20):
        """Every atom as an array [M, ...] (grids expanded up to their bound), or None if they are not finite."""
        if self.top or any(not np.isfinite(g.bound) for g in self.grids):
            return None
        parts = [np.asarray(p, np.float64)[None] for p in self.points] + [np.asarray(a, np.float64) for a in self.sets]
        for g in self.grids:
            m = np.arange(-int(g.bound), int(g.bound) + 1, dtype=np.float64)
            m = m.reshape((-1,) + (1,) * max(np.ndim(g.unit), np.ndim(g.offset)))
            parts.append(np.asarray(g.offset, np.float64) + np.asarray(g.unit, np.float64) * m)
        if not parts or sum(np.size(p) for p in parts) > limit:
            return None
        ndim = max(np.ndim(p) for p in parts)
        parts = [p.reshape(p.shape[:1] + (1,) * (ndim - p.ndim) + p.shape[1:]) for p in parts]
        shape = np.broadcast_shapes(*[p.shape[1:] for p in parts])
        return np.concatenate([np.broadcast_to(p, p.shape[:1] + shape) for p in parts])


@dataclass(frozen=True)
class Grid:
    """The values offset + unit * m (m an integer, |m| <= bound), up to a relative ``tol``: a binary layer's
    outputs."""

    unit: object
    offset: object
    tol: float
    bound: float = np.inf


NONE = Atoms()


def TOP_OF(why: str) -> Atoms:  # noqa: N802 - a constant with a reason
    return Atoms(top=True, why=why)


def point(value, why: str) -> Atoms:
    return Atoms(points=[np.asarray(value, np.float32)], why=why)


def _scalar(arg) -> float:
    return float(arg.value)


def _structural_zero(value, name, w) -> str:
    """Why a conv2d / matmul of any float input has exact zeros whatever the input (the model's own zeros, not 0 by
    chance), or "": an output whose receptive field is all zero padding (a conv padded by more than its kernel
    reaches in), or an output channel whose weights are all 0."""
    kind = "Conv" if name == "relax.nn.conv2d" else "MatMul"
    per_channel = w.reshape(w.shape[0], -1) if name == "relax.nn.conv2d" else w.reshape(-1, w.shape[-1]).T
    if np.any(np.all(per_channel == 0, axis=1)):
        return f"a {kind} with an output channel of zero weights"
    if name != "relax.nn.conv2d":
        return ""
    shape = static_shape(value.args[0])
    if shape is None or str(value.attrs.data_layout) != "NCHW" or str(value.attrs.kernel_layout) != "OIHW":
        return ""
    pt, pl, pb, pr = (int(p) for p in value.attrs.padding)
    (sh, sw), (dh, dw) = (int(v) for v in value.attrs.strides), (int(v) for v in value.attrs.dilation)
    axes = ((shape[2], w.shape[2], sh, dh, pt, pb), (shape[3], w.shape[3], sw, dw, pl, pr))
    for extent, k, s, d, before, after in axes:
        out = (extent + before + after - d * (k - 1) - 1) // s + 1
        if any(all(not 0 <= o * s - before + t * d < extent for t in range(k)) for o in range(out)):
            return f"a {kind} whose padding covers a whole receptive field (an output of zero padding only)"
    return ""


def _exact_sums(units: np.ndarray, bound: float) -> bool:
    """Are sums of up to ``bound`` multiples of each unit exact in float32 (every partial sum representable: the
    unit is a small integer times a power of two, 0.75 = 3/4; not 0.7)?"""
    for u in np.abs(np.asarray(units, np.float64)).reshape(-1):
        if u == 0:
            continue
        m, _ = np.frexp(u)
        k = next((k for k in range(25) if float(m * 2.0 ** k).is_integer()), None)
        if k is None or m * 2.0 ** k * bound >= 2.0 ** 24:
            return False
    return True


def _is_power_of_two(v: np.ndarray) -> bool:
    v = np.abs(np.asarray(v, np.float64))
    m, _ = np.frexp(v)
    return bool(np.all((m == 0.5) | (v == 0)))


class AtomAnalysis:
    """Atoms of the tensors of one function, memoised. ``binary_of(expr)`` gives the BinaryTensor of a conv/dense
    input (or None) and ``weight_scale(w, axis)`` the +-alpha of binary weights (or a str): the grids of a binary
    layer's output."""

    def __init__(self, graph: Graph, binary_of, weight_scale):
        self.graph, self.binary_of, self.weight_scale = graph, binary_of, weight_scale
        self.memo: dict = {}

    def __call__(self, expr) -> Atoms:
        value = self.graph.value(expr)
        key = value
        if key not in self.memo:
            self.memo[key] = NONE  # a cycle cannot happen in a dataflow graph; this guards the recursion depth
            self.memo[key] = self._atoms(expr, value)
        return self.memo[key]

    def _atoms(self, expr, value) -> Atoms:
        g = self.graph
        c = g.constant(expr)
        if c is not None:
            return point(c, "a constant")
        if isinstance(value, relax.Var):
            return NONE  # a model input: any float, exact values only by chance
        if isinstance(value, relax.TupleGetItem):
            tup = g.value(value.tuple_value)
            if op_name(tup) == "relax.split":  # along any axis: only atoms the same everywhere survive
                return self._spatially_uniform(self(tup.args[0]), per_channel=False)
            return TOP_OF("an element of a tuple")
        name = op_name(value)
        if name is None:
            return TOP_OF("an op tvm_bnn does not know")
        args = tensor_args(value)
        inputs = [self(a) for a in args]
        if name in _LAYOUT or name == "relax.strided_slice":
            return self._layout(value, inputs[0])
        if name == "relax.nn.pad":
            widths = [int(w) for w in value.attrs.pad_width]
            if not any(widths):  # F.pad(x, (0, 0, 0, 0)): x itself, no padding value anywhere
                return inputs[0]
            spatial = not any(widths[:4])
            pad = float(value.attrs.pad_value)
            return self._spatially_uniform(inputs[0], per_channel=spatial).union(point(pad, "a Pad"))
        if name == "relax.take" and value.attrs.axis is not None:  # a gather (a reflect / replicate pad)
            axis = int(value.attrs.axis) % max(len(static_shape(value) or ()), 1)
            return self._spatially_uniform(inputs[0], per_channel=axis >= 2)
        if name == "relax.concat":
            out = NONE
            for a in inputs:
                out = out.union(self._spatially_uniform(a, per_channel=False))
            return out
        if name == "relax.nn.relu":
            return inputs[0].union(point(0.0, "a Relu"))
        if name == "relax.nn.relu6":
            return inputs[0].union(point(0.0, "a Relu6")).union(point(6.0, "a Relu6"))
        if name == "relax.clip":
            bounds = [_scalar(b) for b in value.args[1:3]]
            out = inputs[0]
            for b in bounds:
                if np.isfinite(b):
                    out = out.union(point(b, "a Clip"))
            return out
        if name in ("relax.maximum", "relax.minimum", "relax.where"):
            out = NONE
            for a in inputs[-2:]:
                out = out.union(a)
            return out if out.why or out.none else Atoms(out.points, out.grids, out.sets, out.top, "a " + name[6:])
        if name in _LINEAR:
            return self._linear(value, name, inputs[0])
        if name in _AVERAGES:
            return self._average(inputs[0])
        if name == "relax.nn.max_pool2d":
            return self._spatially_uniform(inputs[0])
        if name in ("relax.add", "relax.subtract", "relax.multiply", "relax.divide"):
            return self._arith(value, name, args, inputs)
        if name == "relax.negative":
            return inputs[0].mapped(lambda p: -p, lambda g: Grid(g.unit, -np.asarray(g.offset), g.tol, g.bound))
        if name == "relax.astype" and str(value.attrs.dtype).startswith("float"):
            return inputs[0]
        if name in _FLAT_MAKERS:
            return TOP_OF(f"a {name[6:].capitalize()}")
        if all(a.none for a in inputs):
            return NONE
        return TOP_OF(next(a.why for a in inputs if not a.none) or "an op of exact values")

    # ------------------------------------------------------------------------------------------------ op rules
    @staticmethod
    def _spatially_uniform(a: Atoms, per_channel: bool = True) -> Atoms:
        """``a`` for an op that moves elements within a channel (pooling, padding, splitting) or, with
        ``per_channel=False``, across channels (concat): arrays that vary along those axes become TOP."""
        if a.top or a.none:
            return a

        def ok(arr):
            s = np.shape(arr)
            if not s:
                return True
            return all(d == 1 for i, d in enumerate(s) if i >= 2 or not per_channel)

        if all(ok(p) for p in a.points) and all(ok(g.unit) and ok(g.offset) for g in a.grids) and \
                all(ok(x[0]) for x in a.sets):
            return a
        return TOP_OF(a.why)

    def _layout(self, value, a: Atoms) -> Atoms:
        """A layout op on per-element arrays: applied to them (broadcast to the input's shape, batch 1)."""
        if a.top or a.none:
            return a
        in_shape, out_shape = static_shape(value.args[0]), static_shape(value)
        if in_shape is None or out_shape is None:
            return TOP_OF(a.why)
        if all(np.size(arr) == 1 for arr in a.points + [x for g in a.grids for x in (g.unit, g.offset)]) and \
                all(np.size(x[0]) == 1 for x in a.sets):  # the same everywhere: scalars, whatever the new rank
            return Atoms([np.asarray(p).reshape(()) for p in a.points],
                         [Grid(np.asarray(g.unit).reshape(()), np.asarray(g.offset).reshape(()), g.tol, g.bound)
                          for g in a.grids], [np.asarray(x).reshape(-1) for x in a.sets], False, a.why)

        def move(arr):
            full = np.broadcast_to(np.asarray(arr), (1,) + tuple(in_shape[1:])).copy()
            name = op_name(value)
            if name == "relax.permute_dims":
                axes = [int(x) for x in value.attrs.axes] if value.attrs.axes is not None else None
                return np.transpose(full, axes)
            if name == "relax.strided_slice":
                index = [slice(None)] * full.ndim
                for ax, b, e in zip(value.attrs.axes, value.attrs.begin, value.attrs.end):
                    strides = value.attrs.strides
                    index[int(ax)] = slice(int(b), int(e), int(strides[0]) if strides else 1)
                return full[tuple(index)]
            return full.reshape((1,) + tuple(out_shape[1:]))

        try:
            return Atoms([move(p) for p in a.points], [Grid(move(g.unit), move(g.offset), g.tol, g.bound)
                                                       for g in a.grids],
                         [np.stack([move(x) for x in arr]) for arr in a.sets], False, a.why)
        except (ValueError, TypeError, AttributeError):
            return TOP_OF(a.why)

    def _linear(self, value, name, a: Atoms) -> Atoms:
        """conv2d / matmul with constant weights: a grid if the input is binary and the weights +-alpha (every
        output is a multiple of alpha times the values' common unit), 0 if the input has a zero atom (a receptive
        field of zeros), none for a float input."""
        g = self.graph
        w = g.constant(value.args[1])
        if w is None:
            return NONE if a.none else TOP_OF(a.why)
        axis = 0 if name == "relax.nn.conv2d" else 1
        source = self.binary_of(value.args[0])
        if source is not None:
            alpha = self.weight_scale(w, axis) if w.ndim in (2, 4) else "rank"
            unit = _common_unit(*source.values)
            if not isinstance(alpha, str) and unit is not None:
                units = alpha.astype(np.float64) * unit
                taps = int(np.prod(w.shape)) // int(w.shape[axis])
                bound = np.ceil(taps * max(abs(v) for v in source.values) / unit)
                if not _exact_sums(units, bound):  # sums of +-0.7: PyTorch's 0 is a rounding, 0 only by chance
                    return NONE
                shape = (1, -1, 1, 1) if name == "relax.nn.conv2d" else (1, -1)
                return Atoms(grids=[Grid(units.reshape(shape), np.zeros(()), 0.0, bound)],
                             why=f"an integer-valued {'Conv' if axis == 0 else 'MatMul'} (a binary layer)")
            return TOP_OF("a layer of two-valued inputs")
        zero = _structural_zero(value, name, w)
        if a.none:
            return point(0.0, zero) if zero else NONE
        if not a.top and any(np.any(np.asarray(p) == 0) for p in a.points):
            return point(0.0, f"a {'Conv' if axis == 0 else 'MatMul'} of a tensor with exact zeros ({a.why})")
        return TOP_OF(a.why)

    @staticmethod
    def _average(a: Atoms) -> Atoms:
        if a.none:
            return NONE
        if not a.top and not a.grids and not a.sets and \
                all(np.all((np.asarray(p) == 0) | np.isnan(p)) for p in a.points):
            return point(0.0, f"an average of exact zeros ({a.why})")
        return TOP_OF(a.why)

    def _arith(self, value, name, args, inputs) -> Atoms:
        g = self.graph
        consts = [g.constant(x) for x in args]
        if consts[0] is None and consts[1] is None:
            a, b = inputs
            if name == "relax.multiply":  # 0 * anything is 0
                zeros = [_zeros_of(x) for x in (a, b) if not x.top]
                zeros = [z for z in zeros if z is not None]
                if zeros:
                    return Atoms(points=zeros, why=next(x.why for x in (a, b) if not x.none))
            if a.none or b.none:
                return NONE  # a float of no exact values in the sum/product: exact only by chance
            if name in ("relax.add", "relax.subtract") and not (a.top or b.top or a.grids or b.grids or a.sets or
                                                                b.sets):
                fn = np.add if name == "relax.add" else np.subtract
                with np.errstate(all="ignore"):
                    pts = [fn(p, q).astype(np.float32) for p in a.points for q in b.points]
                return Atoms(points=pts, why=a.why or b.why)  # both at an exact value at once
            return TOP_OF(a.why or b.why)
        var = 0 if consts[0] is None else 1
        a, c = inputs[var], np.asarray(consts[1 - var], np.float32)
        extra = NONE
        if name == "relax.multiply" and np.any(c == 0):  # a channel scaled by 0 (a BatchNorm with gamma == 0)
            extra = point(np.where(c == 0, np.float32(0), np.float32(np.nan)), "a Mul by 0 (a BatchNorm with gamma = 0)")
        if a.none or a.top:
            return extra if a.none else a
        fn = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
              "relax.divide": np.divide}[name]

        def on_point(p):
            with np.errstate(all="ignore"):
                return (fn(p, c) if var == 0 else fn(c, p)).astype(np.float32)

        def on_grid(g):
            c64, unit, offset, tol = c.astype(np.float64), g.unit, g.offset, g.tol
            if name in ("relax.add", "relax.subtract"):
                sign = -1.0 if (name == "relax.subtract" and var == 1) else 1.0
                off = sign * np.asarray(offset) + (c64 if name == "relax.add" or var == 1 else -c64)
                return Grid(unit, off, max(tol, GRID_TOL), g.bound)
            exact = tol if _is_power_of_two(c64) else max(tol, GRID_TOL)
            if name == "relax.multiply":
                return Grid(unit * c64, np.asarray(offset) * c64, exact, g.bound)
            if var == 0:  # unit / c
                return Grid(unit / c64, np.asarray(offset) / c64, exact, g.bound)
            raise ValueError("c / grid")

        try:
            return extra.union(a.mapped(on_point, on_grid))
        except ValueError:
            return TOP_OF(a.why)


def _zeros_of(a: Atoms):
    """Where ``a`` may be exactly 0 (a point array: 0 there, NaN elsewhere), or None."""
    arrays = [np.where(np.asarray(p) == 0, np.float32(0), np.float32(np.nan)) for p in a.points]
    arrays = [z for z in arrays if np.any(z == 0)]
    if a.grids or a.sets:
        return np.zeros((), np.float32)  # m = 0 of a grid
    return arrays[0] if len(arrays) == 1 else (np.zeros((), np.float32) if arrays else None)


def _common_unit(*values: float) -> float | None:
    """A u > 0 of which every value is an integer multiple (their greatest common divisor), or None."""
    vals = sorted({abs(v) for v in values if v != 0})
    if not vals:
        return None
    unit = vals[0]
    for v in vals[1:]:
        if float(v / unit).is_integer():
            continue
        if float(unit).is_integer() and float(v).is_integer():
            unit = float(np.gcd(int(unit), int(v)))
            continue
        return None
    return unit
