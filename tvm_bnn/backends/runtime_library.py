"""The TVM runtime library backend (family "x86"): our schedules, ``relax.build`` to a shared library, run here by
the Relax VM; ``export`` writes the ``.so`` and its metadata (``core.exported_library``)."""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..core.exported_library import write_library
from ..core.inputs import input_arrays
from ..core.pipeline import lower_pipeline, schedule_pipeline
from ..errors import TvmBnnError
from ..report import Report
from .base import Backend, CompiledModel


class LibraryModel(CompiledModel):
    """A model built by ``relax.build`` into a TVM runtime library and run by the Relax VM on this machine."""

    def __init__(self, executable, spec_name: str, target, inputs: list, num_outputs: int, report: Report,
                 scheduled=None):
        super().__init__(spec_name, inputs, num_outputs, report)
        self.executable = executable
        self.scheduled = scheduled  # the scheduled IRModule (for profile()); None after load()
        self.target = target
        self._vm = None

    def _machine(self):
        if self._vm is None:
            self._vm = relax.VirtualMachine(self.executable, tvm.cpu())
        return self._vm

    def _convert(self, args):
        return [tvm.runtime.tensor(arr, tvm.cpu()) for arr in input_arrays(args, self.inputs)]

    def __call__(self, *args):
        result = self._machine()["main"](*self._convert(args))
        outs = _flatten(result)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def time(self, *args, number: int = 10, repeat: int = 5) -> float:
        """Median seconds per call (TVM's time_evaluator; inputs prepared once)."""
        vm = self._machine()
        vm.set_input("main", *self._convert(args))
        timer = vm.time_evaluator("invoke_stateful", tvm.cpu(), number=number, repeat=repeat)
        return float(np.median(timer("main").results))

    def profile(self, number: int = 5, repeat: int = 3):
        """Per-kernel latency breakdown (see tvm_bnn.profiling); print it with format_breakdown."""
        from ..profiling import profile_kernels

        if self.scheduled is None:
            raise TvmBnnError("profile() needs the model as compiled in this process, not a loaded library")
        return profile_kernels(self.scheduled, self.target, number, repeat)

    def export(self, path: str, overwrite: bool = False) -> str:
        """Write a TVM runtime library (``.so``) and its metadata; ``tvm_bnn.load(path)`` gives the model back."""
        return write_library(self.executable, path, self.target_name, self.target, self.inputs, self.num_outputs,
                             self.report, overwrite)


def _flatten(result):
    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    if hasattr(result, "numpy"):
        return [result.numpy()]
    outs = []
    for item in result:
        outs.extend(_flatten(item))
    return outs


def build_executable(scheduled, spec):
    """The scheduled module lowered to the Relax VM and compiled for ``spec``'s target."""
    return relax.build(scheduled, spec.target, relax_pipeline=lower_pipeline(spec))


class RuntimeLibraryBackend(Backend):
    def build(self, spec, analysed, tuning_db):
        with spec.target:
            scheduled = schedule_pipeline(spec, tuning_db)(analysed.optimized)
            executable = build_executable(scheduled, spec)
        return LibraryModel(executable, spec.name, spec.target, analysed.inputs, analysed.num_outputs,
                            analysed.report, scheduled)
