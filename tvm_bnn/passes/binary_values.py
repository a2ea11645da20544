"""Which values can a tensor take, exactly? The analysis that recognises binarized activations.

A conv/dense input ``A`` is binarized when it is a function ``F`` of one float32 tensor ``x`` (the *root*) that takes
exactly two values, ``low < high``, and switches once: per element, ``x >= t`` or ``x > t`` selects ``high``. No list
of forms: ``F`` is whatever chain of elementwise ops the exporter wrote (compare and equality, where, cast, sign, abs,
clip/min/max of constants or of two functions of ``x``, relu-style clamps, round/floor/ceil, ``+ - * /`` by
constants or of two functions of ``x``, negation, ``*_like`` fills, smooth monotone functions such as tanh). It runs
in three steps, for every element of ``x`` at once:

1. **Pieces.** The ordered float32 line of ``x`` (as integer keys, ``float_order.py``) is split into pieces on which
   every op of the chain is monotone, bottom-up: an op keeps its operands' pieces and adds its own breakpoints,
   found exactly by bisection of a monotone operand within a piece: where it crosses 0 (``abs``, ``sign``: three
   pieces, a product or quotient of two functions, a negative leaky slope), where it crosses a constant (a
   comparison, ``==``, ``!=``: constant on each piece), where one operand crosses the other (``max``/``min`` or a
   comparison of two functions that move in opposite ways), where a ``where``'s condition switches. On each piece the
   op's direction follows from its operands' (a sum of two functions that move in opposite ways has none: that op
   is left to TVM as a float op, and the chain above it analysed).
2. **Values.** On each piece ``F`` is monotone: evaluated (in float32, op by op, as the model computes it) at the
   piece's ends, and where it changes, a bisection finds the first key with the new value, which must be the value
   at the piece's end (else ``F`` takes three values there). The segments are merged: a binarized activation takes
   two values and switches once. One that switches more than once (``|x| > 1``) or takes more values is refused,
   with that reason.
3. **The model's own zeros.** ``sign`` has three values, and ``sign(0) = 0`` is what the model computes. The tie
   rule (``sign(0)`` taken as +1, so that one bit holds it) is applied to a ``sign`` only where its input is 0 by
   chance: on at most a few floats of ``x`` (or only on values below 2^-100), none of which ``x`` takes exactly on
   a set the model makes (its *atoms*: ``atoms.py``: a ReLU's or a padding's zeros, an integer-valued binary conv's
   outputs). Where the chain's own ops make the zeros (``sign(relu(x))``: 0 on every ``x <= 0``) or the root has an
   atom there, ``sign(0) = 0`` is kept: ``{0, 1}`` then binarizes exactly through the layer's affine fold, and
   ``{-1, 0, 1}`` is refused.

Smooth monotone functions (tanh, sigmoid, erf, atan, asinh, sinh, exp) are computed differently by every library. The
analysis is run three times: with the correctly rounded value, and with it moved down and up by a few ulps (never
across its exact value at 0); only a result that is the same in all three (``sign(tanh(x))``: the switch is where
tanh is exactly 0) is accepted, otherwise refused with the reason.

The domain is the interval of float32 inputs where every intermediate is finite (found by bisection; beyond it the
model's binarizer itself overflows). NaN inputs are not analysed. Straight-through sums (``x + (sign(x) -
x).detach()``) are simplified to their binarizer beforehand (canonicalize.py).

The result is a :class:`BinaryTensor`: per element of ``x`` a packing test ``x * scale >= threshold`` (``scale`` +1
for a rising element, -1 for a falling one, 0 for a constant one) whose bit selects ``high``, the two values, and the
layout ops to re-apply.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from .atoms import NONE, TOP_OF, Atoms, point
from .describe import describe, render
from .float_order import MAX_KEY, first_true, from_key, negate_test, next_up, to_key
from .graph import Graph, op_name, static_shape, tensor_args

__all__ = ["BinaryTensor", "Chain", "LevelTensor", "ParityPlane", "Refused", "analyse_chain", "describe", "first_true",
           "from_key", "negate_test", "next_up", "to_key", "MAX_KEY"]

UNKNOWN = 2  # a direction that could not be established
MAX_LEVELS = 8  # an activation of up to this many equally spaced values (3 bits) is computed by bit planes
LEVEL_ROUNDING = 2.0 ** -20  # levels this close to equally spaced are (1/3 and 2/3 in float32 are, to rounding)
ROUNDING = 2.0 ** -18  # an op that maps a range this narrow (relative) to one value is rounding, not a clamp
TINY = 2.0 ** -100  # values this small are 0 by chance (a product that underflows)
ENVELOPE_ULPS = 4  # how far another library's smooth function may round from the correctly rounded value


class Refused(Exception):
    """The tensor is not recognised as binarized; the message says why, in the model's terms. ``values``: the
    distinct values it takes, when they are few and known (a 2-bit quantizer, a sign with its zeros)."""

    def __init__(self, message, values=None):
        super().__init__(message)
        self.values = values


# ------------------------------------------------------------------------------------------------ the op table


def _scalar_arg(arg):
    """A scalar attribute-like argument (clip's bounds are PrimExprs in Relax)."""
    return float(arg.value)


def _clip(v, c):
    lo, hi = (np.asarray(_scalar_arg(a), v.dtype) for a in c.args[1:3])
    return np.minimum(np.maximum(v, lo), hi)


def _erf(v):
    return np.vectorize(math.erf, otypes=[np.float64])(v)


# name -> (kind, numpy evaluation of the operand(s)); the kinds have their piece rules in Chain._rule
_UNARY = {
    "relax.sign": np.sign,  # three values; the tie rule is applied per element where it may be (Chain._sign)
    "relax.negative": np.negative,
    "relax.abs": np.abs,
    "relax.nn.relu": lambda v: np.maximum(v, np.zeros((), v.dtype)),
    "relax.nn.relu6": lambda v: np.minimum(np.maximum(v, np.zeros((), v.dtype)), np.asarray(6, v.dtype)),
    "relax.floor": np.floor,
    "relax.ceil": np.ceil,
    "relax.round": np.round,  # ties to even, as TVM's, ONNX's and PyTorch's
    "relax.trunc": np.trunc,
    "relax.logical_not": np.logical_not,
    "relax.square": lambda v: v * v,
}
_KIND = {"relax.sign": "sign", "relax.negative": "dec", "relax.logical_not": "dec", "relax.abs": "abs",
         "relax.square": "square", "relax.nn.leakyrelu": "leaky", "relax.nn.prelu": "leaky", "relax.clip": "inc",
         "relax.astype": "cast", "relax.add": "sum", "relax.subtract": "sum", "relax.multiply": "mul",
         "relax.divide": "div", "relax.maximum": "extremum", "relax.minimum": "extremum", "relax.where": "where",
         "relax.logical_and": "logical", "relax.logical_or": "logical", "relax.logical_xor": "logical"}
for _n in ("relax.nn.relu", "relax.nn.relu6", "relax.floor", "relax.ceil", "relax.round", "relax.trunc"):
    _KIND[_n] = "inc"
_COMPARE = {"relax.greater": np.greater, "relax.greater_equal": np.greater_equal, "relax.less": np.less,
            "relax.less_equal": np.less_equal, "relax.equal": np.equal, "relax.not_equal": np.not_equal}
_KIND.update({n: "compare" for n in _COMPARE})
_BINARY = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
           "relax.divide": np.divide, "relax.maximum": np.maximum, "relax.minimum": np.minimum,
           "relax.logical_and": np.logical_and, "relax.logical_or": np.logical_or,
           "relax.logical_xor": np.logical_xor, **_COMPARE}


