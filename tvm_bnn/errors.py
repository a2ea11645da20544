"""Errors that tell the user what is wrong and what to do."""


class TvmBnnError(Exception):
    """Base class of tvm_bnn's errors."""


class ModelImportError(TvmBnnError, ValueError):
    """The model could not be read or translated to Relax."""


class UnknownTargetError(TvmBnnError, ValueError):
    """The target name is not one tvm_bnn knows."""


class InputError(TvmBnnError, ValueError):
    """Inputs given to a compiled model do not match what it was compiled for."""


class ToolchainMissingError(TvmBnnError, RuntimeError):
    """An external compiler or emulator the target needs is not installed."""


class BundleError(TvmBnnError, ValueError):
    """The model cannot be turned into a standalone C bundle, or a bundle was given inputs it does not take."""


class NotBinarizedError(TvmBnnError, ValueError):
    """``require_binary=True`` and a layer with binary weights was not binarized (its activation not recognised)."""


class CPUFeatureError(TvmBnnError, RuntimeError):
    """Compiled x86 code needs CPU features this host does not have (running it would die with SIGILL)."""
