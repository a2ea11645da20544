"""The standalone C bundle backend (family "c": bare-metal Cortex-M and portable C). ``deploy.build_bundle``
writes plain C; ``cm(x)`` builds firmware around it and runs it on an emulated board under QEMU, or, for target
"c", with the host's gcc."""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass

import numpy as np

from ..core.inputs import input_arrays
from ..deploy.bundle import build_bundle
from ..errors import TvmBnnError
from ..targets import qemu
from .base import Backend, CompiledModel


@dataclass
class BundleStats:
    """Sizes and cost of one inference; the instruction count is measured on the emulated board."""

    flash_code_bytes: int  # .text less the weights and the test input: the model's code and the startup (~1 KB)
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


class BundleModel(CompiledModel):
    """A C bundle (``bundle``: ``deploy.bundle.Bundle``); ``cm(x)`` runs it on the emulated ``board`` (None: the
    host's gcc)."""

    def __init__(self, bundle, spec, inputs, report):
        super().__init__(spec.name, inputs, len(bundle.outputs), report)
        self.bundle = bundle
        self.spec = spec
        self.board = spec.board
        self._stats = None

    def __call__(self, *args):
        """Safe from several threads at once: each call builds and runs its program in a directory of its own."""
        x = input_arrays(args, self.inputs)
        if self.board is None:
            return self.bundle.run_host(x)
        workdir = tempfile.mkdtemp(prefix="tvm_bnn_bundle_fw_")
        try:
            y, instructions, run = self.bundle.board_run(x, self.board, workdir=workdir)
            self._record(run, instructions)  # this call's run, whatever other threads ran meanwhile
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return y

    def _record(self, run, instructions):
        sizes = getattr(run, "sizes", {}) or {}
        usage = qemu.stack_usage(run.elf.parent) if getattr(run, "elf", None) is not None else {}
        kernels = [usage[k] for k in self.bundle.kernels if k in usage]
        stack = usage["tvm_bnn_model_run"] + max(kernels, default=0) if "tvm_bnn_model_run" in usage else None
        text = int(sizes.get("text", 0))
        # the test firmware's flash also holds the input it was run on (const arrays): not the model's code
        inputs = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in self.bundle.inputs)
        self._stats = BundleStats(
            flash_code_bytes=max(text - self.bundle.weight_bytes - inputs, 0),
            flash_weight_bytes=self.bundle.weight_bytes,
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
        """Copy the C bundle (model.h, model.c, weights.c, Makefile, README.md; kernels.o from an LLVM target)
        into directory ``path``."""
        path = os.fspath(path)
        if path.endswith(".so"):
            raise TvmBnnError(f"target {self.target_name!r} exports a C bundle directory, not a .so; "
                              "use an ARM Linux or x86 target for a TVM runtime library")
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            if not overwrite:
                raise FileExistsError(f"{path!r} exists and is not empty; pass overwrite=True (--force on the CLI) "
                                      "to replace it")
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        shutil.copytree(self.bundle.out_dir, path, dirs_exist_ok=True)
        return path


def new_bundle_dir() -> str:
    return tempfile.mkdtemp(prefix="tvm_bnn_bundle_")


def owned_bundle_dir(model, bundle) -> None:
    """The model's bundle directory (a temporary one of ``new_bundle_dir``: ``export`` copies it) goes with the model:
    removed when the model is collected, or at exit."""
    weakref.finalize(model, shutil.rmtree, str(bundle.out_dir), True)


class CBundleBackend(Backend):
    def check(self, spec, tuning_db):
        if tuning_db is not None:
            raise TvmBnnError(f"tuning_db: target {spec.name!r} builds a C bundle, which takes no tuning database")
        if spec.board is not None:  # fail early, naming the package, rather than at the first call
            qemu.require_tool("arm-none-eabi-gcc")
            qemu.require_tool("qemu-system-arm")

    def build(self, spec, analysed, tuning_db):
        llvm = spec.target.kind.name == "llvm"  # a thumbv7em LLVM target: kernels from TVM's LLVM codegen
        mve = spec.board is not None and qemu.board(spec.board).mve
        bundle = build_bundle(analysed.optimized, new_bundle_dir(), overwrite=True, target=spec if llvm else None,
                              mve=mve)
        model = BundleModel(bundle, spec, analysed.inputs, analysed.report)
        owned_bundle_dir(model, bundle)
        return model
