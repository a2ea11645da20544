"""The package's layering: no import cycle among tvm_bnn's modules, the lower layer (``tvm_bnn.core``) imports nothing
above it, tuning reaches the pipeline through it only, and ``compile`` chooses a backend from a table.

Imports are read from the source (ast), function-level ones included: a cycle hidden inside a function is still a
cycle. An edge goes to the module a statement names (``from .x import y``: the submodule ``x.y`` if there is one,
else ``x``); the implicit import of a module's parent packages is not an edge (every module would otherwise depend
on ``tvm_bnn/__init__``).
"""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import tvm_bnn

ROOT = Path(tvm_bnn.__file__).resolve().parent
PACKAGE = "tvm_bnn"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict:
    """module name -> path, for every .py file of the package."""
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict) -> set:
    """The tvm_bnn modules ``name`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import tvm_bnn.a.b` names a module; an attribute: its owner
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                out.add(target)
    return out


def import_graph() -> dict:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict) -> list | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def cycles(graph: dict) -> list:
    """Every set of modules that import each other (strongly connected components of more than one module)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def reachable(graph: dict, start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_walk_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "tvm_bnn.compiler" in graph["tvm_bnn"]  # `from .compiler import ...` in a package __init__
    assert "tvm_bnn.targets.presets" in graph["tvm_bnn.targets"]
    assert "tvm_bnn.frontends.onnx" in graph["tvm_bnn.frontends.importer"]  # imported inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert cycles({"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"d"}}) == [frozenset({"a", "b"})]


def test_no_import_cycle():
    graph = import_graph()
    new = cycles(graph)
    assert not new, "import cycles:\n" + "\n".join(
        " -> ".join(find_cycle({m: graph[m] & c for m in c})) for c in new)


# The layers, top first (README: Layout of the code). A module may import from its own layer and those below.
LAYERS = [
    ["tvm_bnn", "tvm_bnn.compiler", "tvm_bnn.tuning", "tvm_bnn.cli"],
    ["tvm_bnn.backends"],
    ["tvm_bnn.deploy"],
    ["tvm_bnn.core"],
    ["tvm_bnn.frontends", "tvm_bnn.passes", "tvm_bnn.ops", "tvm_bnn.schedules", "tvm_bnn.targets", "tvm_bnn.nn",
     "tvm_bnn.zoo"],
    ["tvm_bnn.errors", "tvm_bnn.report", "tvm_bnn.profiling"],
]

def layer_of(module: str) -> int:
    for depth, prefixes in enumerate(LAYERS):
        if any(module == p or (p != "tvm_bnn" and module.startswith(p + ".")) for p in prefixes):
            return depth
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_every_import_goes_to_the_same_layer_or_below():
    graph = import_graph()
    upward = {(m, t) for m, targets in graph.items() for t in targets if layer_of(t) < layer_of(m)}
    assert not upward, sorted(upward)


UPPER = ("tvm_bnn.compiler", "tvm_bnn.backends", "tvm_bnn.tuning", "tvm_bnn.cli", "tvm_bnn.deploy.bundle")


def _upper(module: str) -> bool:
    return module == "tvm_bnn" or any(module == u or module.startswith(u + ".") for u in UPPER)


def test_core_imports_nothing_above_it():
    graph = import_graph()
    for module in (m for m in graph if m.startswith("tvm_bnn.core")):
        above = sorted(m for m in reachable(graph, module) if _upper(m))
        assert not above, f"{module} reaches {above}"


def test_tuning_reaches_pipeline_and_backends_through_core_only():
    graph = import_graph()
    reached = reachable(graph, "tvm_bnn.tuning")
    assert "tvm_bnn.core.pipeline" in graph["tvm_bnn.tuning"]
    assert not [m for m in reached if m.startswith(("tvm_bnn.backends", "tvm_bnn.deploy.bundle", "tvm_bnn.compiler"))]


def test_compile_has_no_per_family_branch():
    """The target family chooses a backend in the table of tvm_bnn.backends, nowhere in compile."""
    from tvm_bnn import backends, compiler

    assert "family" not in inspect.getsource(compiler.compile)
    assert set(backends.BACKENDS) == {"x86", "c", "arm"}
