"""An exported TVM runtime library on disk: the ``.so`` and the metadata beside it (target, inputs, outputs, the
report), i.e. what ``export`` writes and ``tvm_bnn.load`` reads."""
from __future__ import annotations

import json
import os
from typing import NamedTuple

import tvm
from tvm import relax

from ..errors import TvmBnnError
from ..report import LayerRecord, Report

META_SUFFIX = ".tvm_bnn.json"


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


class ExportedLibrary(NamedTuple):
    executable: object  # the Relax VM executable
    target_name: str
    inputs: list  # [(name, shape, dtype)]
    num_outputs: int
    report: Report


def read_library(path: str) -> ExportedLibrary:
    """The library ``write_library`` wrote at ``path`` and its metadata, checked, with errors that say what to do."""
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
    return ExportedLibrary(executable, target, inputs, num_outputs, report)
