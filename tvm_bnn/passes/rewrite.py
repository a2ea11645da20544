"""Apply planned rewrites to a Relax function: the small mutation engine behind our passes.

Each pass first analyses a function (see graph.Graph) and plans, per binding to replace, a *recipe*: a callable
``recipe(bb, new) -> Expr`` that emits whatever it needs with the block builder ``bb`` and returns the new value of
the binding; ``new(old_expr)`` maps an expression of the old function to the rewritten one. Bindings left unused
are removed afterwards by DeadCodeElimination.
"""
from __future__ import annotations

import tvm
from tvm import relax


def apply_recipes(mod: tvm.IRModule, gvar: tvm.ir.GlobalVar, recipes: dict) -> tvm.IRModule:
    """Rewrite function ``gvar`` of ``mod``; ``recipes`` maps an old binding's value (a Call) to its recipe."""
    if not recipes:
        return mod
    by_handle = {call.__hash__(): recipe for call, recipe in recipes.items()}

    @relax.expr_functor.mutator
    class _Mutator(relax.PyExprMutator):
        def visit_call_(self, call):
            recipe = by_handle.get(call.__hash__())
            if recipe is not None:
                return recipe(self.builder_, self.visit_expr)
            return super().visit_call_(call)

    mutator = _Mutator(mod)
    new_func = mutator.visit_expr(mod[gvar])
    new_mod = mutator.builder_.get()
    new_mod[gvar] = relax.analysis.remove_all_unused(new_func)
    return new_mod


def relax_functions(mod: tvm.IRModule):
    return [(gv, f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)]


def rewrite_pass(name: str, plan) -> tvm.transform.Pass:
    """A module pass that rewrites every Relax function with the recipes ``plan(mod, graph)`` returns."""
    from .graph import Graph

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        for gvar, func in relax_functions(mod):
            mod = apply_recipes(mod, gvar, plan(mod, Graph(func)))
        return mod

    return _pass