@dataclass(frozen=True)
class Smooth:
    """A monotone increasing function that libraries round differently; exact only at ``x0`` (value ``y0``).
    ``strict``: f(x) != y0 for x != x0 in every faithful implementation (tanh(1e-40) is not 0; sigmoid(1e-9) is
    0.5)."""

    fn: object
    x0: float
    y0: float
    strict: bool
    lo: float
    hi: float


_SMOOTH = {
    "relax.tanh": Smooth(np.tanh, 0.0, 0.0, True, -1.0, 1.0),
    "relax.sigmoid": Smooth(lambda v: 1.0 / (1.0 + np.exp(-v)), 0.0, 0.5, False, 0.0, 1.0),
    "relax.erf": Smooth(_erf, 0.0, 0.0, True, -1.0, 1.0),
    "relax.atan": Smooth(np.arctan, 0.0, 0.0, True, -np.pi / 2, np.pi / 2),
    "relax.asinh": Smooth(np.arcsinh, 0.0, 0.0, True, -np.inf, np.inf),
    "relax.sinh": Smooth(np.sinh, 0.0, 0.0, True, -np.inf, np.inf),
    "relax.exp": Smooth(np.exp, 0.0, 1.0, False, 0.0, np.inf),
}
_KIND.update({n: "inc" for n in _SMOOTH})
_FILLS = ("relax.ones_like", "relax.zeros_like", "relax.full_like", "relax.ones", "relax.zeros", "relax.full")
_EXACT_DTYPES = ("float32", "float16", "float64", "bool", "int8", "int16", "int32", "int64", "uint8")


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


def _times(d, s):
    """Direction ``d`` times a sign ``s`` in {-1, 0, 1} (UNKNOWN stays UNKNOWN unless s is 0)."""
    d, s = np.asarray(d, np.int8), np.asarray(s, np.int8)
    return np.where(s == 0, 0, np.where(d == UNKNOWN, UNKNOWN, d * s)).astype(np.int8)


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


def _is_chain_op(graph: Graph, value) -> bool:
    name = op_name(value)
    if name is None or (name not in _KIND):
        return False
    if name == "relax.nn.prelu" and graph.constant(value.args[1]) is None:
        return False
    if name == "relax.astype" and str(value.attrs.dtype) not in _EXACT_DTYPES:
        return False
    return True


# --------------------------------------------------------------------------------------------------- the chain


