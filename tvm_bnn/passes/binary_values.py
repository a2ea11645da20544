"""Which values can a tensor take, exactly? The analysis that recognises binarized activations.

A conv/dense input ``A`` is binarized when it is a function of one float32 tensor ``x`` that takes exactly two
values, ``low < high``, and sets each element by a threshold on the matching element of ``x``. No list of forms: the
function is whatever chain of elementwise ops the exporter wrote (compare, where, astype, sign, clip, min/max,
relu-style clamps, round/floor, ``* / + -`` by constants, negation, ``*_like`` fills, Brevitas' clamp-and-scale,
a BatchNorm folded before the sign, ...), followed by layout ops (reshape/flatten/permute/squeeze/expand_dims, split
and slices, max-pool) and at most one constant pad. The analysis, for every element of ``x`` at once:

1. **Monotone.** Every op of the chain has a known direction in its variable operand (``x + c`` keeps it, ``c - x``
   and ``x * c`` with ``c < 0`` flip it, comparisons turn it into a boolean step, ``where(cond, a, b)`` is monotone
   when both branches are and the jump at ``cond``'s boundary goes the same way, checked numerically at that
   boundary). Composition of monotone functions is monotone, so the chain ``F`` is non-decreasing or non-increasing
   per element over the finite float32 values of ``x``.
2. **Exactly two values, and where they switch.** The ops are evaluated in float32 with numpy, as the model computes
   them (each is correctly rounded IEEE arithmetic: no transcendental function is admitted into a chain; an op
   outside the table ends the chain, and its output is ``x``). The domain is the interval of float32 inputs where
   every intermediate is finite (found by bisection; beyond it the model's binarizer itself overflows). For a
   monotone ``F``, ``F(lo)`` and ``F(hi)`` are its extreme values; a bisection over the ordered float32 values
   finds the first ``t`` with ``F(t) != F(lo)`` (32 steps), and ``F(t) == F(hi)`` proves that ``F`` takes exactly
   those two values, switching at ``t``. ``x > c`` and ``x >= c`` differ by one float: the bisection finds which,
   so the result is exact.

The result is a :class:`BinaryTensor`: per element of ``x`` a packing test ``x * scale >= threshold`` (``scale``
+1 for increasing, -1 for decreasing, 0 for a constant element) whose bit selects ``high``, the two values, and the
layout ops to re-apply. ``torch.sign`` is the one op with three values: it is taken as ``x >= 0 ? 1 : -1`` (the
documented tie rule: one bit cannot hold sign(0) = 0). Inputs are finite floats (NaN and infinities are not
analysed). Straight-through forms that are two-valued only up to a rounding (``x + (sign(x) - x).detach()``) are
rewritten to their binarizer beforehand (canonicalize.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from .graph import Graph, op_name, static_shape

MAX_KEY = 0x7F7FFFFF  # the key of the largest finite float32; -MAX_KEY is -max
UNKNOWN = 2  # a direction that could not be established


class Refused(Exception):
    """The tensor is not recognised as binarized; the message says why, in the model's terms."""


# ------------------------------------------------------------------------------------------------ float32 order


def to_key(values) -> np.ndarray:
    """float32 -> int64 keys in the same order (-0.0 and +0.0 share key 0)."""
    bits = np.asarray(values, np.float32).view(np.uint32).astype(np.int64)
    return np.where(bits >= 0x80000000, -(bits - 0x80000000), bits)


def from_key(keys) -> np.ndarray:
    keys = np.asarray(keys, np.int64)
    bits = np.where(keys < 0, 0x80000000 - keys, keys).astype(np.uint32)
    return bits.view(np.float32)


def first_true(pred, lo, hi) -> np.ndarray:
    """Per element, the smallest key in [lo, hi] where the monotone ``pred(keys)`` holds (it holds at ``hi``)."""
    lo, hi = np.array(lo, np.int64), np.array(hi, np.int64)
    while np.any(lo < hi):
        mid = lo + (hi - lo) // 2
        ok = pred(mid)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid + 1)
    return lo


def next_up(t) -> np.ndarray:
    return np.nextafter(np.asarray(t, np.float32), np.float32(np.inf)).astype(np.float32)


