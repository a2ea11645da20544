"""The tuning database of a ``work_dir`` as the build reads it: MetaSchedule's JSON records and our default
schedules' latencies, applied kernel by kernel (``apply_database_pass``). ``tvm_bnn.tuning`` writes both."""
from __future__ import annotations

import json
import os

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from ..errors import TvmBnnError
from ..targets import x86_host


def open_database(work_dir: str, create: bool) -> ms.database.JSONDatabase:
    """The JSON database of ``work_dir``; a clear error for a directory that is not one."""
    wl = os.path.join(work_dir, "database_workload.json")
    tr = os.path.join(work_dir, "database_tuning_record.json")
    if not create and not (os.path.isfile(wl) and os.path.isfile(tr)):
        raise TvmBnnError(f"tuning_db={work_dir!r} holds no tuning database (database_workload.json and "
                          "database_tuning_record.json); run tvm_bnn.tune(..., work_dir=...) first")
    os.makedirs(work_dir, exist_ok=True)
    try:
        return ms.database.JSONDatabase(path_workload=wl, path_tuning_record=tr, allow_missing=create)
    except Exception as exc:  # noqa: BLE001 - a corrupt file: say which
        raise TvmBnnError(f"tuning_db={work_dir!r}: the tuning database cannot be read ({exc.__class__.__name__}: "
                          f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); delete it and "
                          "tune again") from exc


BASELINE_FILE = "tvm_bnn_default_latency.json"


def _as_task(func):
    """A PrimFunc the way MetaSchedule's task extraction stores it (global symbol "main")."""
    return func.with_attr("global_symbol", "main")


def workload_key(func) -> str:
    return str(tvm_ffi.structural_hash(_as_task(func)))


def _level_of(target) -> str | None:
    """The best x86 level (targets.x86_host.LEVELS) whose features ``target`` has."""
    have = set(x86_host.required_features(target))
    return next((lv.name for lv in x86_host.LEVELS if lv.features <= have), None)


def apply_database_pass(work_dir: str, spec) -> tvm.transform.Pass:
    """Each PrimFunc takes the database's best schedule only where it measured faster than our default schedule
    (recorded by tune()); everything else keeps the default, so a tuned build is never slower kernel by kernel.
    For one level of a portable build (``spec.level``), only schedules tuned on a CPU of that level apply (a
    schedule tuned on an AVX-512 machine is no guide for the AVX2 variant)."""
    from ..schedules.x86 import tuning_form

    database = open_database(work_dir, create=False)
    path = os.path.join(work_dir, BASELINE_FILE)
    baseline = json.load(open(path)) if os.path.isfile(path) else {}

    @tvm.transform.module_pass(opt_level=0, name="tvm_bnn.ApplyTuningDatabase")
    def _pass(mod, _ctx):
        for gvar, func in list(mod.functions_items()):
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            func = tuning_form(func, spec.target)  # the kernel tune() recorded (byte-lane form on AVX2 / NEON)
            one = tvm.IRModule({"main": _as_task(func)})
            record = database.query_tuning_record(one, spec.target, gvar.name_hint)
            if record is None or not record.run_secs:
                continue
            if getattr(spec, "level", None) and _level_of(record.target) != spec.level:
                continue
            tuned_us = 1e6 * sum(float(x) for x in record.run_secs) / len(record.run_secs)
            default_us = baseline.get(workload_key(func))
            if default_us is not None and default_us <= tuned_us:
                continue
            sch = database.query_schedule(one, spec.target, gvar.name_hint)
            if sch is not None:
                mod[gvar] = sch.mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
        return mod

    return _pass