class Chain:
    """The elementwise function ``F`` from ``root`` to ``top``, element by element over the "x-space": the root's
    shape reduced to the axes along which a constant of the chain (or the root's atoms) varies; batch 1 when none
    varies along the batch. Arrays of keys and values have the x-space shape, or a leading axis of pieces before it.

    ``atoms``: the root's exact values (the tie rule is not applied at them); ``envelope``: -1, 0 or +1, the smooth
    functions rounded down, correctly or up (see the module docstring)."""

    def __init__(self, graph: Graph, top, root, space: tuple, atoms: Atoms = NONE, envelope: int = 0):
        self.graph, self.top, self.root, self.space = graph, top, root, tuple(space)
        self.atoms, self.envelope = atoms, envelope
        self.ties: dict = {}  # sign node -> per element: sign(0) taken as +1 there
        self.exact_zeros: dict = {}  # sign node -> (element index, lo, hi): where the model makes its input 0
        self.smooth: list = []  # smooth ops met (their results must not depend on rounding)
        self._pieces: dict = {}
        self._consts: dict = {}  # expr -> its constant value (or None): evaluation asks thousands of times
        self._domain = None
        self.culprit = None  # the deepest op whose direction could not be established

    # -- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, x: np.ndarray, expr=None, memo=None):
        """``F`` (or the sub-expression ``expr``) at the float32 inputs ``x`` (x-space shape, optionally with
        leading axes)."""
        expr = self.top if expr is None else expr
        memo = {} if memo is None else memo
        key = self.graph.value(expr)
        if key in memo:
            return memo[key]
        if self._is_root(expr):
            out = x
        else:
            out = self._const(expr)
            if out is None:
                with np.errstate(all="ignore"):
                    out = self._eval_call(self.graph.value(expr), x, memo, expr)
        memo[key] = out
        return out

    def at(self, keys, expr=None):
        """The function at the float32 values of ``keys``."""
        return self.evaluate(from_key(keys), expr)

    def _is_root(self, expr) -> bool:
        return expr.same_as(self.root) or self.graph.value(expr).same_as(self.graph.value(self.root))

    def _const(self, expr):
        if expr in self._consts:
            return self._consts[expr]
        c = _constant_value(self.graph, expr)
        if c is not None and self.space and c.ndim == len(self.space) and self.space[0] == 1 and c.shape[0] > 1:
            c = c[:1]  # uniform along the batch (see _space)
        self._consts[expr] = c
        return c

    def _operand(self, arg, x, memo):
        c = self._const(arg)
        return c if c is not None else self.evaluate(x, arg, memo)

    def _eval_call(self, value, x, memo, expr):
        name = op_name(value)
        dtype = _dtype(expr)
        if name in _SMOOTH:
            v = self.evaluate(x, value.args[0], memo)
            return self._smooth(_SMOOTH[name], v).astype(dtype)
        if name == "relax.sign":
            v = self.evaluate(x, value.args[0], memo)
            tie = self.ties.get(self.graph.value(expr))
            out = np.sign(v)
            if tie is not None:
                out = np.where(tie & (v == 0), np.ones((), v.dtype), out)
            return out.astype(v.dtype)
        if name in _UNARY:
            return _UNARY[name](self.evaluate(x, value.args[0], memo)).astype(dtype)
        if name == "relax.clip":
            return _clip(self.evaluate(x, value.args[0], memo), value)
        if name == "relax.astype":
            return self.evaluate(x, value.args[0], memo).astype(dtype)
        if name in ("relax.nn.leakyrelu", "relax.nn.prelu"):
            v = self.evaluate(x, value.args[0], memo)
            slope = self._slope(value)
            return np.where(v > 0, v, v * slope).astype(dtype)
        if name == "relax.where":
            c, a, b = (self._operand(arg, x, memo) for arg in value.args)
            return np.where(c, a, b).astype(dtype)
        a, b = (self._operand(arg, x, memo) for arg in value.args[:2])
        return np.asarray(_BINARY[name](a, b)).astype(dtype)

    def _slope(self, value):
        if op_name(value) == "relax.nn.leakyrelu":
            return np.float32(float(value.attrs.alpha))
        slope = self.graph.constant(value.args[1]).astype(np.float32)
        shape = [1] * len(self.space)
        shape[int(value.attrs.axis)] = -1
        return slope.reshape(shape) if slope.size > 1 else slope.reshape(())

    def _smooth(self, op: Smooth, v):
        """``op`` at ``v``: correctly rounded, or moved by a few ulps (``envelope``) without crossing its exact
        value at ``x0`` (where it is ``y0`` exactly, in every library)."""
        if op not in self.smooth:
            self.smooth.append(op)
        v64 = np.asarray(v, np.float64)
        y = np.asarray(op.fn(v64), np.float64)
        if self.envelope:
            delta = ENVELOPE_ULPS * (2.0 ** -24 * np.abs(y) + 2.0 ** -149)
            y = y + self.envelope * delta
            above, below = v64 > op.x0, v64 < op.x0
            y0 = np.float64(op.y0)
            up = float(next_up(np.float32(op.y0))) if op.strict else y0
            down = float(-next_up(np.float32(-op.y0))) if op.strict else y0
            y = np.where(above, np.maximum(y, up), np.where(below, np.minimum(y, down), y0))
            y = np.clip(y, op.lo, op.hi)
        return y.astype(np.float32)

    # -- the domain ----------------------------------------------------------------------------------------------
    def domain(self):
        """Per element, the keys [lo, hi] of the inputs for which every intermediate value of the chain is finite
        (and no sigmoid or exp underflows to 0): beyond them the model's own binarizer overflows (a BatchNorm scale
        times 3e38), which real activations never reach. Each node is finite on an interval around 0 (checked at
        0)."""
        if self._domain is None:
            zero = np.zeros(self.space, np.int64)
            if not np.all(self.finite(zero)):
                raise Refused("the binarizer is not finite at 0")
            # both ends in one bisection: the first finite key from -max up, and (negated) from +max down
            sides = np.array([1, -1]).reshape((2,) + (1,) * len(self.space))
            ends = first_true(lambda k: self.finite(k * sides), np.full((2,) + self.space, -MAX_KEY),
                              np.zeros((2,) + self.space, np.int64))
            self._domain = ends[0], -ends[1]
        return self._domain

    def finite(self, keys) -> np.ndarray:
        """Per element: is every floating-point intermediate of the chain finite at these inputs?"""
        memo = {}
        self.evaluate(from_key(keys), memo=memo)
        ok = np.ones(np.shape(keys), bool)
        for node, value in memo.items():
            value = np.asarray(value)
            if value.dtype.kind == "f":
                ok &= np.broadcast_to(np.isfinite(value), ok.shape)
                smooth = _SMOOTH.get(op_name(node))
                if smooth is not None and smooth.lo == 0:  # sigmoid(-200), exp(-200): underflowed, a model's edge too
                    ok &= np.broadcast_to(value > 0, ok.shape)
        return ok

    # -- pieces --------------------------------------------------------------------------------------------------
    def _full(self, a, dtype=None):
        return np.broadcast_to(np.asarray(a, dtype), self.space).copy()

    def _ends(self, starts):
        """The last key of every piece (< its start for an empty piece)."""
        _, hi = self.domain()
        return np.concatenate([starts[1:] - 1, hi[None]], axis=0)

    def _merge(self, *arrays):
        """Sorted piece starts from several arrays of breakpoints (duplicates become empty pieces past hi)."""
        lo, hi = self.domain()
        s = np.concatenate([np.broadcast_to(a, a.shape[:1] + self.space) for a in arrays], axis=0)
        s = np.sort(np.clip(s, lo, hi + 1), axis=0)
        dup = np.zeros(s.shape, bool)
        dup[1:] = s[1:] == s[:-1]
        s = np.sort(np.where(dup, hi + 1, s), axis=0)
        keep = np.any(s <= hi, axis=tuple(range(1, s.ndim)))
        keep[0] = True
        return s[keep]

    def _lookup(self, expr, starts):
        """The direction of ``expr`` on each piece that ``starts`` begins (a refinement of its own pieces)."""
        own, dirs = self.pieces(expr)
        idx = np.maximum((own[:, None] <= starts[None]).sum(axis=0) - 1, 0)
        return np.take_along_axis(dirs, idx, axis=0)

    def _sign_at(self, expr, starts):
        """sign(expr) at the start of each piece (constant on the piece when it was split at expr's zeros)."""
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(np.sign(np.asarray(self.at(starts, expr), np.float64))).astype(np.int8)

    def _operand_pieces(self, arg):
        if self._const(arg) is not None:
            lo, _ = self.domain()
            return lo[None], np.zeros((1,) + self.space, np.int8)
        return self.pieces(arg)

    def crossing(self, expr, c):
        """Per piece of ``expr``: the first keys where it reaches ``c`` and where it passes it ((k0, k1); the
        piece's start for a constant or undetermined piece): the points that split it into < c, == c, > c."""
        starts, dirs = self._operand_pieces(expr)
        ends = self._ends(starts)
        c = np.asarray(c, np.float64)
        inc, dec = dirs == 1, dirs == -1

        strict = np.array([False, True]).reshape((2,) + (1,) * starts.ndim)  # k0 and k1 in one bisection

        def pred(k):
            v = np.asarray(self.at(k, expr), np.float64)
            above = np.where(strict, v > c, v >= c)
            below = np.where(strict, v < c, v <= c)
            return np.where(inc, above, np.where(dec, below, True))

        k = first_true(pred, np.broadcast_to(starts, (2,) + starts.shape), np.broadcast_to(ends + 1, (2,) +
                                                                                           starts.shape))
        return k[0], k[1]

    def crossing2(self, a, b):
        """Where ``a`` reaches and passes ``b`` when ``a - b`` is monotone on the common pieces of both:
        (starts, direction of a - b, k0, k1)."""
        sa, _ = self._operand_pieces(a)
        sb, _ = self._operand_pieces(b)
        starts = self._merge(sa, sb)
        da, db = self._dir_of(a, starts), self._dir_of(b, starts)
        dd = _combine(da, _flip(db))
        ends = self._ends(starts)

        strict = np.array([False, True]).reshape((2,) + (1,) * starts.ndim)

        def pred(k):
            va = np.asarray(self.at(k, a), np.float64)
            vb = np.asarray(self.at(k, b), np.float64)
            above = np.where(strict, va > vb, va >= vb)
            below = np.where(strict, va < vb, va <= vb)
            return np.where(dd == 1, above, np.where(dd == -1, below, True))

        k = first_true(pred, np.broadcast_to(starts, (2,) + starts.shape), np.broadcast_to(ends + 1, (2,) +
                                                                                           starts.shape))
        return starts, dd, k[0], k[1]

    def _dir_of(self, arg, starts):
        if self._const(arg) is not None:
            return np.zeros(starts.shape, np.int8)
        return self._lookup(arg, starts)

    def pieces(self, expr=None):
        """(starts, directions): ``expr`` is monotone on each piece [starts[i], starts[i+1]) of the float32 keys,
        non-decreasing (+1), non-increasing (-1), constant (0) or undetermined (UNKNOWN)."""
        expr = self.top if expr is None else expr
        key = self.graph.value(expr)
        if key in self._pieces:
            return self._pieces[key]
        lo, hi = self.domain()
        if self._is_root(expr):
            result = lo[None], np.ones((1,) + self.space, np.int8)
        elif self._const(expr) is not None:
            result = lo[None], np.zeros((1,) + self.space, np.int8)
        else:
            starts, dirs = self._rule(self.graph.value(expr), expr)
            ends = self._ends(starts)
            dirs = np.where(ends <= starts, 0, dirs).astype(np.int8)  # one key (or none): constant
            if np.any(dirs == UNKNOWN) and self.culprit is None:  # children first: the deepest such op
                self.culprit = expr
            result = starts, dirs
        self._pieces[key] = result
        return result

    def _rule(self, value, expr):
        name = op_name(value)
        kind = _KIND[name]
        args = [a for a in value.args if isinstance(a, relax.Expr)]
        if kind in ("inc", "dec", "cast") or (kind == "leaky" and np.all(self._slope(value) >= 0)):
            if kind == "cast" and str(value.attrs.dtype) == "bool":
                return self._constant_between(self.crossing(args[0], 0.0), args[0])
            starts, dirs = self.pieces(args[0])
            return starts, (_flip(dirs) if kind == "dec" else dirs)
        if kind in ("abs", "leaky", "square"):
            q = args[0]
            starts = self._merge(self.pieces(q)[0], *self.crossing(q, 0.0))
            dq, sq = self._lookup(q, starts), self._sign_at(q, starts)
            if kind == "abs":
                return starts, _times(dq, sq)
            if kind == "square":
                return starts, _times(dq, sq)
            slope = np.sign(np.broadcast_to(self._slope(value), self.space)).astype(np.int8)
            return starts, np.where(sq > 0, dq, _times(dq, slope)).astype(np.int8)
        if kind == "sign":
            return self._sign(value, expr, args[0])
        if kind == "compare":
            consts = [self._const(a) is not None for a in args]
            if consts[0] or consts[1]:
                q, c = (args[1], self._const(args[0])) if consts[0] else (args[0], self._const(args[1]))
                return self._constant_between(self.crossing(q, c), q)
            starts, dd, k0, k1 = self.crossing2(args[0], args[1])
            starts2 = self._merge(starts, k0, k1)
            dd2 = np.take_along_axis(dd, np.maximum((starts[:, None] <= starts2[None]).sum(0) - 1, 0), 0)
            return starts2, np.where(dd2 == UNKNOWN, UNKNOWN, 0).astype(np.int8)
        if kind == "logical":
            splits = []
            for a in args:
                if self._const(a) is None:
                    splits += [self.pieces(a)[0], *self.crossing(a, 0.5)]
            starts = self._merge(*splits)
            unknown = np.zeros(starts.shape, bool)
            for a in args:
                unknown |= self._dir_of(a, starts) == UNKNOWN
            return starts, np.where(unknown, UNKNOWN, 0).astype(np.int8)
        if kind == "where":
            cond, a, b = args
            parts = [self._operand_pieces(x)[0] for x in (a, b)]
            if self._const(cond) is None:
                parts += [self.pieces(cond)[0], *self.crossing(cond, 0.5)]
            starts = self._merge(*parts)
            c = np.broadcast_to(np.asarray(self.at(starts, cond), bool), starts.shape)
            d = np.where(c, self._dir_of(a, starts), self._dir_of(b, starts))
            if self._const(cond) is None:
                d = np.where(self._dir_of(cond, starts) == UNKNOWN, UNKNOWN, d)
            return starts, d.astype(np.int8)
        return self._arith(kind, name, args)

    def _constant_between(self, ks, q):
        """A boolean of ``q`` against a constant: constant on each piece split at (k0, k1)."""
        starts = self._merge(self.pieces(q)[0], *ks)
        return starts, np.where(self._lookup(q, starts) == UNKNOWN, UNKNOWN, 0).astype(np.int8)

    def _arith(self, kind, name, args):
        a, b = args[:2]
        ca, cb = self._const(a), self._const(b)
        if ca is None and cb is None:
            return self._two_variables(kind, name, a, b)
        var, c = (a, cb) if cb is not None else (b, ca)
        starts, dq = self.pieces(var)
        c = np.asarray(c, np.float64)
        if kind == "sum":
            return starts, (_flip(dq) if name == "relax.subtract" and var is b else dq)
        if kind == "extremum":
            return starts, dq
        finite = np.broadcast_to(np.isfinite(c), self.space)
        sc = np.broadcast_to(np.sign(np.nan_to_num(c)), self.space).astype(np.int8)
        if kind == "mul" or var is a:  # x * c, x / c
            bad = ~finite | ((sc == 0) if kind == "div" else False)
            return starts, np.where(bad, UNKNOWN, _times(dq, sc)).astype(np.int8)
        # c / x: split where x crosses 0; there it is infinite, which the domain cannot exclude: undetermined
        starts = self._merge(starts, *self.crossing(var, 0.0))
        dq, sq = self._lookup(var, starts), self._sign_at(var, starts)
        return starts, np.where((sq == 0) | ~finite, UNKNOWN, _times(dq, -sc)).astype(np.int8)

    def _two_variables(self, kind, name, a, b):
        if kind in ("sum", "extremum"):
            starts = self._merge(self.pieces(a)[0], self.pieces(b)[0])
            da, db = self._lookup(a, starts), self._lookup(b, starts)
            if kind == "sum":
                return starts, _combine(da, _flip(db) if name == "relax.subtract" else db)
            same = _combine(da, db)
            if not np.any(same == UNKNOWN):
                return starts, same
            # opposite directions: split where one overtakes the other; each piece takes one operand
            s0, dd, k0, k1 = self.crossing2(a, b)
            starts = self._merge(s0, k0, k1)
            da, db = self._lookup(a, starts), self._lookup(b, starts)
            va, vb = (np.asarray(self.at(starts, x), np.float64) for x in (a, b))
            first = (va > vb) if name == "relax.maximum" else (va < vb)
            second = (va < vb) if name == "relax.maximum" else (va > vb)
            d = np.where(first, da, np.where(second, db, _combine(da, db)))
            d = np.where((va == vb) & (_combine(da, db) == UNKNOWN), 0, d)  # equal on a piece: both constant
            return starts, d.astype(np.int8)
        # a product or quotient of two functions: split where either crosses 0; the signs then fix the direction
        starts = self._merge(self.pieces(a)[0], self.pieces(b)[0], *self.crossing(a, 0.0), *self.crossing(b, 0.0))
        da, db = self._lookup(a, starts), self._lookup(b, starts)
        sa, sb = self._sign_at(a, starts), self._sign_at(b, starts)
        if kind == "mul":
            return starts, _combine(_times(da, sb), _times(db, sa))
        d = _combine(_times(da, sb), _times(db, -sa))
        return starts, np.where(sb == 0, UNKNOWN, d).astype(np.int8)

    def _sign(self, value, expr, q):
        """sign(q): three constant pieces per monotone piece of q. Decides, per element, whether q is 0 only by
        chance there (the tie rule applies) or on a set the model makes (sign(0) = 0 is kept)."""
        k0, k1 = self.crossing(q, 0.0)
        qs, qd = self._operand_pieces(q)
        ends = self._ends(qs)
        const_zero = (qd == 0) & (ends >= qs) & (np.asarray(self.at(qs, q), np.float64) == 0)
        z0 = np.where(const_zero, qs, np.where((qd == 1) | (qd == -1), k0, qs))
        z1 = np.where(const_zero, ends + 1, np.where((qd == 1) | (qd == -1), k1, qs))
        has = z1 > z0
        x0, x1 = from_key(z0).astype(np.float64), from_key(np.maximum(z1 - 1, z0)).astype(np.float64)
        tiny = (np.abs(x0) <= TINY) & (np.abs(x1) <= TINY)
        hit = self.atoms.contains(x0, x1)
        chance = ~has | ((tiny | ~self._flattened(q, z0, np.maximum(z1 - 1, z0))) & ~hit)
        tie = np.all(chance, axis=0)
        self.ties[self.graph.value(expr)] = tie
        if not np.all(tie):
            bad = ~chance
            e = int(np.flatnonzero(np.any(bad, axis=0).reshape(-1))[0])
            p = int(np.flatnonzero(bad.reshape(bad.shape[0], -1)[:, e])[0])
            why = self.atoms.why if hit.reshape(hit.shape[0], -1)[p, e] else ""
            self.exact_zeros[self.graph.value(expr)] = (x0.reshape(x0.shape[0], -1)[p, e],
                                                        x1.reshape(x1.shape[0], -1)[p, e], why)
        starts = self._merge(qs, k0, k1, z0, z1)
        return starts, np.where(self._dir_of(q, starts) == UNKNOWN, UNKNOWN, 0).astype(np.int8)

    def _flattened(self, q, k0, k1) -> np.ndarray:
        """Per piece: is ``q`` constant on the keys [k0, k1] because an op of its chain maps a range of its operand
        wider than its rounding to one value (a ReLU's negatives, a floor's [0, 1))? A range of a few ulps of the
        operand (``x - m`` absorbing the last bits of x) is rounding, not the model's choice."""
        lo_memo, hi_memo = {}, {}
        self.evaluate(from_key(k0), q, lo_memo)
        self.evaluate(from_key(k1), q, hi_memo)
        out = np.zeros(np.shape(k0), bool)
        for node, v0 in lo_memo.items():
            if not isinstance(node, relax.Call):
                continue
            v0, v1 = np.asarray(v0, np.float64), np.asarray(hi_memo[node], np.float64)
            constant = v0 == v1
            out_mag = np.abs(v0)
            operands = [self.graph.value(a) for a in node.args if isinstance(a, relax.Expr)]
            flags = []
            for o in operands:
                if o not in lo_memo:
                    flags.append(np.zeros((), bool))  # a constant operand
                    continue
                o0, o1 = np.asarray(lo_memo[o], np.float64), np.asarray(hi_memo[o], np.float64)
                if not (np.all(np.isfinite(o0)) and np.all(np.isfinite(o1))):
                    o0, o1 = np.nan_to_num(o0), np.nan_to_num(o1)
                mag = np.maximum(np.abs(o0), np.abs(o1))  # absorbed by a larger result (x + 1000): rounding too
                rounding = (np.abs(o1 - o0) <= ROUNDING * np.maximum(mag, out_mag)) | (mag <= TINY)
                flags.append((o0 != o1) & ~rounding)
            if op_name(node) == "relax.where" and len(flags) == 3:
                chosen = np.asarray(lo_memo.get(operands[0], self._const(node.args[0])), bool)
                wide = np.where(chosen, flags[1], flags[2]) | flags[0]
            else:
                wide = np.zeros((), bool)
                for f in flags:
                    wide = wide | f
            out = out | (constant & wide)
        return out

    # -- values --------------------------------------------------------------------------------------------------
    def segments(self, max_switches: int = 1):
        """Per element, F as a step function: (starts, values, valid), sorted by start; consecutive valid entries
        with equal values are one segment. On each monotone piece up to ``max_switches`` changes are found (one
        bisection each, from the last); Refused when F takes more values in one piece."""
        starts, dirs = self.pieces()
        ends = self._ends(starts)
        empty = ends < starts
        last = np.maximum(ends, starts)
        value = np.asarray(self.at(starts), np.float64)
        v_end = np.asarray(self.at(last), np.float64)
        seg_starts, seg_vals, valid = [starts], [value], [~empty]
        cur, active = starts, ~empty & (dirs != 0) & (value != v_end)
        for _ in range(max_switches):
            if not np.any(active):
                break
            v_cur = value
            t = first_true(lambda k: (np.asarray(self.at(k), np.float64) != v_cur) | ~active, cur, last)
            v_t = np.asarray(self.at(t), np.float64)
            seg_starts.append(t)
            seg_vals.append(v_t)
            valid.append(active)
            cur, value = np.where(active, t, cur), np.where(active, v_t, value)
            active = active & (value != v_end)
        if np.any(active):
            raise self._many_values(int(np.flatnonzero(np.any(active, axis=0).reshape(-1))[0]))
        seg_starts, seg_vals, valid = (np.concatenate(a, axis=0) for a in (seg_starts, seg_vals, valid))
        order = np.argsort(np.where(valid, seg_starts, np.iinfo(np.int64).max), axis=0, kind="stable")
        seg_starts, seg_vals, valid = (np.take_along_axis(a, order, 0) for a in (seg_starts, seg_vals, valid))
        return seg_starts, seg_vals, valid

    def _many_values(self, element: int) -> Refused:
        """Why a chain is not 1-bit, in numbers: its values at the pieces' ends and 4097 inputs in between."""
        lo, hi = (k.reshape(-1)[element] for k in self.domain())
        starts, _ = self.pieces()
        flat = starts.reshape(starts.shape[0], -1)[:, element]
        samples = np.unique(np.concatenate([np.linspace(lo, hi, 4097).astype(np.int64), flat, flat - 1]))
        samples = samples[(samples >= lo) & (samples <= hi)]
        keys = np.broadcast_to(samples.reshape((-1,) + (1,) * len(self.space)), (samples.size,) + self.space)
        values = np.asarray(self.at(keys), np.float64).reshape(samples.size, -1)[:, element]
        distinct = np.unique(values[~np.isnan(values)])
        zeros = self._exact_zero_note()
        if distinct.size <= 8:
            return Refused(f"it takes {distinct.size} values ({', '.join(_fmt(v) for v in distinct)}): not a 1-bit "
                           f"activation (a {int(np.ceil(np.log2(distinct.size)))}-bit quantizer?){zeros}", distinct)
        span = "any float" if distinct[0] < -3e38 and distinct[-1] > 3e38 else \
            f"from {_fmt(distinct[0])} to {_fmt(distinct[-1])}"
        return Refused(f"it is a float tensor computed by {describe(self.graph.value(self.top), self.graph, self.root)}"
                       f", x = {describe(self.graph.value(self.root))}: it takes many values ({span}), not two "
                       f"(nor up to {MAX_LEVELS} levels, computed by bit planes)")

    def _exact_zero_note(self) -> str:
        for sign, (x0, x1, why) in self.exact_zeros.items():
            where = f"x = {_fmt(x0)}" if x0 == x1 else f"x in [{_fmt(x0)}, {_fmt(x1)}]"
            cause = why or "where the chain's own ops make exact zeros"
            return (f"; {describe(sign, self.graph, self.root)} is exactly 0 for {where} ({cause}), and "
                    "sign(0) = 0 is what the model computes there (the tie rule is only for inputs that are 0 by "
                    "chance)")
        return ""