def negate_test(scale, threshold):
    """(scale', threshold') whose test ``x * scale' >= threshold'`` is the negation of ``x * scale >= threshold``."""
    scale, threshold = np.asarray(scale, np.float32), np.asarray(threshold, np.float32)
    flipped = next_up(-threshold)  # not (s x >= t)  <=>  -s x > -t  <=>  -s x >= next_up(-t)
    const = np.where(threshold <= 0, np.float32(1), np.float32(0))  # 0 >= t negated
    return (-scale).astype(np.float32), np.where(scale == 0, const, flipped).astype(np.float32)


# --------------------------------------------------------------------------------------------- user-facing names


def describe(value) -> str:
    """An op as the user wrote it (best effort from the Relax the importers emit)."""
    if isinstance(value, relax.TupleGetItem):
        tup = value.tuple_value
        return "a Split" if op_name(tup) == "relax.split" else "an element of a tuple"
    if isinstance(value, relax.Var):
        return f"the model input {value.name!r}"
    name = op_name(value)
    if name == "relax.call_tir":
        gv = value.args[0]
        return f"a {getattr(gv, 'name_hint', 'fused')} operation"
    if name is None:
        return type(value).__name__
    short = name.removeprefix("relax.").removeprefix("nn.")
    return {"conv2d": "a conv2d", "matmul": "a matmul", "add": "an add",
            "max_pool2d": "a max-pool", "avg_pool2d": "an average pool", "concat": "a concat"}.get(short, f"a {short}")


def _fmt(v) -> str:
    return f"{float(v) + 0.0:.6g}"  # -0 prints as 0


# ------------------------------------------------------------------------------------------------ elementwise ops


def _scalar_arg(arg):
    """A scalar attribute-like argument (clip's bounds are PrimExprs in Relax)."""
    return float(arg.value)


def _leakyrelu(v, alpha):
    return np.where(v > 0, v, v * np.float32(alpha))


# Exactly evaluable ops: name -> numpy evaluation (the tensor operands, the call), and for unary ops the direction
# factor (+1 keeps the direction, -1 flips it). Binary ops have their direction rules in ``_direction``.
_UNARY = {
    "relax.sign": (lambda v, c: np.where(v >= 0, 1, -1).astype(v.dtype), 1),  # tie rule: sign(0) -> +1
    "relax.negative": (lambda v, c: -v, -1),
    "relax.nn.relu": (lambda v, c: np.maximum(v, np.zeros((), v.dtype)), 1),
    "relax.clip": (lambda v, c: np.minimum(np.maximum(v, np.asarray(_scalar_arg(c.args[1]), v.dtype)),
                                           np.asarray(_scalar_arg(c.args[2]), v.dtype)), 1),
    "relax.floor": (lambda v, c: np.floor(v), 1),
    "relax.ceil": (lambda v, c: np.ceil(v), 1),
    "relax.round": (lambda v, c: np.round(v), 1),  # ties to even, as TVM's and ONNX's Round
    "relax.trunc": (lambda v, c: np.trunc(v), 1),
    "relax.logical_not": (lambda v, c: ~v, -1),
    "relax.nn.leakyrelu": (lambda v, c: _leakyrelu(v, float(c.attrs.alpha)), 1),
}
_BINARY = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum",
           "relax.greater", "relax.greater_equal", "relax.less", "relax.less_equal", "relax.logical_and",
           "relax.logical_or")
_COMPARE = {"relax.greater": np.greater, "relax.greater_equal": np.greater_equal, "relax.less": np.less,
            "relax.less_equal": np.less_equal}
_FILLS = ("relax.ones_like", "relax.zeros_like", "relax.full_like", "relax.ones", "relax.zeros", "relax.full")
_EXACT_DTYPES = ("float32", "float16", "float64", "bool", "int8", "int16", "int32", "int64", "uint8")


def _binary_eval(name, a, b):
    if name in _COMPARE:
        return _COMPARE[name](a, b)
    fn = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
          "relax.divide": np.divide, "relax.maximum": np.maximum, "relax.minimum": np.minimum,
          "relax.logical_and": np.logical_and, "relax.logical_or": np.logical_or}[name]
    with np.errstate(all="ignore"):
        return fn(a, b)


def _dtype(expr) -> str:
    return str(getattr(getattr(expr, "ty", None), "dtype", ""))


