"""FoldConstantSubgraphs: evaluate every binding that does not depend on the model's inputs.

TVM's FoldConstant folds a call only when its arguments are constant tensors, so weights computed from
``arange`` / ``full`` / ``linspace`` (e.g. a per-channel scale made with torch.linspace) stay as graphs, and the
binarize pass could not see them as constants. This pass finds the input-independent bindings, builds them as one
small Relax function, runs it once on the CPU, and substitutes the values as constants.
"""
import numpy as np
import tvm
from tvm import relax

from .graph import Graph
from .rewrite import apply_recipes, relax_functions

_MAX_BYTES = 1 << 30  # never materialise a folded tensor larger than this


def input_independent(graph: Graph) -> set:
    """Binding vars whose values depend on no function parameter and have no side effect."""
    free = set()
    for var, value in graph.order:
        used = relax.analysis.free_vars(value)
        if isinstance(value, relax.Call) and all(u in free for u in used):
            free.add(var)
    return free


@tvm.transform.module_pass(opt_level=0, name="tvm_bnn.FoldConstantSubgraphs")
def FoldConstantSubgraphs(mod, _ctx):  # noqa: N802
    for gvar, func in relax_functions(mod):
        if not func.body.blocks:
            continue
        graph = Graph(func)
        foldable = input_independent(graph)
        # frontier: foldable vars read by a binding that is not foldable, or by the function's result
        frontier = []
        for var, value in graph.order:
            if var in foldable:
                continue
            frontier.extend(u for u in relax.analysis.free_vars(value) if u in foldable and u not in frontier)
        frontier.extend(u for u in relax.analysis.free_vars(func.body.body) if u in foldable and u not in frontier)
        frontier = [v for v in frontier if _is_small_tensor(v)]
        if not frontier:
            continue
        bindings = [relax.VarBinding(v, val) for v, val in graph.order if v in foldable]
        out = relax.Var("folded", relax.TupleType([v.ty for v in frontier]))
        block = relax.DataflowBlock(bindings + [relax.VarBinding(out, relax.Tuple(frontier))])
        body = relax.SeqExpr([block], out)
        const_mod = tvm.IRModule({"main": relax.Function([], body, ret_ty=relax.TupleType([v.ty for v in frontier]))})
        const_mod.update({gv: f for gv, f in mod.functions_items() if not isinstance(f, relax.Function)})
        try:
            ex = tvm.compile(relax.transform.DeadCodeElimination(["main"])(const_mod), target="llvm")
            values = relax.VirtualMachine(ex, tvm.cpu())["main"]()
        except Exception:  # noqa: BLE001 - anything that cannot run here is left to TVM's own passes
            continue
        recipes = {}
        for var, val in zip(frontier, values):
            array = val.numpy()
            recipes[graph.var2val[var]] = lambda bb, new, a=array: relax.const(a)
        mod = apply_recipes(mod, gvar, recipes)
    return mod


def _is_small_tensor(var) -> bool:
    ty = var.ty
    shape = getattr(ty, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return False
    try:
        size = int(np.prod([int(d) for d in shape.values]))
    except (TypeError, ValueError):
        return False
    return size * 8 <= _MAX_BYTES
