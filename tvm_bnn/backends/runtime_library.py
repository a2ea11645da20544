"""The TVM runtime library backend (family "x86"): our schedules, ``relax.build`` to a shared library, run here by
the Relax VM; ``export`` writes the ``.so`` and its metadata (``core.exported_library``).

x86 code compiled for a feature this host lacks would die with SIGILL, so the model knows the features each build
needs (``Variant.required_features``) and checks them against the host (``targets.x86_host``) before it runs,
times or profiles anything; compiling for another CPU is fine. ``x86-portable`` builds the model once per ISA level
(one ``Variant`` each) and runs the best one this host has; ``export`` links them into one library. A model built
for ``x86`` (this host, no CPU pinned) exports that portable library by default: the other levels are built then.

A model may be called from several threads at once (a threaded server): each call runs on a VirtualMachine of its
own, taken from a pool over the variant's executable (``deploy.runtime_loader.MachinePool``), so calls run in
parallel and none sees another's registers.
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
import tvm
from tqdm.auto import tqdm
from tvm import relax

from ..core.exported_library import LibraryVariant, check_writable, combine_levels, target_dict, write_library
from ..core.inputs import input_arrays
from ..core.pipeline import lower_pipeline, schedule_pipeline
from ..deploy.runtime_loader import MachinePool
from ..errors import TvmBnnError
from ..report import Report
from ..targets import resolve_target, tir_pipeline, x86_host
from .base import Backend, CompiledModel


class Variant(NamedTuple):
    """One build of the model: a level of a portable build (``level``), or the only one (None)."""

    level: str | None
    target: object  # tvm.target.Target (None after load: the metadata's dict is in library_variant)
    required_features: tuple
    executable: object
    entry: str  # the Relax function to call
    scheduled: object = None  # the scheduled IRModule (for profile()); None after load()


class LibraryModel(CompiledModel):
    """A model built by ``relax.build`` into a TVM runtime library and run by the Relax VM on this machine.

    ``variants``: the builds it holds, best first (one per ISA level for ``x86-portable``); ``variant`` is the one
    this host runs (chosen at the first call: the best whose features the host has, or ``select_level``). A model
    from ``tvm_bnn.load`` has the variant chosen at load (``loaded``: its index) and only that one's executable.

    Thread-safe: calls, ``time``, ``profile``, ``select_level`` and ``export`` may come from any threads at once.
    A call runs on a VM of its own (``MachinePool``, one pool per variant); ``self._lock`` guards the choice of
    variant, the pools, and the creation of VMs (which reads the executable that ``executable`` may extend)."""

    def __init__(self, spec_name: str, inputs: list, num_outputs: int, report: Report, variants: list, *,
                 source=None, loaded: int | None = None):
        super().__init__(spec_name, inputs, num_outputs, report)
        self.variants = list(variants)
        self._source = source  # (analysed model, tuning_db): to build the portable library on export
        self._loaded = loaded is not None
        self._active = self.variants[loaded] if self._loaded else None
        self._pools = {}  # variant index -> MachinePool
        self._combined = None
        self._lock = threading.RLock()

    # ---------------------------------------------------------------------------------------- which build runs

    @property
    def levels(self) -> list:
        """The ISA levels this model holds, best first ([] for a build for one CPU)."""
        return [v.level for v in self.variants if v.level is not None]

    @property
    def variant(self) -> Variant:
        """The build this host runs; raises CPUFeatureError if it can run none."""
        active = self._active  # read once: select_level may change it meanwhile
        if active is None:
            with self._lock:  # two threads' first calls: the first to take the lock chooses, the other sees it
                active = self._active if self._active is not None else self.select_level(None)
        return active

    def select_level(self, level: str | None) -> Variant:
        """Run the given ISA level of a portable build (None: the best this host has); checked against the host.
        Calls already running finish on the level they started with."""
        if level is not None and not self.levels:
            raise TvmBnnError(f"level={level!r}: target {self.target_name!r} is a build for one CPU; compile with "
                              "target='x86-portable' for a model with levels")
        i = x86_host.choose_variant([(v.level, v.required_features) for v in self.variants], self.target_name,
                                    level)
        if self._loaded and self.variants[i] is not self._active:
            raise TvmBnnError(f"this model was loaded as level {self._active.level!r}; load level "
                              f"{self.variants[i].level!r} with tvm_bnn.load(path, level={self.variants[i].level!r})")
        with self._lock:
            self._active = self.variants[i]
            return self._active

    @property
    def level(self) -> str | None:
        """The ISA level this host runs (None for a build for one CPU)."""
        return self.variant.level

    @property
    def required_features(self) -> tuple:
        """The CPU features (LLVM names) running this model needs: those of the build it runs, else of its lowest
        build (not checked against the host here: compiling for another CPU is fine)."""
        return (self._active or self.variants[-1]).required_features

    def _single(self):
        """The one build that needs no choosing: the only one, or the one loaded; None for a portable build."""
        if self._loaded:
            return self._active
        return self.variants[0] if len(self.variants) == 1 else None

    @property
    def target(self):
        return (self._single() or self.variant).target

    @property
    def scheduled(self):
        return (self._single() or self.variant).scheduled

    @property
    def executable(self):
        """The executable of a build for one CPU (or of the level loaded); of a portable build, every level's in
        one (what ``export`` writes)."""
        single = self._single()
        if single is not None:
            return single.executable
        with self._lock:  # combining adds imports to the baseline's executable: not while a VM is created on it
            if self._combined is None:
                self._combined = combine_levels([v.executable for v in self.variants])
            return self._combined

    # --------------------------------------------------------------------------------------------------- running

    def _machines(self):
        """(variant, its MachinePool): the variant this host runs, checked against the host."""
        variant = self.variant
        x86_host.check_runnable(variant.required_features, self._what(variant))
        i = next(i for i, v in enumerate(self.variants) if v is variant)
        pool = self._pools.get(i)
        if pool is None:
            with self._lock:
                pool = self._pools.get(i) or self._pools.setdefault(i, MachinePool(variant.executable, self._lock))
        return variant, pool

    def _what(self, variant) -> str:
        return f"level {variant.level!r} of target {self.target_name!r}" if variant.level else \
            f"target {self.target_name!r}"

    def _convert(self, args):
        return [as_input_tensor(arr) for arr in input_arrays(args, self.inputs)]

    def __call__(self, *args):
        variant, machines = self._machines()
        inputs = self._convert(args)
        with machines.checkout() as vm:
            outs = _flatten(vm[variant.entry](*inputs))  # numpy copies, made before the VM serves another call
        return outs[0] if len(outs) == 1 else tuple(outs)

    def time(self, *args, number: int = 10, repeat: int = 5) -> float:
        """Median seconds per call (TVM's time_evaluator; inputs prepared once). Calls from other threads meanwhile
        are safe (they share the cores, so the figure is then theirs too)."""
        variant, machines = self._machines()
        inputs = self._convert(args)
        # set_input + invoke_stateful keep the inputs and outputs in the VM: a VM of its own, not put back after
        with machines.checkout(keep=False) as vm:
            vm.set_input(variant.entry, *inputs)
            timer = vm.time_evaluator("invoke_stateful", tvm.cpu(), number=number, repeat=repeat)
            results = timer(variant.entry).results
        return float(np.median(results))

    def profile(self, number: int = 5, repeat: int = 3):
        """Per-kernel latency breakdown (see tvm_bnn.profiling); print it with format_breakdown."""
        from ..profiling import profile_kernels

        variant = self.variant
        if variant.scheduled is None:
            raise TvmBnnError("profile() needs the model as compiled in this process, not a loaded library")
        x86_host.check_runnable(variant.required_features, self._what(variant), "profile")
        return profile_kernels(variant.scheduled, variant.target, number, repeat, tir_pipeline.NAME)

    # ------------------------------------------------------------------------------------------------- exporting

    def export(self, path: str, overwrite: bool = False, portable: bool | None = None,
               progress: bool | None = None) -> str:
        """Write a TVM runtime library (``.so``) and its metadata; ``tvm_bnn.load(path)`` gives the model back.

        ``portable``: write the ``x86-portable`` library (every ISA level, the best chosen where it loads); the
        default for a model compiled for ``x86`` (this host: no CPU pinned) and for ``x86-portable``. The levels
        a model does not hold yet are built now (``progress``: a progress bar). ``portable=False`` writes the build
        as compiled (for this CPU and those with its features only)."""
        if portable is None:
            portable = bool(self.levels) or (self.target_name == "x86" and self._source is not None)
        if not portable or self.levels:
            if self._loaded:
                raise TvmBnnError("a model from tvm_bnn.load() is exported already: copy its .so and .tvm_bnn.json")
            if not portable and self.levels:
                raise TvmBnnError(f"portable=False: target {self.target_name!r} holds every level; compile for "
                                  "one CPU (e.g. target='x86') to export a single build")
            return self._write(path, overwrite, self)
        if self._source is None:
            raise TvmBnnError(f"portable=True needs the model as compiled in this process (target "
                              f"{self.target_name!r}); compile it with target='x86-portable'")
        check_writable(path, overwrite)  # before the build, which takes a while
        analysed, tuning_db = self._source
        spec = resolve_target("x86-portable")
        variants = build_levels(spec, analysed, tuning_db, progress, desc="tvm_bnn.export")
        model = LibraryModel(spec.name, self.inputs, self.num_outputs, self.report, variants)
        return self._write(path, overwrite, model)

    @staticmethod
    def _write(path, overwrite, model) -> str:
        levels = [LibraryVariant(v.level, v.entry, v.required_features, target_dict(v.target))
                  for v in model.variants] if model.levels else None
        return write_library(model.executable, path, model.target_name, model.variants[-1].target, model.inputs,
                             model.num_outputs, model.report, overwrite, levels=levels)

    def __repr__(self):
        text = super().__repr__()
        if self.levels:
            text = text[:-1] + f" levels={self.levels}>"
        return text


INPUT_ALIGNMENT = 64  # bytes: what TVM allocates its own tensors with, and what its kernels may assume


def as_input_tensor(arr: np.ndarray):
    """A model input as a TVM tensor: the array's own memory when it is C-contiguous and aligned as TVM's tensors
    are (a torch tensor's memory, an aligned numpy array: the VM only reads its inputs, and the DLPack capsule keeps
    the array alive for the call), else a copy. Saves a copy of the input per call (0.6 MB for a 224x224 image)."""
    if arr.flags.c_contiguous and arr.ctypes.data % INPUT_ALIGNMENT == 0 and arr.size:
        try:
            return tvm.runtime.from_dlpack(arr)  # checks the 64-byte alignment and contiguity itself
        except (BufferError, TypeError, ValueError):  # e.g. a read-only array: numpy exports no DLPack for it
            pass
    return tvm.runtime.tensor(arr, tvm.cpu())


def _flatten(result):
    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    if hasattr(result, "numpy"):
        return [result.numpy()]
    outs = []
    for item in result:
        outs.extend(_flatten(item))
    return outs


def build_executable(scheduled, spec, suffix: str | None = None):
    """The scheduled module lowered to the Relax VM and compiled for ``spec``'s target (``suffix``: on every
    function name, see ``core.pipeline.lower_pipeline``); TIR lowered by ``targets.tir_pipeline``."""
    return relax.build(scheduled, spec.target, relax_pipeline=lower_pipeline(spec, suffix),
                       tir_pipeline=tir_pipeline.NAME)


def build_one(spec, analysed, tuning_db, level: str | None = None) -> Variant:
    """One build of the model for ``spec``'s target; ``level``: as that level of a portable library."""
    with spec.target:
        scheduled = schedule_pipeline(spec, tuning_db)(analysed.optimized)
        executable = build_executable(scheduled, spec, f"_{level}" if level else None)
    required = x86_host.required_features(spec.target)
    return Variant(level, spec.target, required, executable, f"main_{level}" if level else "main", scheduled)


def build_levels(spec, analysed, tuning_db, progress: bool | None = None, desc: str = "x86-portable") -> list:
    """Every level of ``spec.levels``, best first. The float layers are built per level too (each level's code is
    compiled with one consistent target: AVX-512 float kernels where the host has them)."""
    bar = tqdm(spec.levels, desc=desc, disable=(progress is False) or None, leave=False)
    variants = []
    try:
        for name in bar:
            bar.set_postfix_str(f"level {name}")
            variants.append(build_one(spec.level_spec(name), analysed, tuning_db, name))
    finally:
        bar.close()
    return variants


class RuntimeLibraryBackend(Backend):
    def build(self, spec, analysed, tuning_db):
        if spec.levels:
            variants = build_levels(spec, analysed, tuning_db)
        else:
            variants = [build_one(spec, analysed, tuning_db)]
        source = (analysed, tuning_db) if spec.name == "x86" else None
        return LibraryModel(spec.name, analysed.inputs, analysed.num_outputs, analysed.report, variants,
                            source=source)
