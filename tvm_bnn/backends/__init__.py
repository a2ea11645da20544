"""One backend per target family, chosen by ``TargetSpec.family`` from the table below; each builds a
``CompiledModel`` (``base.py``: the interface every compiled model has, documented once)."""
from .arm_linux import ArmLinuxBackend, ArmLinuxModel
from .base import Backend, CompiledModel
from .c_bundle import BundleModel, BundleStats, CBundleBackend
from .runtime_library import LibraryModel, RuntimeLibraryBackend

BACKENDS = {
    "x86": RuntimeLibraryBackend(),  # a TVM runtime library, run here by the Relax VM
    "c": CBundleBackend(),  # a standalone C bundle, run on an emulated Cortex-M or with the host's gcc
    "arm": ArmLinuxBackend(),  # a C bundle with LLVM NEON kernels under qemu-user; a cross-compiled .so on export
}


def backend_for(spec) -> Backend:
    """The backend of ``spec``'s target family."""
    return BACKENDS[spec.family]


__all__ = ["ArmLinuxModel", "BACKENDS", "Backend", "BundleModel", "BundleStats", "CompiledModel", "LibraryModel",
           "backend_for"]
