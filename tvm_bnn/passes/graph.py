"""Read-only helpers over a Relax dataflow function: bound values, use counts, constants, op tests."""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


class Graph:
    """The bindings of one Relax function, for analysis before a rewrite."""

    def __init__(self, func: relax.Function):
        self.func = func
        self.var2val = dict(relax.analysis.get_var2val(func).items())  # a Python dict: looked up millions of times
        self.uses: dict = {}
        self.users: dict = {}  # var -> [(binding var, value)] that read it
        self.order: list = []  # (var, value) in binding order

        @relax.expr_functor.visitor
        class _Count(relax.PyExprVisitor):
            def visit_var_(inner, var):  # noqa: N805 - visitor callback
                self.uses[var] = self.uses.get(var, 0) + 1

            def visit_dataflow_var_(inner, var):  # noqa: N805
                self.uses[var] = self.uses.get(var, 0) + 1

        counter = _Count()
        for block in func.body.blocks:
            for binding in block.bindings:
                self.order.append((binding.var, binding.value))
                before = dict(self.uses)
                counter.visit_expr(binding.value)
                for v, n in self.uses.items():
                    if n != before.get(v, 0):
                        self.users.setdefault(v, []).append((binding.var, binding.value))
        counter.visit_expr(func.body.body)

    def var_of(self, value):
        """The binding variable of a bound value (a Call), or None."""
        if not hasattr(self, "_var_of"):
            self._var_of = {val: var for var, val in self.order}
        return self._var_of.get(value)

    def only_user(self, var):
        """(var, value) of the single binding reading ``var`` if it has exactly one use, else None."""
        if not self.single_use(var) or len(self.users.get(var, [])) != 1:
            return None
        return self.users[var][0]

    def value(self, expr):
        """The expression bound to ``expr`` if it is a bound variable (one step), else ``expr``."""
        while isinstance(expr, relax.Var) and expr in self.var2val:
            expr = self.var2val[expr]
            if not isinstance(expr, relax.Var):
                break
        return expr

    def single_use(self, var) -> bool:
        return isinstance(var, relax.Var) and self.uses.get(var, 0) == 1

    def constant(self, expr):
        """numpy value of ``expr`` if it is (bound to) a Relax constant, else None (memoised: the analyses read the
        same constants thousands of times; treat the array as read-only)."""
        expr = self.value(expr)
        if not isinstance(expr, tvm.ir.expr.GenericConst):
            return None
        memo = self.__dict__.setdefault("_constants", {})
        if expr not in memo:
            memo[expr] = expr.value.numpy()
            memo[expr].flags.writeable = False
        return memo[expr]


def tensor_args(value) -> list:
    """The tensor operands of a call (not its PrimExpr arguments, such as clip's bounds)."""
    return [a for a in value.args if isinstance(getattr(a, "ty", None), relax.TensorType)]


def op_name(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def is_op(expr, *names) -> bool:
    return op_name(expr) in {f"relax.{n}" for n in names}


def static_shape(expr) -> tuple | None:
    """The static shape of a tensor expression, or None if it has symbolic dimensions."""
    ty = expr.ty if hasattr(expr, "ty") else None
    shape = getattr(ty, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return None
    dims = []
    for d in shape.values:
        if not hasattr(d, "value"):
            return None
        dims.append(int(d.value))
    return tuple(dims)


def per_channel(const: np.ndarray, channels: int, axis: int, ndim: int) -> np.ndarray | None:
    """A constant broadcast along one channel axis of an ``ndim`` tensor, as a [channels] vector; else None."""
    c = np.asarray(const)
    if c.ndim > ndim:
        return None
    full = (1,) * (ndim - c.ndim) + c.shape
    for i, d in enumerate(full):
        if i != axis and d != 1:
            return None
    if full[axis] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float64) if c.size in (1, channels) else None
