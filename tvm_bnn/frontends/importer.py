"""Dispatch a model of any supported kind to its frontend and check what every later pass relies on."""
from __future__ import annotations

import os

import numpy as np
import tvm
from tvm import relax

from ..errors import ModelImportError
from ..passes.graph import static_shape
from .model import ImportedModel


def import_model(model, example_inputs=None) -> ImportedModel:
    if isinstance(model, tvm.IRModule):
        imported = ImportedModel(model, [], [], "relax")
    elif _is_onnx(model):
        from .onnx import import_onnx

        imported = import_onnx(model, example_inputs)
    elif _is_torch(model):
        from .torch import import_torch

        imported = import_torch(model, example_inputs)
    else:
        raise ModelImportError(
            f"model: cannot compile an object of type {type(model).__name__}; pass a torch.nn.Module, a "
            "torch.export.ExportedProgram, an onnx.ModelProto, a path to an .onnx file, or a Relax IRModule")
    if "main" not in [gv.name_hint for gv in imported.mod.get_global_vars()]:
        raise ModelImportError("model: the Relax module has no 'main' function to compile")
    main = imported.mod["main"]
    if not imported.input_names:
        imported.input_names = [p.name for p in main.params]
    for param, name in zip(main.params, imported.input_names):
        if static_shape(param) is None:
            raise ModelImportError(
                f"input {name!r} has a dynamic shape ({param.ty}); tvm_bnn compiles static shapes: export with "
                "fixed sizes, or pass example_inputs=... with the sizes to compile for")
    check_tensor_sizes(imported.mod, dict(zip(main.params, imported.input_names)))
    return imported


def layer_reach(mod: tvm.IRModule) -> list:
    """Per conv2d/matmul of ``main`` in program order: (input indices it depends on, output indices it reaches)."""
    from ..passes.graph import Graph, is_op

    main = mod["main"]
    graph = Graph(main)
    params = {p: k for k, p in enumerate(main.params)}
    result = main.body.body
    result = graph.var2val.get(result, result) if isinstance(result, relax.Var) else result
    fields = list(result.fields) if isinstance(result, relax.Tuple) else [main.body.body]
    outputs = {}
    for k, f in enumerate(fields):
        outputs.setdefault(f, set()).add(k)

    def walk(start, step, stop):
        seen, todo, hits = set(), [start], set()
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            hit = stop.get(v)
            if hit is not None:
                hits |= hit if isinstance(hit, set) else {hit}
            todo.extend(step(v))
        return frozenset(hits)

    def up(v):
        value = graph.var2val.get(v)
        return [a for a in relax.analysis.free_vars(value)] if value is not None else []

    def down(v):
        return [u for u, _ in graph.users.get(v, [])]

    return [(walk(var, up, params), walk(var, down, outputs))
            for var, value in graph.order if is_op(value, "nn.conv2d", "matmul")]


def memory_bytes() -> int:
    """Physical memory of this machine (the limit on one tensor)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_tensor_sizes(mod: tvm.IRModule, names=None, limit: int | None = None) -> None:
    """Refuse, before anything is allocated, a model with a zero-size tensor, or whose input or intermediate
    tensor alone needs more bytes than this machine has (``limit``, default: physical memory): it could only
    fail later, or thrash."""
    limit = memory_bytes() if limit is None else limit
    main = mod["main"]
    exprs = [(names.get(p, p.name) if names else p.name, p) for p in main.params]
    for block in getattr(main.body, "blocks", []):
        exprs += [(b.var.name, b.var) for b in block.bindings]
    for name, expr in exprs:
        shape = static_shape(expr)
        dtype = getattr(getattr(expr, "ty", None), "dtype", None)
        if shape is None or dtype is None or str(dtype) in ("", "void"):
            continue
        if 0 in shape:
            raise ModelImportError(f"tensor {name!r} has shape {shape}: a zero-size dimension; tvm_bnn compiles "
                                   "non-empty tensors (pass example_inputs with at least one element per axis)")
        nbytes = int(np.prod(shape, dtype=object)) * max(1, tvm.DataType(str(dtype)).bits // 8)
        if nbytes > limit:
            raise ModelImportError(
                f"tensor {name!r} of shape {shape} ({dtype}) needs {nbytes / 2**30:,.1f} GiB, more than this "
                f"machine's {limit / 2**30:,.1f} GiB: the model is too large to compile or run here; "
                "check the input shapes (example_inputs=...)")


def _is_onnx(model) -> bool:
    if isinstance(model, (str, os.PathLike)):
        return True  # a path: only ONNX files are read from disk
    try:
        import onnx
    except ImportError:
        return False
    return isinstance(model, onnx.ModelProto)


def _is_torch(model) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(model, (torch.nn.Module, torch.export.ExportedProgram))


def main_outputs(mod: tvm.IRModule) -> int:
    ty = mod["main"].ret_ty if hasattr(mod["main"], "ret_ty") else None
    return len(ty.fields) if isinstance(ty, relax.TupleType) else 1
