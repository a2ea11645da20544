"""CanonicalizeBinarization: straight-through-estimator forms -> the binarizer they equal.

Matches (S a binarizer: sign(.) or where(x >= 0, 1, -1); a any expression):

* ``a + (S - a)``        -- ``x + (sign(x) - x).detach()``
* ``(S - a) + a``        -- ``sign(x).detach() - p(x).detach() + p(x)`` (Bi-Real / ReActNet)
* ``(S + a) - a``        -- ``sign(x).detach() + x - x.detach()``

and emits ``S``. These are algebraically S but not bit-for-bit in float (PyTorch's result is within a rounding of
±1); the compiled model computes the exact ±1. Requires common subexpressions merged (EliminateCommonSubexpr), so
that both occurrences of ``a`` are the same variable.
"""

from .binarizers import is_binarizer
from .graph import Graph, is_op
from .rewrite import rewrite_pass


def _same(graph, a, b):
    return a.same_as(b) or graph.value(a).same_as(graph.value(b))


def _ste_target(graph: Graph, value):
    """The binarizer S that ``value`` equals algebraically, or None."""
    if is_op(value, "add"):
        lhs, rhs = value.args
        for a, d in ((lhs, rhs), (rhs, lhs)):
            dv = graph.value(d)
            if is_op(dv, "subtract") and _same(graph, dv.args[1], a) and is_binarizer(graph, dv.args[0]):
                return dv.args[0]
    if is_op(value, "subtract"):
        s, a = value.args
        sv = graph.value(s)
        if is_op(sv, "add"):
            for b, other in ((sv.args[0], sv.args[1]), (sv.args[1], sv.args[0])):
                if _same(graph, other, a) and is_binarizer(graph, b):
                    return b
    return None


def _plan(mod, graph: Graph) -> dict:
    recipes = {}
    for _, value in graph.order:
        target = _ste_target(graph, value)
        if target is not None:
            recipes[value] = lambda bb, new, t=target: new(t)
    return recipes


CanonicalizeBinarization = rewrite_pass("tvm_bnn.CanonicalizeBinarization", _plan)