def _fmt(v) -> str:
    return f"{float(v) + 0.0:.6g}"  # -0 prints as 0


# ----------------------------------------------------------------------------------------------- the result


@dataclass
class BinaryTensor:
    """``post(where(x * scale >= threshold, high, low))``: a two-valued tensor, and how to compute its bits.

    ``scale``/``threshold`` are float32 arrays over the root's shape (batch 1 when uniform along it); ``post`` the
    layout calls to re-apply, innermost first; ``pad`` a constant pad applied last: ((top, left, bottom, right),
    value)."""

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
    def values(self) -> list:
        return [self.low, self.high]

    bits = 1

    @property
    def mid(self) -> float:
        return (self.high + self.low) / 2

    def replace(self, **kw) -> "BinaryTensor":
        return dataclasses.replace(self, **kw)


@dataclass
class LevelTensor:
    """``post(lo + step * sum_j [x * scales[j] >= thresholds[j]])``: a few-level activation (a 2-bit quantizer, a
    sign with the model's own zeros), ``levels`` values ``lo + step * m`` set by a thermometer of threshold tests on
    the float tensor ``x``: plane j (j = 1 .. levels - 1) is ``m >= j``. Every plane is a two-valued tensor with the
    same layout ops and padding (:meth:`planes`): a conv of the activation is the sum of binary convs of its planes,
    each exact."""

    root: relax.Expr
    scales: list
    thresholds: list
    lo: float
    step: float
    post: list = field(default_factory=list)
    pad: tuple | None = None

    @property
    def levels(self) -> int:
        return len(self.scales) + 1

    @property
    def values(self) -> list:
        return [self.lo + self.step * m for m in range(self.levels)]

    @property
    def bits(self) -> int:
        return int(np.ceil(np.log2(self.levels)))

    def replace(self, **kw) -> "LevelTensor":
        return dataclasses.replace(self, **kw)

    def planes(self) -> list:
        """The two-valued planes whose sum is the tensor: the first takes {lo, lo + step}, the others {0, step}; a
        constant padding value ``lo + step * m`` is split so that the planes' padding sums to it (0 pads each with 0).
        """
        pad_level = None
        if self.pad is not None:
            widths, value = self.pad
            if value != 0:
                m = (value - self.lo) / self.step
                if not float(m).is_integer() or not 0 <= m < self.levels:
                    raise Refused(f"it is padded with {value:g}, which is neither 0 nor one of its values "
                                  f"{', '.join(_fmt(v) for v in self.values)}")
                pad_level = int(m)

        def plane_pad(on, low, high):  # a plane's padding: 0 (zero padding), or its value at the padding level
            if self.pad is None:
                return None
            return self.pad[0], 0.0 if pad_level is None else (high if on(pad_level) else low)

        steps = []  # the thermometer: plane j is m >= j
        for j, (scale, threshold) in enumerate(zip(self.scales, self.thresholds), start=1):
            low, high = (self.lo, self.lo + self.step) if j == 1 else (0.0, self.step)
            pad = plane_pad(lambda m: m >= j, low, high)
            steps.append(BinaryTensor(self.root, scale, threshold, low, high, list(self.post), pad))
        if self.bits >= len(steps):
            return steps
        # the binary code, fewer planes: bit b of m is the parity of the steps j where bit b changes (m >= j rises
        # through them in order), so each plane's packed bits are the XOR of those steps' packed bits
        out = []
        for b in range(self.bits):
            low, high = (self.lo, self.lo + self.step) if b == 0 else (0.0, self.step * 2 ** b)
            pad = plane_pad(lambda m: m >> b & 1, low, high)
            tests = [steps[j - 1] for j in range(1, self.levels) if (j >> b & 1) != ((j - 1) >> b & 1)]
            out.append(ParityPlane(tests, low, high, pad))
        return out