def _combine(d1, d2):
    """Direction of a sum of two monotone functions (UNKNOWN where they go opposite ways)."""
    d1, d2 = np.asarray(d1, np.int8), np.asarray(d2, np.int8)
    out = np.where(d1 == 0, d2, np.where(d2 == 0, d1, np.where(d1 == d2, d1, UNKNOWN)))
    return np.where((d1 == UNKNOWN) | (d2 == UNKNOWN), UNKNOWN, out).astype(np.int8)


def _flip(d):
    d = np.asarray(d, np.int8)
    return np.where(d == UNKNOWN, UNKNOWN, -d).astype(np.int8)


def _constant_value(graph: Graph, expr):
    """numpy value of a constant or of a constant fill (ones_like(x), full(...)), else None."""
    c = graph.constant(expr)
    if c is not None:
        return c
    value = graph.value(expr)
    name = op_name(value)
    if name not in _FILLS:
        return None
    shape = static_shape(value)
    fill = {"relax.ones_like": 1, "relax.ones": 1, "relax.zeros_like": 0, "relax.zeros": 0}.get(name)
    if fill is None:
        f = graph.constant(value.args[1])
        fill = None if f is None else f.reshape(-1)[0]
    if fill is None or shape is None:
        return None
    return np.full(shape, fill, dtype=_dtype(value) or "float32")


