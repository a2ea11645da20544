"""PyTorch -> Relax through torch.export and TVM's ExportedProgram importer."""
from __future__ import annotations

import warnings

from ..errors import ModelImportError
from .model import ImportedModel

_LAYER_TARGETS = ("aten.conv2d", "aten.convolution", "aten.linear", "aten.matmul", "aten.mm", "aten.addmm")


def _export(model, example_inputs):
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return model
    if example_inputs is None:
        raise ModelImportError("example_inputs: a torch.nn.Module needs example inputs to export, e.g. "
                               "tvm_bnn.compile(model, 'x86', example_inputs=(torch.randn(1, 3, 32, 32),))")
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    inputs = tuple(torch.as_tensor(x) for x in example_inputs)
    was_training = model.training
    model.eval()  # compile the inference graph: BN running stats, deterministic binarization
    try:
        return torch.export.export(model, inputs)
    except Exception as exc:  # noqa: BLE001 - report torch's reason with what to do
        raise ModelImportError(f"model: torch.export could not export {type(model).__name__}: {exc}".strip()
                               + "\nFix the model so that torch.export.export(model, example_inputs) works.") from exc
    finally:
        model.train(was_training)


def _layer_names(ep) -> list:
    names = []
    for node in ep.graph.nodes:
        if node.op != "call_function" or not any(str(node.target).startswith(t) for t in _LAYER_TARGETS):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        names.append(path or node.name)
    return names


def _fill_pool_strides(ep) -> None:
    """``F.max_pool2d(x, 2, ceil_mode=True)`` exports its default stride as ``[]`` (PyTorch: the kernel size), which
    TVM's importer takes for a stride of rank 0 and rejects; write the kernel size in (same function)."""
    changed = False
    for node in ep.graph.nodes:
        name = str(node.target)
        if node.op == "call_function" and name.startswith(("aten.max_pool", "aten.avg_pool")) and (
                len(node.args) > 2 and isinstance(node.args[2], (list, tuple)) and len(node.args[2]) == 0):
            node.args = node.args[:2] + (list(node.args[1]),) + node.args[3:]
            changed = True
    if changed:
        ep.graph_module.recompile()


def import_torch(model, example_inputs) -> ImportedModel:
    from tvm.relax.frontend.torch import from_exported_program

    with warnings.catch_warnings():  # torch's deprecation chatter while exporting is not the user's business
        warnings.simplefilter("ignore", FutureWarning)
        ep = _export(model, example_inputs)
    _fill_pool_strides(ep)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            mod = from_exported_program(ep)
    except Exception as exc:  # noqa: BLE001
        raise ModelImportError(
            f"model: TVM's PyTorch importer cannot translate this model: {exc}\n"
            "Replace the unsupported operation, or export to ONNX and compile the .onnx file") from exc
    user_inputs = list(ep.graph_signature.user_inputs)
    names = _layer_names(ep)
    return ImportedModel(mod, user_inputs, names, "torch")