@dataclass
class ParityPlane:
    """A two-valued plane of a few-level tensor in the binary code: its bit is the XOR of the bits of ``tests``
    (thermometer planes of the same root and layout; their own two values are not used), ``high`` when set."""

    tests: list
    low: float
    high: float
    pad: tuple | None = None
    bits = 1

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2

    @property
    def mid(self) -> float:
        return (self.high + self.low) / 2

    @property
    def values(self) -> list:
        return [self.low, self.high]


def _space(root_shape: tuple, arrays) -> tuple:
    """The x-space: the root's shape, reduced to 1 along every axis no constant (or atom array) varies along."""
    if not root_shape:
        return ()
    ndim = len(root_shape)
    space = [1] * ndim
    for c in arrays:
        c = np.asarray(c)
        if c.size == 1:
            continue  # a scalar, whatever its rank
        if c.ndim > ndim:
            raise Refused("the binarizer broadcasts its input to a larger shape")
        shape = (1,) * (ndim - c.ndim) + c.shape
        for i, d in enumerate(shape):
            if d == 1 or space[i] != 1:
                continue
            if i == 0 and np.all(c == c[:1]):
                continue  # uniform along the batch
            space[i] = root_shape[i]
    return tuple(space)


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


def _constant_pad(graph: Graph, root):
    value = graph.value(root)
    if op_name(value) == "relax.nn.pad" and str(value.attrs.pad_mode) == "constant" and any(
            int(w) for w in value.attrs.pad_width):  # a zero-width pad pads nothing: its input's values only
        return value
    return None