class Chain:
    """The elementwise function ``F`` from ``root`` to ``top``: evaluation and direction, element by element over
    the "x-space" (the root's shape, with batch 1 when no constant varies along the batch)."""

    def __init__(self, graph: Graph, top, root, space: tuple):
        self.graph, self.top, self.root, self.space = graph, top, root, space
        self._dirs: dict = {}
        self._domain = None
        self.culprit = None  # the deepest op whose direction could not be established

    def domain(self):
        """Per element, the keys [lo, hi] of the inputs for which every intermediate value of the chain is finite:
        beyond them the model's own binarizer overflows (a BatchNorm scale times 3e38), which real activations
        never reach. Each op is monotone, so each node is finite on an interval; all contain 0 (checked)."""
        if self._domain is None:
            zero = np.zeros(self.space, np.int64)
            if not np.all(self.finite(zero)):
                raise Refused("the binarizer is not finite at 0")
            lo = first_true(self.finite, np.full(self.space, -MAX_KEY), zero)
            hi = -first_true(lambda k: self.finite(-k), np.full(self.space, -MAX_KEY), zero)
            self._domain = lo, hi
        return self._domain

    def finite(self, keys) -> np.ndarray:
        """Per element: is every floating-point intermediate of the chain finite at these inputs?"""
        memo = {}
        self.evaluate(from_key(keys).reshape(self.space), memo=memo)
        ok = np.ones(self.space, bool)
        for value in memo.values():
            value = np.asarray(value)
            if value.dtype.kind == "f":
                ok &= np.broadcast_to(np.isfinite(value), self.space)
        return ok

    # -- evaluation ------------------------------------------------------------------------------------------------
    def evaluate(self, x: np.ndarray, expr=None, memo=None):
        expr = self.top if expr is None else expr
        memo = {} if memo is None else memo
        if expr in memo:
            return memo[expr]
        if self._is_root(expr):
            out = x
        else:
            out = self._const(expr)
            if out is None:
                with np.errstate(all="ignore"):
                    out = self._eval_call(self.graph.value(expr), x, memo, expr)
        memo[expr] = out
        return out

    def _is_root(self, expr) -> bool:
        return expr.same_as(self.root) or self.graph.value(expr).same_as(self.graph.value(self.root))

    def _const(self, expr):
        c = _constant_value(self.graph, expr)
        if c is not None and c.ndim == len(self.space) and self.space and self.space[0] == 1 and c.shape[0] > 1:
            c = c[:1]  # uniform along the batch (see _space)
        return c

    def _operand(self, arg, x, memo):
        c = self._const(arg)
        return c if c is not None else self.evaluate(x, arg, memo)

    def _eval_call(self, value, x, memo, expr):
        name = op_name(value)
        dtype = _dtype(expr)
        if name in _UNARY:
            return _UNARY[name][0](self.evaluate(x, value.args[0], memo), value)
        if name == "relax.astype":
            with np.errstate(all="ignore"):
                return self.evaluate(x, value.args[0], memo).astype(dtype)
        if name == "relax.nn.prelu":
            v = self.evaluate(x, value.args[0], memo)
            slope = self._channel_slope(value, v.ndim)
            return np.where(v > 0, v, v * slope)
        if name == "relax.where":
            c, a, b = (self._operand(arg, x, memo) for arg in value.args)
            return np.where(c, a, b).astype(dtype)
        a, b = (self._operand(arg, x, memo) for arg in value.args[:2])
        return np.asarray(_binary_eval(name, a, b)).astype(dtype)

    def _channel_slope(self, value, ndim):
        slope = self.graph.constant(value.args[1]).astype(np.float32)
        shape = [1] * ndim
        shape[int(value.attrs.axis)] = -1
        return slope.reshape(shape) if slope.size > 1 else slope.reshape(())

    def at(self, keys, expr=None):
        """The function at the float32 values of ``keys`` (x-space arrays)."""
        return self.evaluate(from_key(keys).reshape(self.space), expr)

    # -- direction -------------------------------------------------------------------------------------------------
    def direction(self, expr=None) -> np.ndarray:
        """Per element: +1 non-decreasing, -1 non-increasing, 0 constant, UNKNOWN (with ``self.why`` set)."""
        expr = self.top if expr is None else expr
        if expr in self._dirs:
            return self._dirs[expr]
        if self._is_root(expr):
            d = np.ones(self.space, np.int8)
        elif self._const(expr) is not None:
            d = np.zeros(self.space, np.int8)
        else:
            d = np.broadcast_to(self._call_direction(self.graph.value(expr)), self.space).astype(np.int8)
            if np.any(d == UNKNOWN) and self.culprit is None:  # children first: the deepest such op
                self.culprit = expr
        self._dirs[expr] = d
        return d

    def _call_direction(self, value):
        name = op_name(value)
        if name in _UNARY:
            d = self.direction(value.args[0])
            return d if _UNARY[name][1] == 1 else _flip(d)
        if name == "relax.astype":
            return self.direction(value.args[0])
        if name == "relax.nn.leakyrelu":
            return self.direction(value.args[0]) if float(value.attrs.alpha) >= 0 else UNKNOWN
        if name == "relax.nn.prelu":
            d = self.direction(value.args[0])
            slope = np.broadcast_to(self._channel_slope(value, len(self.space)), self.space)
            return np.where(slope >= 0, d, np.where(d == 0, 0, UNKNOWN))
        if name == "relax.where":
            return self._where_direction(value)
        lhs, rhs = value.args[:2]
        cl, cr = self._const(lhs), self._const(rhs)
        dl = None if cl is not None else self.direction(lhs)
        dr = None if cr is not None else self.direction(rhs)
        if name in ("relax.add", "relax.maximum", "relax.minimum", "relax.logical_and", "relax.logical_or"):
            return dl if dr is None else dr if dl is None else _combine(dl, dr)
        if name == "relax.subtract":
            return dl if dr is None else _flip(dr) if dl is None else _combine(dl, _flip(dr))
        if name in _COMPARE:  # a > b is increasing in a, decreasing in b
            up = name in ("relax.greater", "relax.greater_equal")
            inc = dl if dr is None else _flip(dr) if dl is None else _combine(dl, _flip(dr))
            return inc if up else _flip(inc)
        if name in ("relax.multiply", "relax.divide"):
            if dl is not None and dr is not None:
                return UNKNOWN  # a product of two variable factors
            if dl is None and name == "relax.divide":
                return UNKNOWN  # c / x changes direction at 0
            d, c = (dl, cr) if dl is not None else (dr, cl)
            c = np.broadcast_to(np.asarray(c, np.float64), self.space)
            if not np.all(np.isfinite(c)) or (name == "relax.divide" and np.any(c == 0)):
                return UNKNOWN
            return np.where(d == UNKNOWN, UNKNOWN, d * np.sign(c)).astype(np.int8)
        return UNKNOWN

    def _where_direction(self, value):
        cond, a, b = value.args
        dc = self.direction(cond)
        da = self.direction(a) if self._const(a) is None else np.zeros(self.space, np.int8)
        db = self.direction(b) if self._const(b) is None else np.zeros(self.space, np.int8)
        if np.any(dc == UNKNOWN):
            return UNKNOWN
        lo, hi = self.domain()
        c_lo, c_hi = self.at(lo, cond).astype(bool), self.at(hi, cond).astype(bool)
        const = c_lo == c_hi
        # where cond switches: first key with cond != cond(-max); elsewhere cond is one branch throughout
        t = first_true(lambda k: (self.at(k, cond).astype(bool) != c_lo) | const, lo, hi)
        left_is_a = c_lo
        d_left, d_right = np.where(left_is_a, da, db), np.where(left_is_a, db, da)
        left = np.where(left_is_a, self.at(t - 1, a), self.at(t - 1, b)).astype(np.float64)
        right = np.where(left_is_a, self.at(t, b), self.at(t, a)).astype(np.float64)
        d = _combine(d_left, d_right)
        jump = np.sign(right - left)
        ok = np.where(d == 1, right >= left, np.where(d == -1, right <= left, ~np.isnan(jump)))
        d = np.where(d == 0, np.nan_to_num(jump).astype(np.int8), d)
        d = np.where(ok | (d == UNKNOWN), d, UNKNOWN)
        branch = np.where(c_lo, da, db)  # cond constant: the branch it selects
        return np.where(const, branch, d).astype(np.int8)


