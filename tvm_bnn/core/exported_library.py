"""An exported TVM runtime library on disk: the ``.so`` and the metadata beside it (target, the CPU features its
code needs, inputs, outputs, the report), i.e. what ``export`` writes and ``tvm_bnn.load`` reads.

A portable x86 library (``x86-portable``) holds one build of the model per ISA level (``targets.x86_host.LEVELS``)
in one shared object: each level's executable has its own entry (``main_avx2``) and kernel symbols
(``..._avx2``), the baseline level's executable is the root and imports the others. ``load`` checks the features
before it opens the file and takes the best level this host has (or the one asked for); the code of the other
levels is linked in but never called, so its instructions never run.

Metadata (``<lib>.tvm_bnn.json``, format 2): ``target`` (preset name), ``target_json``, ``required_features`` (LLVM
names: what running any part of the library needs; for a portable one, its lowest level's), ``levels`` (portable:
``[{"name", "entry", "required_features", "target_json"}]`` best first; [] otherwise), ``inputs``,
``num_outputs``, ``report``. A format-1 file (no ``required_features``) gets them from its ``target_json``.
"""
from __future__ import annotations

import ast
import json
import os
from typing import NamedTuple

import tvm
from tvm import relax
from tvm.support import cc

from ..errors import TvmBnnError
from ..report import LayerRecord, Report
from ..targets import x86_host
from .tvm_stderr import quiet_tvm_stderr

META_SUFFIX = ".tvm_bnn.json"
FORMAT = 2


class LibraryVariant(NamedTuple):
    """One build of the model in a library: a level of a portable library (``level``), or the only one (None)."""

    level: str | None
    entry: str  # the Relax function the VM calls
    required_features: tuple  # LLVM feature names the code needs
    target: dict  # the TVM target it was compiled for, as a dict ({} if unknown)
    executable: object = None  # the Relax VM executable (None: not loaded)


def target_dict(target) -> dict:
    """The parts of a TVM target that say which CPU: kind, mtriple, mcpu, mattr, mfloat-abi, num-cores."""
    if target is None:
        return {}
    out = {}
    for k, v in target.export().items():
        if k in ("kind", "mcpu", "mattr", "mtriple", "mfloat-abi", "num-cores"):
            out[str(k)] = [str(a) for a in v] if k == "mattr" else (int(v) if k == "num-cores" else str(v))
    return out


def check_writable(path, overwrite: bool) -> str:
    """``path`` as a str, after checking it names a ``.so`` and that neither it nor its metadata would be
    overwritten unless asked (before any lengthy build)."""
    path = os.fspath(path)
    if not path.endswith(".so"):
        raise TvmBnnError(f"path={path!r}: a TVM runtime library is a shared library; use a name ending in .so")
    for p in (path, path + META_SUFFIX):
        if os.path.exists(p) and not overwrite:
            raise FileExistsError(f"{p!r} already exists; pass overwrite=True (--force on the CLI) to replace it")
    return path


def combine_levels(executables: list):
    """One executable holding every level's (best first): the last (baseline) one is the root and imports the
    others. The baseline's compiled kernels are linked first, so a weak helper symbol several levels define
    (LLVM's float16 conversions) resolves to baseline code."""
    root = executables[-1]
    for ex in executables[:-1]:
        root.mod.import_module(ex.mod)
    return root


def _baseline_first(root):
    """An fcompile for export_library that puts the root's own LLVM object first on the link line."""
    own = next(m for m in root.mod.imports if m.kind == "llvm")
    modules = root.mod._collect_dso_modules()  # the order export_library writes lib{i}.o in
    index = next(i for i, m in enumerate(modules) if m.same_as(own))

    def fcompile(output, objects, **kwargs):
        first = [o for o in objects if os.path.basename(o) == f"lib{index}.o"]
        return cc.create_shared(output, first + [o for o in objects if o not in first], **kwargs)

    return fcompile


def write_library(executable, path, target_name, target, inputs, num_outputs, report, overwrite: bool = False,
                  fcompile=None, *, levels: list | None = None) -> str:
    """``executable.export_library(path)`` (``fcompile``: a cross compiler) + the metadata ``load`` reads.
    ``levels``: for a portable library, its [LibraryVariant] best first, ``executable`` then being
    ``combine_levels`` of theirs."""
    path = check_writable(path, overwrite)
    if levels and fcompile is None:
        fcompile = _baseline_first(executable)
    with quiet_tvm_stderr():
        if fcompile is None:
            executable.export_library(path)
        else:
            executable.export_library(path, fcompile=fcompile)
    required = levels[-1].required_features if levels else x86_host.required_features(target)
    meta = {"format": FORMAT, "target": target_name, "target_json": json.dumps(target_dict(target)),
            "required_features": list(required),
            "levels": [{"name": v.level, "entry": v.entry, "required_features": list(v.required_features),
                        "target_json": json.dumps(v.target)} for v in levels or []],
            "inputs": [[n, list(s), d] for n, s, d in inputs], "num_outputs": num_outputs,
            "report": [r.as_dict() for r in report]}
    with open(path + META_SUFFIX, "w") as f:
        json.dump(meta, f, indent=1)
    return path