def analyse_chain(graph: Graph, expr, atoms_of=None) -> BinaryTensor | None:
    """``expr`` as a two-valued function of a float tensor, or None when ``expr`` is not an elementwise chain.
    Raises :class:`Refused` when it is a chain but not a binarization. ``atoms_of(expr)``: the exact values of a
    tensor (atoms.py); without it, the root has none."""
    value = graph.value(expr)
    if not _is_chain_op(graph, value):
        return None
    roots = _Roots(graph)
    root = roots(expr)
    if root is None or root.same_as(expr):
        return None  # constant, or an op of two different tensors: not a chain of one tensor
    if _dtype(root) != "float32":
        raise Refused(f"the activation is computed from {describe(graph.value(root))} of dtype {_dtype(root)}")
    if static_shape(expr) is None or static_shape(root) is None:
        raise Refused("the activation has a dynamic shape")
    if tuple(static_shape(expr)) != tuple(static_shape(root)):
        raise Refused("the binarizer broadcasts its input to a larger shape")
    pad = _constant_pad(graph, root)
    if pad is None:
        return _analyse_from(graph, expr, root, roots.consts, atoms_of, through_pad=False)
    # a chain of a constant pad: the padded tensor packed whole (the padding's bits from the same test, exact when
    # the test agrees with the model at the padding value), or else F(pad(y, v)) = pad(F(y), F(v))
    try:
        return _analyse_from(graph, expr, root, roots.consts, atoms_of, through_pad=False)
    except Refused:
        return _analyse_from(graph, expr, root, roots.consts, atoms_of, through_pad=True)