# ----------------------------------------------------------------------------------------------- the result


@dataclass
class BinaryTensor:
    """``post(where(x * scale >= threshold, high, low))``: a two-valued tensor, and how to compute its bits.

    ``scale``/``threshold`` are float32 arrays over x-space (see :class:`Chain`); ``post`` the layout calls to
    re-apply, innermost first; ``pad`` a constant pad applied last: ((top, left, bottom, right), value)."""

    root: relax.Expr
    scale: np.ndarray
    threshold: np.ndarray
    low: float
    high: float
    post: list = field(default_factory=list)
    pad: tuple | None = None

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2

    @property
    def mid(self) -> float:
        return (self.high + self.low) / 2

    def replace(self, **kw) -> "BinaryTensor":
        return dataclasses.replace(self, **kw)


def _space(graph: Graph, root, consts) -> tuple:
    shape = static_shape(root)
    if shape is None:
        raise Refused("the activation has a dynamic shape")
    if not shape:
        return ()
    for c in consts:
        c = np.asarray(c)
        if c.ndim == len(shape) and c.shape[0] != 1 and not np.all(c == c[:1]):
            return tuple(shape)
    return (1,) + tuple(shape[1:])


def _is_chain_op(graph: Graph, value) -> bool:
    name = op_name(value)
    if name is None:
        return False
    if name in _UNARY or name in _BINARY or name in ("relax.where", "relax.astype", "relax.nn.prelu"):
        if name == "relax.nn.prelu" and graph.constant(value.args[1]) is None:
            return False
        if name == "relax.astype" and str(value.attrs.dtype) not in _EXACT_DTYPES:
            return False
        if name == "relax.astype" and str(value.attrs.dtype) == "bool":
            return False  # x != 0: not monotone
        return True
    return False


