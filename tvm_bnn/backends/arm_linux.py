"""The ARM Linux backend (family "arm": aarch64, armv7 NEON). Two artefacts from one model: a C bundle whose
kernels TVM's LLVM codegen compiled for the board, which ``cm(x)`` runs here under qemu-user and ``export(dir)``
writes; and the scheduled module, which ``export("model.so")`` builds into a cross-compiled TVM runtime library
(multi-threaded; ``tvm_bnn.load`` it on the board)."""
from __future__ import annotations

import os

from tvm.support import cc

from ..core.exported_library import write_library
from ..core.inputs import input_arrays
from ..core.pipeline import schedule_pipeline
from ..deploy.bundle import build_bundle
from ..targets import qemu
from .base import Backend
from .c_bundle import BundleModel, new_bundle_dir, owned_bundle_dir
from .runtime_library import build_executable


class ArmLinuxModel(BundleModel):
    def __init__(self, bundle, spec, inputs, report, scheduled):
        super().__init__(bundle, spec, inputs, report)
        self.board = None  # it runs under qemu-user, which counts no instructions: no stats
        self.arch = spec.board
        self.scheduled = scheduled  # built into a runtime library by export(.so)

    def __call__(self, *args):
        return self.bundle.run_linux(input_arrays(args, self.inputs))

    def export(self, path: str, overwrite: bool = False) -> str:
        """A directory ``path``: the C bundle with ``kernels.o``; a ``path`` ending in ``.so``: a TVM runtime library
        cross-compiled for the board."""
        if os.fspath(path).endswith(".so"):
            return self._export_library(os.fspath(path), overwrite)
        return super().export(path, overwrite)

    def _export_library(self, path: str, overwrite: bool) -> str:
        compiler = qemu.require_tool(qemu.linux_arch(self.arch).cc)
        executable = build_executable(self.scheduled, self.spec)
        return write_library(executable, path, self.target_name, self.spec.target, self.inputs, self.num_outputs,
                             self.report, overwrite, fcompile=cc.cross_compiler(compiler))


class ArmLinuxBackend(Backend):
    def check(self, spec, tuning_db):
        # fail early, naming the package, rather than at the first call
        qemu.require_tool(qemu.linux_arch(spec.board).cc)

    def build(self, spec, analysed, tuning_db):
        bundle = build_bundle(analysed.optimized, new_bundle_dir(), overwrite=True, target=spec)
        with spec.target:
            scheduled = schedule_pipeline(spec, tuning_db)(analysed.optimized)
        model = ArmLinuxModel(bundle, spec, analysed.inputs, analysed.report, scheduled)
        owned_bundle_dir(model, bundle)
        return model