def _analyse_from(graph: Graph, expr, root, consts, atoms_of, through_pad: bool) -> BinaryTensor:
    """analyse_chain from ``root`` (``through_pad``: the root is a constant pad, analysed through it)."""
    cut_atoms, refusal = None, None
    while True:
        pad = _constant_pad(graph, root) if cut_atoms is None and through_pad else None
        atoms = cut_atoms or (atoms_of(pad.args[0] if pad is not None else root) if atoms_of else NONE)
        kept = _constant_pad(graph, root) if cut_atoms is None and not through_pad else None
        if kept is not None:  # the padding value is the model's own, never 0 by chance
            atoms = atoms.union(point(float(kept.attrs.pad_value), "a Pad"))
        space = _space(tuple(static_shape(root)), list(consts) + atoms.arrays())
        chain = Chain(graph, expr, root, space, atoms)
        try:
            chain.pieces()
            cut = chain.culprit
            if cut is None:
                result = _solve(chain)
                break
        except Refused as why:
            cut = None
            if refusal is None:
                # it switches more than once, or its levels rise and fall: maybe above a non-monotone op (|x|, a
                # PReLU of negative slope) it is a threshold or a staircase of that op's result. The lowest one
                # that can be cut: clip(round(prelu(x))) is a staircase of the PReLU's output, not of the Round's,
                # whose integers TVM would hand over as any floats. (The cut is exact: TVM computes the ops below
                # it in float as the model does; if the chain above it is no binarizer either, the first reason
                # is the one reported.)
                cut = next((node for node in _non_monotone_nodes(chain)
                            if _cuttable(graph, expr, root, node)), None)
            if cut is None:
                raise refusal or why
            refusal = why
        # an op that is not monotone (|x|, a sum of functions moving in opposite ways): let TVM compute it as a
        # float tensor and analyse the ops above it, if it is a float32 tensor of the root's shape on every path
        if not _cuttable(graph, expr, root, cut):  # (the culprit; a node found above already is)
            raise refusal or Refused(f"its values could not be determined exactly: "
                                     f"{describe(graph.value(cut), graph, root)} is not monotone in x between its "
                                     "breakpoints")
        cut_atoms = _cut_atoms(graph, cut, root, atoms, chain)
        root = cut
    if chain.smooth:  # results must not depend on how the smooth functions round
        for envelope in (-1, 1):
            other = Chain(graph, expr, root, space, atoms, envelope)
            try:
                alt = _solve(other)
            except Refused:
                alt = None
            if alt is None or not _same_test(result, alt):
                names = " and ".join(sorted({_smooth_name(op) for op in chain.smooth}))
                raise Refused(f"where it switches depends on how {names} is rounded, which differs between "
                              f"libraries (it is compared at a value other than its exact one)")
    if pad is not None:
        result = _through_pad(chain, result, pad)
    return result


def _non_monotone_nodes(chain: Chain) -> list:
    """The nodes below the top whose direction changes (|x|, a PReLU of negative slope, and every op above one),
    lowest first: above such a node the chain may be monotone."""
    order = {value: i for i, (_, value) in enumerate(chain.graph.order)}
    found = []
    for value, (starts, dirs) in chain._pieces.items():
        if value.same_as(chain.graph.value(chain.top)) or not isinstance(value, relax.Call):
            continue
        if np.any(np.any(dirs == 1, axis=0) & np.any(dirs == -1, axis=0)):
            found.append(value)
    found.sort(key=lambda value: order.get(value, -1))
    return [chain.graph.var_of(value) for value in found]


def _cuttable(graph: Graph, expr, root, cut) -> bool:
    """Can TVM compute ``cut`` as a float tensor for the chain above it: a float32 tensor of the root's shape
    below the top, through which every path from the top to the root goes."""
    return cut is not None and not cut.same_as(expr) and _dtype(cut) == "float32" and \
        static_shape(cut) == static_shape(root) and _only_through(graph, expr, cut)


_FLAT_OPS = ("relax.sign", "relax.nn.relu", "relax.nn.relu6", "relax.clip", "relax.floor", "relax.ceil",
             "relax.round", "relax.trunc", "relax.maximum", "relax.minimum", "relax.where", "relax.astype",
             *_COMPARE)


def _cut_atoms(graph: Graph, cut, root, atoms: Atoms, chain: Chain) -> Atoms:
    """The exact values of a cut (a sub-chain TVM computes in float): any, if the sub-chain has an op that maps a
    range to one value (a clamp, a rounding, a comparison), an op of undetermined direction (x - x is 0 everywhere)
    or its root has exact values; none otherwise."""
    why = f"{describe(graph.value(cut), graph, root)}, which TVM computes in float here"
    target = graph.value(root)
    flat = []

    def walk(expr):
        value = graph.value(expr)
        if value.same_as(target) or _constant_value(graph, expr) is not None or not isinstance(value, relax.Call):
            return
        if op_name(value) in _FLAT_OPS:
            flat.append(value)
        for a in tensor_args(value):
            walk(a)

    walk(cut)
    if flat:
        return TOP_OF(f"{describe(flat[0], graph, root)}, which TVM computes in float here")
    out = NONE
    if not atoms.none:  # the images of the root's exact values (a binary layer's integers through a BatchNorm)
        values = atoms.enumerate()
        if values is None:
            return TOP_OF(atoms.why)
        with np.errstate(all="ignore"):
            images = np.asarray(Chain(graph, cut, root, chain.space).evaluate(values.astype(np.float32)), np.float32)
        out = Atoms(sets=[images], why=atoms.why)
    # no op that clamps or rounds: exact zeros only where terms cancel (x - x), which a sample of the domain shows
    lo, hi = chain.domain()
    keys = np.linspace(lo, hi, 1025).astype(np.int64)
    values = np.asarray(chain.at(keys, cut), np.float64)
    xs = from_key(keys).astype(np.float64)
    zeros = np.where(values == 0, xs, np.nan)
    spread = np.nanmax(zeros, axis=0) - np.nanmin(zeros, axis=0) if np.any(values == 0) else 0.0
    scale = np.nanmax(np.abs(zeros), axis=0) if np.any(values == 0) else 0.0
    if np.any(np.nan_to_num(spread) > ROUNDING * np.nan_to_num(scale) + TINY):
        return TOP_OF(why)
    return out


def _only_through(graph: Graph, top, cut) -> bool:
    """Does every path from ``top`` down to a tensor (not a constant) pass through ``cut``?"""
    target = graph.value(cut)
    seen = {}

    def walk(expr) -> bool:
        value = graph.value(expr)
        if value.same_as(target) or _constant_value(graph, expr) is not None:
            return True
        if value in seen:
            return seen[value]
        ok = _is_chain_op(graph, value) and all(
            walk(a) for a in tensor_args(value))
        seen[value] = ok
        return ok

    return walk(top)


def _smooth_name(op: Smooth) -> str:
    return next(n.removeprefix("relax.").capitalize() for n, s in _SMOOTH.items() if s is op)


def _same_test(a, b) -> bool:
    if type(a) is not type(b) or a.values != b.values:
        return False
    if isinstance(a, LevelTensor):
        return all(np.array_equal(x, y) for x, y in zip(a.scales + a.thresholds, b.scales + b.thresholds))
    return np.array_equal(a.scale, b.scale) and np.array_equal(a.threshold, b.threshold)


