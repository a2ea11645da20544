"""The model pipeline every build and tuning run shares: import -> cleanup -> our passes (``analyse``), then
fused (``fuse_pipeline``: the tuning tasks), scheduled (``schedule_pipeline``) and lowered to the Relax VM
(``lower_pipeline``)."""
from __future__ import annotations

from typing import NamedTuple

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

from ..frontends import ImportedModel, import_model
from ..frontends.importer import layer_reach, main_outputs
from ..passes import binarize_module, cleanup
from ..passes.fuse_residual import FuseResidualAdd
from ..passes.graph import static_shape
from ..report import Report
from ..schedules import ScheduleKernels
from ..schedules.ternary_pairs import FuseTernaryPairs
from ..schedules.weight_layout import LayOutConvWeights, layout_for
from ..schedules.x86 import is_arm


def fuse_pipeline(target=None) -> tvm.transform.Pass:
    """Legalize the float ops to TIR and fuse them; the PrimFuncs of the result are the tuning tasks. With a
    ``target``, the binary convs whose weights that target's kernels read in another layout get it at compile time
    first (schedules/weight_layout.py), and where its kernels have a ternary form, pairs of weight planes become
    ternary kernels (schedules/ternary_pairs.py). A float conv kernel's output added to a tensor of its shape becomes
    one kernel (passes/fuse_residual.py), except on ARM NEON targets."""
    layout = [LayOutConvWeights(target)] if target is not None else []
    if target is None or not is_arm(target):
        # after the ternary pairs, before the weights are laid out; not on NEON, whose byte-lane conv counts more
        # instructions for the sum in its epilogue than a separate add does (Bi-Real-Net on aarch64: 113.6 M
        # against 112.3 M)
        layout = [FuseResidualAdd] + layout
    if layout_for(target) == "generic":  # its binary conv's layout has a ternary form (schedules/ternary_pairs.py)
        layout = [FuseTernaryPairs("HWIO", stack_planes=True)] + layout
    elif layout_for(target) is not None:  # the byte-lane kernels: one ternary conv per activation plane
        layout = [FuseTernaryPairs("OHWI")] + layout
    return tvm.transform.Sequential(
        layout + [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                  relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
                  relax.transform.DeadCodeElimination()],
        name="tvm_bnn.Fuse")


def schedule_pipeline(spec, tuning_db: str | None = None) -> tvm.transform.Pass:
    """Fuse, apply tuned schedules from ``tuning_db`` if given, and give every other PrimFunc our default."""
    passes = [fuse_pipeline(spec.target)]
    if tuning_db is not None:
        from .tuning_db import apply_database_pass

        passes.append(apply_database_pass(tuning_db, spec))
    passes.append(ScheduleKernels(spec))
    return tvm.transform.Sequential(passes, name="tvm_bnn.Schedule")


def lower_pipeline(spec, suffix: str | None = None) -> tvm.transform.Pass:
    """The scheduled module down to the Relax VM. ``suffix``: appended to the name of every function (PrimFuncs and
    the Relax ``main``), so that builds of one model for several CPUs link into one library without clashes."""
    passes = cpu_pipeline.dataflow_lower_passes(spec.target) + cpu_pipeline.finalize_passes(spec.target)
    if suffix:
        passes += [_suffix_symbols(suffix), relax.transform.NormalizeGlobalVar()]
    return tvm.transform.Sequential(passes, name="tvm_bnn.Lower")


def _suffix_symbols(suffix: str) -> tvm.transform.Pass:
    """``global_symbol`` += suffix on every function that has one (NormalizeGlobalVar then renames the GlobalVars
    and every call to match: the Relax VM calls PrimFuncs by their GlobalVar's name)."""

    @tvm.transform.module_pass(opt_level=0, name="tvm_bnn.SuffixSymbols")
    def _pass(mod, _ctx):
        for gvar, func in list(mod.functions_items()):
            symbol = func.attrs.get("global_symbol") if func.attrs is not None else None
            if symbol is not None:
                mod[gvar] = func.with_attr("global_symbol", str(symbol) + suffix)
        return mod

    return _pass


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


class AnalysedModel(NamedTuple):
    """What ``analyse`` gives every backend (and unpacks as the triple it always was)."""

    imported: ImportedModel
    optimized: tvm.IRModule  # after our passes: binary kernels as call_tir, float layers as Relax ops
    report: Report

    @property
    def inputs(self) -> list:
        """[(name, shape, dtype)] per model input: what the compiled model checks its arguments against."""
        main = self.imported.mod["main"]
        return [(name, static_shape(p), str(p.ty.dtype)) for name, p in zip(self.imported.input_names, main.params)]

    @property
    def num_outputs(self) -> int:
        return main_outputs(self.imported.mod)


def analyse(model, example_inputs=None) -> AnalysedModel:
    """Import and run our passes without building: (imported model, optimized module, Report)."""
    imported = import_model(model, example_inputs)
    with tvm.ir.transform.PassContext(opt_level=3):
        cleaned = cleanup()(imported.mod)
        names = _name_layers(cleaned, imported.layer_names, imported.layer_keys)
        optimized, records = binarize_module(cleaned, names)
    return AnalysedModel(imported, optimized, Report(records))
