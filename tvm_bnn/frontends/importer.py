"""Dispatch a model of any supported kind to its frontend and check what every later pass relies on."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import tvm
from tvm import relax

from ..errors import ModelImportError
from ..passes.graph import static_shape


@dataclass
class ImportedModel:
    mod: tvm.IRModule
    input_names: list
    layer_names: list = field(default_factory=list)  # conv2d/dense layers, in program order
    source: str = ""  # "torch", "onnx" or "relax"


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
    return imported


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