def _solve(chain: Chain) -> BinaryTensor | LevelTensor:
    """The step function of the chain as a BinaryTensor (two values), a LevelTensor (a monotone staircase of up to
    MAX_LEVELS equally spaced values), or Refused with the reason."""
    seg_starts, seg_vals, valid = chain.segments(MAX_LEVELS - 1)
    prev = np.concatenate([seg_vals[:1], seg_vals[:-1]], axis=0)
    changes = valid & (seg_vals != prev)
    changes[0] = False
    n_switch = changes.sum(axis=0)
    first = seg_vals[0]
    last = np.take_along_axis(seg_vals, np.maximum(valid.sum(axis=0) - 1, 0)[None], 0)[0]
    distinct = np.unique(seg_vals[valid])
    if distinct.size > 2:
        levels = _staircase(chain, seg_starts, seg_vals, valid, distinct)
        if isinstance(levels, LevelTensor):
            return levels
        per_element = np.sort(np.stack([first, last]), axis=0)
        if np.all(n_switch <= 1):
            pairs = np.unique(per_element.reshape(2, -1).T, axis=0)
            raise Refused("its two values differ between elements (" + "; ".join(
                f"{_fmt(a)}, {_fmt(b)}" for a, b in pairs[:3]) + "): the activation scale must be one per tensor")
        e = int(np.flatnonzero((n_switch >= 2).reshape(-1))[0])
        refusal = chain._many_values(e)
        if levels and refusal.values is not None and len(refusal.values) <= MAX_LEVELS:
            raise Refused(f"{refusal}; {levels}", refusal.values)
        raise refusal
    if np.any(n_switch >= 2):
        e = int(np.flatnonzero((n_switch >= 2).reshape(-1))[0])
        at = from_key(seg_starts.reshape(seg_starts.shape[0], -1)[:, e][changes.reshape(changes.shape[0], -1)[:, e]])
        count = {2: "twice", 3: "three times"}.get(len(at), f"{len(at)} times")
        raise Refused(f"it switches {count}: at {' and at '.join(_fmt(a) for a in at)} "
                      f"({describe(chain.graph.value(chain.top), chain.graph, chain.root)} is not a single threshold "
                      f"on x)")
    values = distinct
    if values.size == 1 and values[0] != 0:  # a constant (e.g. sign after a ReLU): the values +-v, one bit used
        values = np.array([-abs(values[0]), abs(values[0])])
    if values.size != 2:
        if values.size == 1:
            raise Refused(f"it is the constant {_fmt(values[0])}")
        raise Refused("it takes no value in its finite domain")
    low, high = float(values[0]), float(values[1])
    const = n_switch == 0
    rising = ~const & (last == high)
    falling = ~const & (last == low)
    t = np.where(changes, seg_starts, 0).sum(axis=0)  # the key where the value changes (one change)
    x_t, x_prev = from_key(t), from_key(t - 1)
    scale = np.where(rising, 1, np.where(falling, -1, 0)).astype(np.float32)
    # rising: bit = x >= x_t; falling: bit = x < x_t = -x >= -prev(x_t); constant: 0 >= 0 (high) or 0 >= 1 (low)
    threshold = np.where(rising, x_t, np.where(falling, -x_prev, np.where(first == high, 0, 1))).astype(np.float32)
    shape = (chain.space[0],) + tuple(static_shape(chain.root)[1:]) if chain.space else ()
    return BinaryTensor(chain.root, np.broadcast_to(scale, shape).copy(), np.broadcast_to(threshold, shape).copy(),
                        low, high)


def _staircase(chain: Chain, seg_starts, seg_vals, valid, distinct) -> LevelTensor | str:
    """The chain as a LevelTensor when its values are ``lo + step * m`` (m < MAX_LEVELS) and each element's level
    only rises or only falls with x; else why not (str)."""
    lo = float(distinct[0])
    m = (distinct - lo) / float(np.min(np.diff(distinct)))
    if not np.all(np.abs(m - np.round(m)) <= LEVEL_ROUNDING * np.maximum(m, 1)):
        return f"its values ({', '.join(_fmt(v) for v in distinct[:6])}) are not equally spaced"
    levels = int(np.round(m[-1])) + 1
    step = (float(distinct[-1]) - lo) / (levels - 1)  # 1/3 of a DoReFa range: the levels are its multiples to rounding
    if levels > MAX_LEVELS:
        return f"it has {levels} levels, more than the {MAX_LEVELS} (3 bits) computed by bit planes"
    level = np.where(valid, np.round((seg_vals - lo) / step), np.nan)  # the level index m of each segment
    filled = level.copy()
    for i in range(1, filled.shape[0]):  # the level of the last valid segment so far (sorted by start)
        filled[i] = np.where(np.isnan(filled[i]), filled[i - 1], filled[i])
    steps = np.diff(filled, axis=0)
    rising, falling = np.any(steps > 0, axis=0), np.any(steps < 0, axis=0)
    if np.any(rising & falling):
        return "its level rises and falls with x (not a monotone staircase)"
    first = filled[0]
    big = np.iinfo(np.int64).max
    scales, thresholds = [], []
    for j in range(1, levels):
        # rising: m >= j from the first segment at level >= j; falling: until the first segment below j
        up = np.where(valid & (level >= j), seg_starts, big).min(axis=0)
        down = np.where(valid & (level < j), seg_starts, big).min(axis=0)
        always, never = first >= j, first < j
        x_up = from_key(np.where(up == big, 0, up))
        x_down_prev = from_key(np.where(down == big, 1, down) - 1)
        scale = np.where(rising & ~always & (up != big), 1, np.where(falling & always & (down != big), -1, 0))
        threshold = np.where(scale == 1, x_up, np.where(scale == -1, -x_down_prev,
                                                        np.where(always, 0, 1)))
        shape = (chain.space[0],) + tuple(static_shape(chain.root)[1:]) if chain.space else ()
        scales.append(np.broadcast_to(scale.astype(np.float32), shape).copy())
        thresholds.append(np.broadcast_to(threshold.astype(np.float32), shape).copy())
    return LevelTensor(chain.root, scales, thresholds, lo, step)


def _through_pad(chain: Chain, result: BinaryTensor, pad) -> BinaryTensor:
    """F(pad(y, v)) = pad(F(y), F(v)): the padding value is the model's own (sign(0) = 0 there), so F(v) is
    evaluated exactly; it must be the same for every element."""
    v = float(pad.attrs.pad_value)
    exact = Chain(chain.graph, chain.top, chain.root, chain.space)  # no tie rule: the padding is no chance 0
    fv = np.asarray(exact.evaluate(np.full(chain.space, v, np.float32)), np.float64)
    fv = fv[~np.isnan(fv)] if fv.size else fv
    if fv.size == 0 or np.ptp(fv):
        raise Refused(f"after its padding with {v:g} the binarizer maps the padding to different values per element")
    widths = [int(w) for w in pad.attrs.pad_width]
    pairs = [(widths[2 * i], widths[2 * i + 1]) for i in range(len(widths) // 2)]
    if isinstance(result, LevelTensor):
        shape = result.scales[0].shape
        index = tuple(slice(b, dim - e) if dim > 1 else slice(None) for (b, e), dim in zip(pairs, shape))
        return result.replace(root=pad.args[0], scales=[a[index].copy() for a in result.scales],
                              thresholds=[a[index].copy() for a in result.thresholds],
                              pad=(pairs, float(fv.reshape(-1)[0])), post=[pad])
    index = tuple(slice(b, dim - e) if dim > 1 else slice(None) for (b, e), dim in zip(pairs, result.scale.shape))
    return result.replace(root=pad.args[0], scale=result.scale[index].copy(), threshold=result.threshold[index].copy(),
                          pad=(pairs, float(fv.reshape(-1)[0])), post=[pad])
