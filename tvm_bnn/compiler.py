"""tvm_bnn.compile: model -> Relax -> our passes -> TVM build -> a callable CompiledModel with a report."""
from __future__ import annotations

import numpy as np
import tvm
from tqdm.auto import tqdm
from tvm import relax

from .core.exported_library import read_library, write_library
from .core.inputs import input_arrays
from .core.pipeline import analyse, lower_pipeline, schedule_pipeline
from .errors import TvmBnnError
from .frontends.importer import main_outputs
from .passes.graph import static_shape
from .report import Report
from .targets import resolve_target


class CompiledModel:
    """A compiled model: call it like a function; ``report`` says what was binarized."""

    def __init__(self, executable, spec_name: str, target, inputs: list, num_outputs: int, report: Report,
                 scheduled=None):
        self.executable = executable
        self.scheduled = scheduled  # the scheduled IRModule (for profile()); None after load()
        self.target_name = spec_name
        self.target = target
        self.inputs = inputs  # [(name, shape, dtype)]
        self.num_outputs = num_outputs
        self.report = report
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
        from .profiling import profile_kernels

        if self.scheduled is None:
            raise TvmBnnError("profile() needs the model as compiled in this process, not a loaded library")
        return profile_kernels(self.scheduled, self.target, number, repeat)

    def export(self, path: str, overwrite: bool = False) -> str:
        """Write a TVM runtime library (``.so``) and its metadata; ``tvm_bnn.load(path)`` gives the model back."""
        return write_library(self.executable, path, self.target_name, self.target, self.inputs, self.num_outputs,
                             self.report, overwrite)

    def __repr__(self):
        return (f"<tvm_bnn.CompiledModel target={self.target_name} inputs={[(n, s) for n, s, _ in self.inputs]} "
                f"binarized {self.report.num_binarized}/{len(self.report)} layers>")


def _flatten(result):
    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    if hasattr(result, "numpy"):
        return [result.numpy()]
    outs = []
    for item in result:
        outs.extend(_flatten(item))
    return outs


def compile(model, target="x86", example_inputs=None, *, tuning_db: str | None = None,  # noqa: A001
            progress: bool | None = None) -> CompiledModel:
    """Compile a PyTorch module / ExportedProgram / ONNX model or path / Relax IRModule for ``target``.

    ``tuning_db``: a ``work_dir`` written by :func:`tvm_bnn.tune`; its best schedules replace the defaults.
    """
    spec = resolve_target(target)
    if spec.family == "c":
        return _compile_bundle(model, spec, example_inputs, tuning_db)
    if spec.family == "arm":
        return _compile_arm(model, spec, example_inputs, tuning_db)
    steps = tqdm(total=3, desc="tvm_bnn.compile", disable=(progress is False) or None, leave=False)
    try:
        steps.set_postfix_str("import + binarize")
        imported, optimized, report = analyse(model, example_inputs)
        steps.update()
        steps.set_postfix_str("build")
        with spec.target:
            scheduled = schedule_pipeline(spec, tuning_db)(optimized)
            executable = relax.build(scheduled, spec.target, relax_pipeline=lower_pipeline(spec))
        steps.update()
        main = imported.mod["main"]
        inputs = [(name, static_shape(p), str(p.ty.dtype)) for name, p in zip(imported.input_names, main.params)]
        num_outputs = main_outputs(imported.mod)
        steps.update()
    finally:
        steps.close()
    return CompiledModel(executable, spec.name, spec.target, inputs, num_outputs, report, scheduled)


def _compile_bundle(model, spec, example_inputs, tuning_db):
    """Bare-metal / portable C: a standalone bundle (deploy/bundle.py) instead of a TVM runtime library."""
    import tempfile

    from .deploy.bundle import build_bundle
    from .deploy.bundle_model import BundleModel
    from .targets import qemu

    if tuning_db is not None:
        raise TvmBnnError(f"tuning_db: target {spec.name!r} builds a C bundle, which takes no tuning database")
    if spec.board is not None:  # fail early, naming the package, rather than at the first call
        qemu.require_tool("arm-none-eabi-gcc")
        qemu.require_tool("qemu-system-arm")
    imported, optimized, report = analyse(model, example_inputs)
    main = imported.mod["main"]
    inputs = [(name, static_shape(p), str(p.ty.dtype)) for name, p in zip(imported.input_names, main.params)]
    llvm = spec.target.kind.name == "llvm"  # a thumbv7em LLVM target: kernels from TVM's LLVM codegen
    bundle = build_bundle(optimized, tempfile.mkdtemp(prefix="tvm_bnn_bundle_"), overwrite=True,
                          target=spec if llvm else None)
    return BundleModel(bundle, spec, inputs, report)


def _compile_arm(model, spec, example_inputs, tuning_db):
    """ARM Linux: a bundle whose kernels TVM's LLVM codegen compiled for the board (run here under qemu-user), and
    the scheduled module, built into a cross-compiled TVM runtime library on ``export("model.so")``."""
    import tempfile

    from .deploy.bundle import build_bundle
    from .deploy.bundle_model import BundleModel
    from .targets import qemu

    arch = qemu.linux_arch(spec.board)
    qemu.require_tool(arch.cc)  # fail early, naming the package, rather than at the first call
    imported, optimized, report = analyse(model, example_inputs)
    main = imported.mod["main"]
    inputs = [(name, static_shape(p), str(p.ty.dtype)) for name, p in zip(imported.input_names, main.params)]
    bundle = build_bundle(optimized, tempfile.mkdtemp(prefix="tvm_bnn_bundle_"), overwrite=True, target=spec)
    with spec.target:
        scheduled = schedule_pipeline(spec, tuning_db)(optimized)
    return BundleModel(bundle, spec, inputs, report, scheduled=scheduled)




def load(path: str) -> CompiledModel:
    """Load a model written by ``CompiledModel.export``."""
    lib = read_library(path)
    return CompiledModel(lib.executable, lib.target_name, None, lib.inputs, lib.num_outputs, lib.report)
