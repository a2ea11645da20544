"""The callable a bundle compile returns: a C bundle that runs on an emulated Cortex-M board, under qemu-user
(ARM Linux, with LLVM-compiled NEON kernels) or on the host (target "c")."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import numpy as np

from ..core.exported_library import write_library
from ..core.inputs import input_arrays
from ..core.pipeline import lower_pipeline
from ..errors import TvmBnnError


@dataclass
class BundleStats:
    """Sizes and cost of one inference; the instruction count is measured on the emulated board."""

    flash_code_bytes: int
    flash_weight_bytes: int
    ram_arena_bytes: int
    ram_arena_bytes_without_reuse: int
    ram_static_bytes: int  # .data + .bss of the whole firmware (arena, input/output buffers, startup)
    ram_stack_bytes: int | None  # tvm_bnn_model_run's frame + the deepest kernel's (gcc -fstack-usage)
    instructions_per_inference: int | None
    board: str

    def __str__(self):
        ins = f"{self.instructions_per_inference:,}" if self.instructions_per_inference is not None else "-"
        return (f"{self.board}: flash {self.flash_code_bytes:,} B code + {self.flash_weight_bytes:,} B weights; "
                f"RAM arena {self.ram_arena_bytes:,} B ({self.ram_arena_bytes_without_reuse:,} B without reuse), "
                f"static RAM {self.ram_static_bytes:,} B, stack {self.ram_stack_bytes or 0:,} B; "
                f"{ins} instructions per inference")


class BundleModel:
    """``cm(x)`` builds firmware around the bundle and runs it under QEMU (target "c": with the host's gcc; ARM
    Linux targets: a static program under qemu-aarch64 / qemu-arm)."""

    def __init__(self, bundle, spec, inputs, report, scheduled=None):
        self.bundle = bundle
        self.spec = spec
        self.target_name = spec.name
        self.board = spec.board if spec.family == "c" else None
        self.arch = spec.board if spec.family == "arm" else None
        self.scheduled = scheduled  # ARM: the scheduled Relax module, built into a runtime library by export(.so)
        self.inputs = inputs
        self.report = report
        self.num_outputs = len(bundle.outputs)
        self._stats = None

    def __call__(self, *args):
        x = input_arrays(args, self.inputs)
        if self.arch is not None:
            return self.bundle.run_linux(x)
        if self.board is None:
            return self.bundle.run_host(x)
        y, instructions = self.bundle.run_board(x, self.board)
        self._record(instructions)
        return y

    def _record(self, instructions):
        from ..targets.qemu import stack_usage

        run = self.bundle.last_board_run
        sizes = getattr(run, "sizes", {}) or {}
        usage = stack_usage(run.elf.parent) if getattr(run, "elf", None) is not None else {}
        kernels = [usage[k] for k in self.bundle.kernels if k in usage]
        stack = usage["tvm_bnn_model_run"] + max(kernels, default=0) if "tvm_bnn_model_run" in usage else None
        text = int(sizes.get("text", 0))
        self._stats = BundleStats(
            flash_code_bytes=max(text - self.bundle.weight_bytes, 0), flash_weight_bytes=self.bundle.weight_bytes,
            ram_arena_bytes=self.bundle.arena_bytes, ram_arena_bytes_without_reuse=self.bundle.no_reuse_bytes,
            ram_static_bytes=int(sizes.get("data", 0)) + int(sizes.get("bss", 0)), ram_stack_bytes=stack,
            instructions_per_inference=int(round(instructions)), board=self.board)

    @property
    def stats(self) -> BundleStats:
        """Flash, RAM and instructions per inference (runs one inference on zeros the first time)."""
        if self.board is None:
            raise TvmBnnError(f"target {self.target_name!r} has no board to measure on; use a cortex-m target")
        if self._stats is None:
            self(*(np.zeros(shape, dtype) for _, shape, dtype in self.inputs))
        return self._stats

    def export(self, path: str, overwrite: bool = False) -> str:
        """Copy the C bundle (model.h, model.c, weights.c, Makefile, README.md; kernels.o on ARM) into directory
        ``path``. ARM targets: a ``path`` ending in ``.so`` is a TVM runtime library cross-compiled for the board
        (multi-threaded; ``tvm_bnn.load`` it there)."""
        path = os.fspath(path)
        if path.endswith(".so"):
            return self._export_library(path, overwrite)
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            if not overwrite:
                raise FileExistsError(f"{path!r} exists and is not empty; pass overwrite=True (--force on the CLI) "
                                      "to replace it")
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        shutil.copytree(self.bundle.out_dir, path, dirs_exist_ok=True)
        return path

    def _export_library(self, path: str, overwrite: bool) -> str:
        from tvm import relax
        from tvm.support import cc

        from ..targets import qemu

        if self.scheduled is None:
            raise TvmBnnError(f"target {self.target_name!r} exports a C bundle directory, not a .so; "
                              "use an ARM Linux or x86 target for a TVM runtime library")
        compiler = qemu.require_tool(qemu.linux_arch(self.arch).cc)
        executable = relax.build(self.scheduled, self.spec.target, relax_pipeline=lower_pipeline(self.spec))
        return write_library(executable, path, self.target_name, self.spec.target, self.inputs, self.num_outputs,
                             self.report, overwrite, fcompile=cc.cross_compiler(compiler))

    def __repr__(self):
        return (f"<tvm_bnn.BundleModel target={self.target_name} inputs={[(n, s) for n, s, _ in self.inputs]} "
                f"binarized {self.report.num_binarized}/{len(self.report)} layers>")
