"""tvm_bnn.compile and tvm_bnn.load. compile: resolve the target -> the model pipeline (``core.pipeline``) -> the
target family's backend (``backends.BACKENDS``) -> a CompiledModel with a report."""
from __future__ import annotations

from tqdm.auto import tqdm

import tvm

from .backends import CompiledModel, LibraryModel, backend_for
from .backends.runtime_library import Variant
from .core.exported_library import read_library
from .core.pipeline import analyse
from .targets import resolve_target


def compile(model, target="x86", example_inputs=None, *, tuning_db: str | None = None,  # noqa: A001
            progress: bool | None = None, require_binary: bool = False) -> CompiledModel:
    """Compile a PyTorch module / ExportedProgram / ONNX model or path / Relax IRModule for ``target``.

    ``tuning_db``: a ``work_dir`` written by :func:`tvm_bnn.tune`; its best schedules replace the defaults.
    A layer whose weights are binary but whose activation input was not recognised as binarized stays float; each
    such layer is warned about with the reason, or, with ``require_binary=True``, raises
    :class:`tvm_bnn.NotBinarizedError` before anything is built.
    """
    spec = resolve_target(target)
    backend = backend_for(spec)
    backend.check(spec, tuning_db)
    steps = tqdm(total=2, desc="tvm_bnn.compile", disable=(progress is False) or None, leave=False)
    try:
        steps.set_postfix_str("import + binarize")
        analysed = analyse(model, example_inputs)
        analysed.report.check_binarized(require=require_binary)
        steps.update()
        steps.set_postfix_str("build")
        compiled = backend.build(spec, analysed, tuning_db)
        steps.update()
    finally:
        steps.close()
    return compiled


def load(path: str, level: str | None = None) -> CompiledModel:
    """Load a model written by ``CompiledModel.export`` as a TVM runtime library (``.so``).

    The CPU features its code needs are checked first: a library this host cannot run raises
    :class:`tvm_bnn.CPUFeatureError` (naming the features) instead of dying of an illegal instruction. Of a
    portable library (``x86-portable``) the best level this host has is loaded; ``level`` (``"avx2"``, ...) or the
    environment variable ``TVM_BNN_X86_LEVEL`` choose a lower one."""
    lib = read_library(path, level)
    variants, loaded = [], 0
    for v in lib.variants:
        if v.level == lib.variant.level:
            loaded = len(variants)
        target = _target_or_none(v.target)
        executable = lib.executable if v.level == lib.variant.level else None
        variants.append(Variant(v.level, target, v.required_features, executable, v.entry))
    return LibraryModel(lib.target_name, lib.inputs, lib.num_outputs, lib.report, variants, loaded=loaded)


def _target_or_none(cfg: dict):
    try:
        return tvm.target.Target(cfg) if cfg else None
    except Exception:  # noqa: BLE001 - informational only: a target this TVM cannot describe
        return None
