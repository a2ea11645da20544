"""SimplifyStraightThrough: straight-through-estimator sums -> the value they stand for.

A straight-through estimator is written as a sum whose terms cancel algebraically: ``a + stop(b - a)``,
``a - stop(a - b)``, ``a + stop(-a + b)``, ``stop(b - a) + a``, Bi-Real's ``stop(sign(x)) - stop(p(x)) + p(x)``,
QKeras' ``x + stop(-x + k)``, ``h + stop(round(h) - h)``; the stop-gradients are gone once exported (Identity, or
nothing). The pass expands every ``add``/``subtract`` into a linear combination of its terms (through ``negative``
and multiplications by a scalar constant; common subexpressions merged beforehand, transposes sunk: sink_layout.py),
and where terms cancel exactly, emits the sub-expression of the sum whose combination is what remains (``b``).

In float the sum is ``b`` only up to a rounding (``x + (sign(x) - x)`` is ``0.99999994`` for some x, and 0 for
|x| >= 2^25), so it is simplified only where that is the intent:

* ``weights=True`` (before constant folding): sums that do not depend on the model's inputs (a weight quantizer's
  ``w + stop(alpha * sign(w) - w)``), so that the folded weights are exactly +-alpha;
* ``weights=False`` (after folding): sums whose remainder takes a few exact values (a binarized activation, a
  sign with the model's own zeros, a 2-bit quantizer: binarizers.py).
"""
from __future__ import annotations

import hashlib

import numpy as np
import tvm
from tvm import relax

from .binarizers import is_quantizer
from .fold_constants import input_independent
from .graph import Graph, op_name, static_shape
from .rewrite import apply_recipes, relax_functions

_SUMS = ("relax.add", "relax.subtract")


class _Terms:
    """Expansions of sums into {term key: (term expr, coefficient)}, memoised per graph."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.memo: dict = {}
        self.nodes: dict = {}  # sum value -> its expansion (every sub-sum met)

    def key(self, expr):
        c = self.graph.constant(expr)
        if c is not None:
            return ("const", c.dtype.str, c.shape, hashlib.sha1(np.ascontiguousarray(c).tobytes()).hexdigest())
        return self.graph.value(expr)

    def expand(self, expr) -> dict:
        value = self.graph.value(expr)
        if value in self.memo:
            return self.memo[value]
        name = op_name(value)
        out = None
        if name in _SUMS:
            a, b = (self.expand(x) for x in value.args)
            out = _merge(a, b, 1.0 if name == "relax.add" else -1.0)
        elif name == "relax.negative":
            out = _scaled(self.expand(value.args[0]), -1.0)
        elif name == "relax.multiply":
            consts = [self.graph.constant(x) for x in value.args]
            for i, c in enumerate(consts):
                if c is not None and c.size == 1 and consts[1 - i] is None and np.isfinite(c).all():
                    out = _scaled(self.expand(value.args[1 - i]), float(c.reshape(-1)[0]))
                    break
        if out is None:
            out = {self.key(expr): (expr, 1.0)}
        elif name in _SUMS or name in ("relax.negative", "relax.multiply"):
            self.nodes[value] = (expr, out)
        self.memo[value] = out
        return out


def _merge(a: dict, b: dict, sign: float) -> dict:
    out = dict(a)
    for k, (e, c) in b.items():
        out[k] = (out[k][0], out[k][1] + sign * c) if k in out else (e, sign * c)
    return out


def _scaled(a: dict, s: float) -> dict:
    return {k: (e, c * s) for k, (e, c) in a.items()}


def _remainder(terms: _Terms, value) -> object | None:
    """The existing sub-expression equal to ``value``'s sum once cancelling terms are dropped, or None."""
    full = terms.expand(value)
    if not any(c == 0 for _, c in full.values()):
        return None
    rest = {k: c for k, (_, c) in full.items() if c != 0}
    if len(rest) == 1:
        (k, c), = rest.items()
        if c == 1.0:
            return full[k][0]
    for sub in _sub_sums(terms, value):  # only inside the sum: defined before it
        expr, expansion = terms.nodes[sub]
        if not any(c == 0 for _, c in expansion.values()) and \
                {k: c for k, (_, c) in expansion.items() if c != 0} == rest:
            return expr
    return None


def _sub_sums(terms: _Terms, expr) -> list:
    """The sums (and negations, scalings) inside the sum ``expr``, outermost first."""
    out, todo = [], [terms.graph.value(expr)]
    while todo:
        value = todo.pop()
        if value in terms.nodes and value not in out:
            out.append(value)
            todo.extend(terms.graph.value(a) for a in value.args if isinstance(a, relax.Expr))
    return out[1:]


def _plan(graph: Graph, weights: bool) -> dict:
    terms = _Terms(graph)
    independent = input_independent(graph) if weights else set()
    recipes = {}
    for var, value in graph.order:
        if op_name(value) not in _SUMS or (weights and var not in independent):
            continue
        rest = _remainder(terms, var)
        if rest is None or static_shape(rest) != static_shape(var) or str(rest.ty.dtype) != str(var.ty.dtype):
            continue
        if not weights and not is_quantizer(graph, rest):
            continue
        recipes[value] = lambda bb, new, rest=rest: new(rest)
    return recipes


def simplify_straight_through(weights: bool) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="tvm_bnn.SimplifyStraightThrough")
    def _pass(mod, _ctx):
        for gvar, func in relax_functions(mod):
            mod = apply_recipes(mod, gvar, _plan(Graph(func), weights))
        return mod

    return _pass


SimplifyStraightThrough = simplify_straight_through(weights=False)
SimplifyWeightStraightThrough = simplify_straight_through(weights=True)
