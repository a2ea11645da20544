"""Frontends: PyTorch, ONNX and Relax models -> a Relax IRModule with static shapes, plus layer names."""
from .importer import ImportedModel, import_model

__all__ = ["ImportedModel", "import_model"]
