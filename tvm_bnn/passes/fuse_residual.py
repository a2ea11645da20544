"""FuseResidualAdd: ``add(conv, r)`` of a float-output conv kernel and a tensor of its shape -> the conv adding ``r``.

Matches ``relax.add`` whose one operand is a variable bound (maybe through aliases) to a single-use
``binary_conv2d`` or ``ternary_conv2d`` call with a float output and no accumulator yet, and whose other operand
``r`` is a float32 tensor of exactly the conv's output shape (a residual shortcut, another layer's output, the
previous activation plane of a few-bit layer); no broadcast; not when TVM's FuseOps can fuse the add into the
producer of ``r`` instead (a float op the conv does not read: a stage transition's shortcut conv), where it is
nearly free. Emits the kernel with ``r`` as its last argument (params ``residual``), computing
``(dot * scale[o] + bias[o]) + r[n, o, oh, ow]`` in its epilogue (ops/epilogue.conv_float_output): the same two
float32 roundings as the kernel and the ``add`` it replaces (IEEE addition commutes, so ``add(r, conv)`` too), but
without a parallel pass of its own over the output and ``r`` (Bi-Real-Net's residual adds, 4 kernels per stage).

Runs on the fused pipeline's input (core/pipeline.fuse_pipeline), after the ternary pairs of a target are formed
(an ``add`` of two binary convs there is a ternary layer, not a residual) and before the weights are laid out.
"""
from __future__ import annotations

from tvm import relax

from .graph import is_op, static_shape
from .kernels import call_kernel, kernel_of
from .rewrite import rewrite_pass

CONV_KERNELS = {"binary_conv2d": 4, "ternary_conv2d": 5}  # op -> its arguments without an accumulator


def _conv_of(mod, graph, expr):
    """KernelCall of the float-output conv kernel without accumulator bound to variable ``expr`` (through alias
    bindings), or None; None too unless ``expr`` and every alias on the way are read once (by the add)."""
    while isinstance(expr, relax.Var) and graph.single_use(expr) and isinstance(graph.var2val.get(expr), relax.Var):
        expr = graph.var2val[expr]  # an alias binding
    if not (isinstance(expr, relax.Var) and graph.single_use(expr)):
        return None
    call = kernel_of(mod, graph.var2val.get(expr))
    if call is None or CONV_KERNELS.get(call.op) != len(call.args) or call.params.get("prepared") or \
            call.params.get("shifts"):
        return None
    return call


def _absorbed_by_producer(mod, graph, residual, conv_var) -> bool:
    """Whether TVM's FuseOps can take the add as the epilogue of ``residual``'s producer instead: a float op (not
    one of our kernels, not an input or a constant) that the conv does not read, directly or not (a shortcut
    conv or pooling of a stage transition; where the conv reads it, e.g. an identity shortcut, the add has to wait
    for the conv). There the add costs next to nothing, and the producer keeps it."""
    value = graph.var2val.get(residual) if isinstance(residual, relax.Var) else None
    if not isinstance(value, relax.Call) or kernel_of(mod, value) is not None:
        return False
    seen, stack = set(), [conv_var]
    while stack:
        var = stack.pop()
        if var.same_as(residual):
            return False  # the conv reads the residual
        if var in seen:
            continue
        seen.add(var)
        bound = graph.var2val.get(var)
        if bound is not None:
            stack.extend(v for v in relax.analysis.free_vars(bound) if isinstance(v, relax.Var))
    return True


def _float32(expr) -> bool:
    return str(getattr(getattr(expr, "ty", None), "dtype", "")) == "float32"


def _plan(mod, graph) -> dict:
    recipes = {}
    for _, value in graph.order:
        if not is_op(value, "add") or len(value.args) != 2:
            continue
        for i in (0, 1):
            var, residual = value.args[i], value.args[1 - i]
            call = _conv_of(mod, graph, var)
            if call is None:
                continue
            shape = static_shape(var)
            if shape is None or static_shape(residual) != shape or static_shape(value) != shape or \
                    not (_float32(var) and _float32(residual)) or _absorbed_by_producer(mod, graph, residual, var):
                continue

            def recipe(bb, new, call=call, residual=residual):
                return call_kernel(bb, call.op, [new(a) for a in call.args] + [new(residual)],
                                   **dict(call.params, residual=True))

            recipes[value] = recipe
            break
    return recipes


FuseResidualAdd = rewrite_pass("tvm_bnn.FuseResidualAdd", _plan)