class ExportedLibrary(NamedTuple):
    executable: object  # the Relax VM executable of the variant chosen for this host
    target_name: str
    inputs: list  # [(name, shape, dtype)]
    num_outputs: int
    report: Report
    variant: LibraryVariant = None  # the variant chosen (its executable loaded)
    variants: tuple = ()  # every variant the library holds (none loaded)


def _parse_target(text) -> dict:
    if not text:
        return {}
    try:
        return dict(json.loads(text))
    except ValueError:  # format 1 wrote str(target.export()): a Python literal with tuples
        return dict(ast.literal_eval(text))


def _required_from_target(cfg: dict) -> tuple:
    if not cfg:
        raise ValueError("no target_json to tell which CPU features the code needs")
    cfg = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.items()
           if k in ("kind", "mcpu", "mattr", "mtriple", "mfloat-abi", "num-cores")}
    return x86_host.required_features(tvm.target.Target(cfg))


class LibraryMetadata(NamedTuple):
    target_name: str
    inputs: list  # [(name, shape, dtype)]
    num_outputs: int
    report: Report
    variants: list  # [LibraryVariant] best first, none loaded
    required_features: tuple  # what running any part of it needs


def read_metadata(path: str) -> LibraryMetadata:
    """The metadata of the library at ``path``, checked, without opening the library."""
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
        if meta.get("levels"):
            variants = [LibraryVariant(str(lv["name"]), str(lv["entry"]), tuple(map(str, lv["required_features"])),
                                       _parse_target(lv.get("target_json"))) for lv in meta["levels"]]
        else:
            cfg = _parse_target(meta.get("target_json"))
            required = (tuple(map(str, meta["required_features"])) if "required_features" in meta
                        else _required_from_target(cfg))
            variants = [LibraryVariant(None, "main", required, cfg)]
    except (OSError, ValueError, KeyError, TypeError, SyntaxError) as exc:
        raise TvmBnnError(f"{meta_path!r}: the metadata written by CompiledModel.export is damaged "
                          f"({exc.__class__.__name__}: {exc}); export the model again") from exc
    return LibraryMetadata(target, inputs, num_outputs, report, variants, variants[-1].required_features)


def read_library(path: str, level: str | None = None) -> ExportedLibrary:
    """The library ``write_library`` wrote at ``path`` and its metadata, checked, with errors that say what to do.

    The CPU features are checked before the file is opened: a library whose code this host cannot run raises
    ``CPUFeatureError``; of a portable one, the best level this host runs is loaded (``level``: that one, which
    must not be above the host's; ``TVM_BNN_X86_LEVEL`` lowers the host's)."""
    path = os.fspath(path)
    target, inputs, num_outputs, report, variants, _ = read_metadata(path)
    if level is not None and variants[0].level is None:
        raise TvmBnnError(f"level={level!r}: {path!r} was built for one CPU (target {target!r}), not as "
                          "x86-portable; it has no levels to choose from")
    chosen = variants[x86_host.choose_variant([(v.level, v.required_features) for v in variants], target, level)]
    try:
        with quiet_tvm_stderr():
            lib = tvm.runtime.load_module(path)
        executables = [lib] + [m for m in lib.imports if m.kind == "relax.VMExecutable"]
        mod = next((m for m in executables if m.get_function("has_function")(chosen.entry)), None)
    except Exception as exc:  # noqa: BLE001 - TVM raises several kinds for a file that is not its library
        raise TvmBnnError(f"{path!r} is not a TVM runtime library for this machine ({str(exc).splitlines()[0]}); "
                          "export it again, or load it on the machine it was built for") from exc
    if mod is None:
        raise TvmBnnError(f"{path!r} holds no function {chosen.entry!r}, which its metadata names: the library "
                          "and its .tvm_bnn.json do not belong together; export the model again")
    executable = relax.VMExecutable(mod) if hasattr(relax, "VMExecutable") else mod
    chosen = chosen._replace(executable=executable)
    return ExportedLibrary(executable, target, inputs, num_outputs, report, chosen, tuple(variants))