class _Roots:
    """The root of every elementwise sub-expression: the one tensor it is a function of (memoised)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.memo: dict = {}
        self.consts: list = []

    def __call__(self, expr):
        """The root of ``expr``: ``expr`` itself unless it is an exactly evaluable elementwise op of one tensor;
        None for a constant."""
        value = self.graph.value(expr)
        c = _constant_value(self.graph, expr)
        if c is not None:
            self.consts.append(c)
            return None
        key = value
        if key in self.memo:
            return self.memo[key]
        root = expr
        if _is_chain_op(self.graph, value):
            operands = [a for a in value.args if not isinstance(a, (tvm.tirx.FloatImm, tvm.tirx.IntImm))]
            if op_name(value) == "relax.nn.prelu":
                operands = operands[:1]
                self.consts.append(self.graph.constant(value.args[1]))
            subs = [r for r in (self(a) for a in operands) if r is not None]
            distinct = []
            for r in subs:
                if not any(r.same_as(d) for d in distinct):
                    distinct.append(r)
            if len(distinct) == 1:
                root = distinct[0]
        self.memo[key] = root
        return root


def _many_values(chain: Chain, element: int) -> str:
    """Why a chain is not 1-bit, in numbers: its values at 4097 inputs spread over the float32 order."""
    lo, hi = (k.reshape(-1)[element] for k in chain.domain())
    samples = np.linspace(lo, hi, 4097).astype(np.int64)
    values = []
    for k in samples:
        keys = np.full(chain.space, k, np.int64)
        values.append(float(np.asarray(chain.at(keys), np.float64).reshape(-1)[element]))
    distinct = np.unique(values)
    if distinct.size <= 8:
        return (f"it takes {distinct.size} values ({', '.join(_fmt(v) for v in distinct)}): not a 1-bit activation "
                f"(a {int(np.ceil(np.log2(distinct.size)))}-bit quantizer?)")
    span = "any float" if distinct[0] < -3e38 and distinct[-1] > 3e38 else \
        f"from {_fmt(distinct[0])} to {_fmt(distinct[-1])}"
    return (f"it is a float tensor computed by {describe(chain.graph.value(chain.top))} of "
            f"{describe(chain.graph.value(chain.root))}: it takes many values ({span}), not two")


def analyse_chain(graph: Graph, expr) -> BinaryTensor | None:
    """``expr`` as a two-valued function of a float tensor, or None when ``expr`` is not an elementwise chain.
    Raises :class:`Refused` when it is a chain but not a binarization."""
    value = graph.value(expr)
    if not _is_chain_op(graph, value):
        return None
    roots = _Roots(graph)
    root = roots(expr)
    if root is None or root.same_as(expr):
        return None  # constant, or an op of two different tensors: not a chain of one tensor
    if _dtype(root) != "float32":
        raise Refused(f"the activation is computed from {describe(graph.value(root))} of dtype {_dtype(root)}")
    space = _space(graph, root, roots.consts)
    while True:
        chain = Chain(graph, expr, root, space)
        if static_shape(expr) is None or tuple(static_shape(expr)[1:]) != tuple(chain.space[1:]):
            raise Refused("the binarizer broadcasts its input to a larger shape")
        if not np.any(chain.direction() == UNKNOWN):
            break
        # an op that is not monotone (a PReLU with a negative slope, a product of two activations): let TVM compute
        # it as a float tensor and analyse the ops above it, if it is a float32 tensor and not the whole chain
        cut = chain.culprit
        if cut is None or cut.same_as(expr) or _dtype(cut) != "float32" or static_shape(cut) != static_shape(root):
            why = describe(graph.value(cut)) if cut is not None else "an op"
            raise Refused(f"its values could not be determined exactly: {why} is not monotone in the activation")
        root = cut
    lo_k, hi_k = chain.domain()
    v_lo = np.asarray(chain.at(lo_k), np.float64)
    v_hi = np.asarray(chain.at(hi_k), np.float64)
    const = v_lo == v_hi
    t = first_true(lambda k: (np.asarray(chain.at(k), np.float64) != v_lo) | const, lo_k, hi_k)
    v_t = np.asarray(chain.at(t), np.float64)
    third = ~const & (v_t != v_hi)
    if np.any(third):
        raise Refused(_many_values(chain, int(np.flatnonzero(third.reshape(-1))[0])))
    values = np.unique(np.concatenate([v_lo.reshape(-1), v_hi.reshape(-1)]))
    if values.size == 1 and values[0] != 0:  # a constant (e.g. sign after a ReLU): the values +-v, one bit used
        values = np.array([-abs(values[0]), abs(values[0])])
    if values.size != 2:
        if values.size == 1:
            raise Refused(f"it is the constant {_fmt(values[0])}")
        raise Refused("its two values differ between elements (" + ", ".join(_fmt(v) for v in values[:4]) +
                      "): the activation scale must be one per tensor")
    low, high = float(values[0]), float(values[1])
    rising = ~const & (v_hi == high)
    falling = ~const & (v_lo == high)
    # rising: bit = x >= x_t; falling: bit = x < x_t = x <= prev(x_t) = -x >= -prev(x_t); constant: 0 >= 0 or 0 >= 1
    x_t, x_prev = from_key(t), from_key(t - 1)
    scale = np.where(rising, 1, np.where(falling, -1, 0)).astype(np.float32)
    threshold = np.where(rising, x_t, np.where(falling, -x_prev, np.where(v_lo == high, 0, 1))).astype(np.float32)
    return BinaryTensor(root, scale, threshold, low, high)
