"""What a frontend hands to the pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field

import tvm


@dataclass
class ImportedModel:
    mod: tvm.IRModule
    input_names: list
    layer_names: list = field(default_factory=list)  # conv2d/dense layers, in program order
    source: str = ""  # "torch", "onnx" or "relax"
    # per layer name, (model input indices it depends on, model output indices it reaches); None: match by order
    layer_keys: list | None = None
