"""tvm_bnn: binarized neural networks from PyTorch / ONNX to bit-packed XNOR-popcount code with Apache TVM."""
import os as _os

# TVM's thread pool otherwise starts with one thread per *physical* core, which is 1 on a 2-vCPU machine with SMT.
# Set before TVM's runtime starts; a user's own TVM_NUM_THREADS wins.
_os.environ.setdefault("TVM_NUM_THREADS", str(len(_os.sched_getaffinity(0))))
from .backends import CompiledModel
from .compiler import compile, load  # noqa: A004 - compile is the public API
from .core.pipeline import analyse
from .errors import (CPUFeatureError, InputError, ModelImportError, NotBinarizedError, ToolchainMissingError,
                     TvmBnnError, UnknownTargetError)
from .targets import known_targets
from .tuning import tune

__version__ = "0.1.0"
__all__ = ["CPUFeatureError", "CompiledModel", "InputError", "ModelImportError", "NotBinarizedError",
           "ToolchainMissingError", "TvmBnnError", "UnknownTargetError", "analyse", "compile", "known_targets", "load",
           "nn", "tune"]


def __getattr__(name):
    if name == "nn":  # torch is only needed for the training-side modules
        import importlib

        return importlib.import_module(".nn", __name__)
    raise AttributeError(name)
