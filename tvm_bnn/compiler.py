"""tvm_bnn.compile: model -> Relax -> our passes -> TVM build -> a callable CompiledModel with a report."""
from __future__ import annotations

import json
import os

import numpy as np
import tvm
from tqdm.auto import tqdm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

from .errors import InputError, TvmBnnError
from .frontends import import_model
from .frontends.importer import layer_reach, main_outputs
from .passes import binarize_module, cleanup
from .passes.graph import static_shape
from .report import LayerRecord, Report
from .schedules import ScheduleKernels
from .targets import resolve_target

META_SUFFIX = ".tvm_bnn.json"


def fuse_pipeline() -> tvm.transform.Pass:
    """Legalize the float ops to TIR and fuse them; the PrimFuncs of the result are the tuning tasks."""
    return tvm.transform.Sequential(
        [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
         relax.transform.FuseOps(), relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()],
        name="tvm_bnn.Fuse")


def schedule_pipeline(spec, tuning_db: str | None = None) -> tvm.transform.Pass:
    """Fuse, apply tuned schedules from ``tuning_db`` if given, and give every other PrimFunc our default."""
    passes = [fuse_pipeline()]
    if tuning_db is not None:
        from .core.tuning_db import apply_database_pass

        passes.append(apply_database_pass(tuning_db, spec))
    passes.append(ScheduleKernels(spec))
    return tvm.transform.Sequential(passes, name="tvm_bnn.Schedule")


def lower_pipeline(spec) -> tvm.transform.Pass:
    """The scheduled module down to the Relax VM."""
    return tvm.transform.Sequential(
        cpu_pipeline.dataflow_lower_passes(spec.target) + cpu_pipeline.finalize_passes(spec.target),
        name="tvm_bnn.Lower")


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


def input_arrays(args, inputs) -> list:
    """numpy arrays or torch tensors -> contiguous numpy arrays of the compiled ``inputs`` [(name, shape, dtype)],
    checked: the count, each shape, and a dtype that casts safely ("same_kind")."""
    if len(args) != len(inputs):
        names = ", ".join(n for n, _, _ in inputs)
        raise InputError(f"the model takes {len(inputs)} input(s) ({names}), got {len(args)}")
    out = []
    for value, (name, shape, dtype) in zip(args, inputs):
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        arr = np.ascontiguousarray(np.asarray(value))
        if tuple(arr.shape) != tuple(shape):
            raise InputError(f"input {name!r}: shape {tuple(arr.shape)} does not match the compiled shape "
                             f"{tuple(shape)}; compile again with example_inputs of this shape")
        if arr.dtype != np.dtype(dtype):
            if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                raise InputError(f"input {name!r}: dtype {arr.dtype} cannot be used as {dtype}")
            arr = arr.astype(dtype)
        out.append(arr)
    return out


def write_library(executable, path, target_name, target, inputs, num_outputs, report, overwrite: bool = False,
                  fcompile=None) -> str:
    """``executable.export_library(path)`` (``fcompile``: a cross compiler) + the metadata ``load`` reads."""
    path = os.fspath(path)
    if not path.endswith(".so"):
        raise TvmBnnError(f"path={path!r}: a TVM runtime library is a shared library; use a name ending in .so")
    for p in (path, path + META_SUFFIX):
        if os.path.exists(p) and not overwrite:
            raise FileExistsError(f"{p!r} already exists; pass overwrite=True (--force on the CLI) to replace it")
    if fcompile is None:
        executable.export_library(path)
    else:
        executable.export_library(path, fcompile=fcompile)
    meta = {"target": target_name, "target_json": str(target.export()) if target else "",
            "inputs": [[n, list(s), d] for n, s, d in inputs], "num_outputs": num_outputs,
            "report": [r.as_dict() for r in report]}
    with open(path + META_SUFFIX, "w") as f:
        json.dump(meta, f, indent=1)
    return path


def _flatten(result):
    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    if hasattr(result, "numpy"):
        return [result.numpy()]
    outs = []
    for item in result:
        outs.extend(_flatten(item))
    return outs


def _name_layers(mod, names, keys=None):
    """The frontend's layer names in the module's conv2d/matmul order, or None if they do not line up one-to-one.
    ``keys`` (per name: the model inputs it depends on, the outputs it reaches) match names to layers first; order
    decides only among layers with the same key."""
    reach = layer_reach(mod)
    if len(names) != len(reach):
        return None
    if keys is None:
        return names
    free = list(zip(keys, names))
    out = []
    for key in reach:
        k = next((i for i, (kk, _) in enumerate(free) if kk == key), None)
        if k is None:
            return None
        out.append(free.pop(k)[1])
    return out


def analyse(model, example_inputs=None):
    """Import and run our passes without building: (imported model, optimized module, Report)."""
    imported = import_model(model, example_inputs)
    with tvm.ir.transform.PassContext(opt_level=3):
        cleaned = cleanup()(imported.mod)
        names = _name_layers(cleaned, imported.layer_names, imported.layer_keys)
        optimized, records = binarize_module(cleaned, names)
    return imported, optimized, Report(records)


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
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    meta_path = path + META_SUFFIX
    if not os.path.exists(meta_path):
        raise TvmBnnError(f"{meta_path!r} is missing: tvm_bnn.load needs the metadata written beside the library "
                          "by CompiledModel.export")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        report = Report(LayerRecord(**{**r, "input_shape": tuple(r["input_shape"]),
                                       "weight_shape": tuple(r["weight_shape"]),
                                       "output_shape": tuple(r["output_shape"])}) for r in meta["report"])
        inputs = [(str(n), tuple(int(d) for d in s), str(d_)) for n, s, d_ in meta["inputs"]]
        target, num_outputs = str(meta["target"]), int(meta["num_outputs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TvmBnnError(f"{meta_path!r}: the metadata written by CompiledModel.export is damaged "
                          f"({exc.__class__.__name__}: {exc}); export the model again") from exc
    try:
        lib = tvm.runtime.load_module(path)
        executable = relax.VMExecutable(lib) if hasattr(relax, "VMExecutable") else lib
    except Exception as exc:  # noqa: BLE001 - TVM raises several kinds for a file that is not its library
        raise TvmBnnError(f"{path!r} is not a TVM runtime library for this machine ({str(exc).splitlines()[0]}); "
                          "export it again, or load it on the machine it was built for") from exc
    return CompiledModel(executable, target, None, inputs, num_outputs, report)
