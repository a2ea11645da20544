"""tvm_bnn.tune: MetaSchedule autotuning of a model's kernels, locally or on remote boards over TVM RPC.

The model goes through the same import and passes as ``compile``; the binary kernels and the float kernels of the
fused module become MetaSchedule tasks (one per distinct PrimFunc, weighted by how often the model calls it). Trials
are built here and measured on this machine or, with ``rpc="host:port:key"``, on a device registered with a TVM
RPC tracker. Records go to a JSON database in ``work_dir``; ``compile(..., tuning_db=work_dir)`` applies them and
falls back to the default schedules for anything not tuned. Tuning again with the same ``work_dir`` resumes: trials
already in the database count against the budget.

Tuning takes as long as the work does on a busy machine: the time limits (``timeout_sec``) only catch a build or a
measurement that hangs. MetaSchedule's builder workers import TVM's tensor intrinsics before they are timed (a
fresh worker per batch: the import took up to minutes, and counted against a candidate's build time); a session on
a board opens only after the code is built; and a measurement whose session timed out or was lost is made again.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass

import tvm
from tqdm.auto import tqdm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from .core.pipeline import analyse, fuse_pipeline
from .core.tuning_db import BASELINE_FILE, open_database, workload_key
from .errors import TvmBnnError
from .targets import resolve_target, tir_pipeline, x86_host


@dataclass
class TaskResult:
    name: str
    weight: int
    trials: int
    best_us: float | None


SESSION_TIMEOUT_SEC = 120.0
MEASURE_ATTEMPTS = 3  # sessions per remote measurement, the first included


def parse_rpc(rpc: str, session_timeout_sec: float = SESSION_TIMEOUT_SEC):
    """'host:port:key' -> RPCConfig. ``session_timeout_sec``: how long the board keeps one session (the upload, the
    load and the measurement of one candidate) before it ends it as hung."""
    parts = rpc.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[0] or not parts[2]:
        raise TvmBnnError(f"rpc={rpc!r}: expected 'tracker_host:tracker_port:device_key', e.g. '127.0.0.1:9190:rpi4'")
    return ms.runner.RPCConfig(tracker_host=parts[0], tracker_port=int(parts[1]), tracker_key=parts[2],
                               session_timeout_sec=int(session_timeout_sec))


def cross_compiler(spec):
    """The compiler that links a library for ``spec``'s device: None (the host's) unless it is an ARM board."""
    if spec.family != "arm":
        return None
    from tvm.support import cc

    from .targets import qemu

    return cc.cross_compiler(qemu.require_tool(qemu.linux_arch(spec.board).cc))


def export_for_board(mod, cc: str) -> str:
    """MetaSchedule's export step for a board: a shared library linked by ``cc`` (the RPC server loads it)."""
    from tvm.support import cc as tvm_cc

    path = os.path.join(tempfile.mkdtemp(prefix="tvm_bnn_ms_"), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=tvm_cc.cross_compiler(cc))
    return path


def build_candidate(mod, target, _params=None):
    """MetaSchedule's build step (its ``default_build``) with our TIR pipeline, so that a candidate is lowered, and
    timed, as the model will be (register tiles on the stack: ``targets.tir_pipeline``)."""
    import tvm.s_tir.tensor_intrin  # noqa: F401 - registers the tensor intrinsics a candidate may use
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return build(mod, target=target, pipeline=tir_pipeline.NAME)


def _time_default(func, spec, rpc: str | None, session_timeout_sec: float = SESSION_TIMEOUT_SEC) -> float:
    """Microseconds of one scheduled PrimFunc, here or on the RPC device. A session per kernel, opened once the
    kernel is built (LLVM builds on a busy machine can outlast a session) and again if it times out or is lost;
    released on return: the tracker hands its one board to the next request only when the previous session is
    gone."""
    from .profiling import time_primfunc

    remote = (lambda: parse_rpc(rpc, session_timeout_sec).connect_server()) if rpc else None
    return 1e6 * time_primfunc(func, spec.target, remote=remote, fcompile=cross_compiler(spec),
                               tir_pipeline=tir_pipeline.NAME, attempts=MEASURE_ATTEMPTS)  # lowered as in the model


def measure_defaults(tasks, spec, work_dir: str, rpc: str | None = None,
                     session_timeout_sec: float = SESSION_TIMEOUT_SEC) -> dict:
    """Latency (us) of our default schedule for each task, merged into ``work_dir``/BASELINE_FILE; measured where the
    tuning trials were (``rpc``: on the RPC device), so the two are comparable."""
    from .schedules.apply import default_schedule

    path = os.path.join(work_dir, BASELINE_FILE)
    baseline = json.load(open(path)) if os.path.isfile(path) else {}
    for t in tasks:
        func = t.dispatched[0]["main"]
        key = workload_key(func)
        if key not in baseline:
            with spec.target:
                baseline[key] = _time_default(default_schedule(func, spec), spec, rpc, session_timeout_sec)
    with open(path, "w") as f:
        json.dump(baseline, f, indent=1)
    return baseline


@derived_object
class _RetryingFuture(ms.runner.PyRunnerFuture):
    def __init__(self, runner, runner_input, future, attempts: int):
        super().__init__()
        self.runner, self.runner_input, self.future, self.attempts = runner, runner_input, future, attempts

    def done(self) -> bool:
        return self.future.done()

    def result(self):
        from .profiling import remote_failure_is_transient

        result = self.future.result()
        for attempt in range(2, self.attempts + 1):
            if result.error_msg is None or not remote_failure_is_transient(result.error_msg):
                break
            logging.getLogger(__name__).warning("measurement %d of %d failed (%s); measuring again", attempt - 1,
                                                self.attempts, str(result.error_msg).strip().splitlines()[-1])
            result = self.runner.run([self.runner_input])[0].result()
        return result


@derived_object
class RetryingRunner(ms.runner.PyRunner):
    """A MetaSchedule runner (``RPCRunner``) whose measurements that failed for a session that timed out or was
    lost (``profiling.remote_failure_is_transient``) are made again, up to ``attempts`` in all; a candidate whose
    code fails is not."""

    def __init__(self, runner, attempts: int = MEASURE_ATTEMPTS):
        super().__init__()
        self.runner, self.attempts = runner, attempts

    def run(self, runner_inputs):
        return [_RetryingFuture(self.runner, inp, fut, self.attempts)
                for inp, fut in zip(runner_inputs, self.runner.run(runner_inputs))]


def builder_worker_init():
    """Run by each of MetaSchedule's builder workers when it starts, which is not timed: the import every candidate
    build needs (TVM's tensor intrinsics, our fast import), so that a candidate's time limit is its build's alone."""
    _import_tensor_intrin()


def _progress_callback(bar, names, best):
    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for res in runner_results or []:
                secs = getattr(res, "run_secs", None) if getattr(res, "error_msg", None) is None else None
                if secs:
                    us = 1e6 * sum(float(s) for s in secs) / len(secs)
                    if best.get(task_id) is None or us < best[task_id]:
                        best[task_id] = us
            bar.update(len(runner_results or []))
            bar.set_postfix_str(f"{names[task_id][:32]} best {best.get(task_id, float('nan')):.1f} us")

    return _Progress()


def space_for(func, target, num_cores: int):
    """Our binary kernels are searched in their own design space (schedules/x86.design_space: register block,
    vector lanes, cache block); float kernels in MetaSchedule's default CPU space."""
    if func.attrs is not None and "tvm_bnn.op" in func.attrs:
        from .schedules import x86

        return ms.space_generator.ScheduleFn(functools.partial(x86.design_space, target=target,
                                                               num_cores=num_cores))
    return "post-order-apply"


def worth_tuning(func) -> bool:
    """Tasks with a reduction (conv, matmul, pooling, our popcount kernels) are tuned; purely elementwise ones (adds,
    casts) are memory-bound, keep their default schedule, and would only take budget from the rest; so do our
    bitpack / max-pool kernels, whose design space has no knobs."""
    from tvm import s_tir

    from .schedules.x86 import BINARY_OPS

    if func.attrs is not None and "tvm_bnn.op" in func.attrs:
        return str(func.attrs["tvm_bnn.op"]) in BINARY_OPS

    try:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        return any(int(iv.iter_type) == 2 for b in blocks for iv in sch.get(b).iter_vars)
    except Exception:  # noqa: BLE001 - unknown structure: let MetaSchedule decide
        return True


def _search_strategy():
    """Evolutionary search sized for a 2-core machine: MetaSchedule's default population (512, 4 generations) spends
    ~40 s per task per round predicting costs before anything is measured; a model has ~25 tasks."""
    return ms.search_strategy.EvolutionarySearch(population_size=96, init_min_unmeasured=16, genetic_num_iters=2)


def _import_tensor_intrin():
    """Import ``tvm.s_tir.tensor_intrin`` (MetaSchedule's TuneContext does, on first use) in seconds, not minutes.

    Its ~500 ``@T.prim_func`` decorators each call ``inspect.stack()``, which for every frame of the import machinery
    (``<frozen importlib._bootstrap>``: no file) scans all of ``sys.modules`` in ``inspect.getmodule``; with torch
    loaded that took 3 minutes (3.5 with other work on the machine: the aarch64 RPC tuning test timed out on it). The
    parser only reads the decorator's nearest frames (its class-body check and the closure variables of the
    functions around it), so during this import the stack stops at the first frame that is not in a source file."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    full_stack = inspect.stack

    def near_stack(context=1):
        frames, frame = [], sys._getframe(1)
        while frame is not None and not frame.f_code.co_filename.startswith("<"):
            info = inspect.getframeinfo(frame, context)
            frames.append(inspect.FrameInfo(frame, *info, positions=info.positions))
            frame = frame.f_back
        return frames

    inspect.stack = near_stack
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = full_stack


def _tune_contexts(tasks, work_dir, target, num_cores, seed):
    _import_tensor_intrin()
    # MetaSchedule rebuilds its logging config from the handlers already on its logger and fails on an unnamed one
    # (left by an earlier tuning run or another library); it recreates the ones it needs.
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(ms_logger.handlers):
        ms_logger.removeHandler(handler)
    loggers = ms.logging.get_loggers_from_work_dir(work_dir, [t.task_name for t in tasks])
    contexts, weights = [], []
    for task, logger, rand_state in zip(tasks, loggers, ms.utils.fork_seed(seed, n=len(tasks))):
        mod = task.dispatched[0]
        contexts.append(ms.TuneContext(mod=mod, target=task.target, space_generator=space_for(mod["main"], target,
                                                                                               num_cores),
                                       search_strategy=_search_strategy(), task_name=task.task_name, logger=logger,
                                       rand_state=rand_state, num_threads=num_cores).clone())
        weights.append(task.weight)
    return contexts, weights


def extract_tasks(model, target="x86", example_inputs=None):
    """The MetaSchedule tasks of a model for ``target``: (spec, tasks, report)."""
    spec = resolve_target(target)
    _, optimized, report = analyse(model, example_inputs)
    with spec.target:
        fused = fuse_pipeline(spec.target)(optimized)
    tasks = ms.relax_integration.extract_tasks(fused, spec.target)
    from .schedules.x86 import tuning_form

    out = []
    for t in tasks:  # our binary kernels as the build schedules them (the byte-lane form on AVX2 / NEON)
        func = t.dispatched[0]["main"]
        form = tuning_form(func, spec.target)
        out.append(t if form.same_as(func) else ms.ExtractedTask(t.task_name, t.mod, t.target, [tvm.IRModule(
            {"main": form})], t.weight))
    tasks = out
    return spec, tasks, report


def tune(model, target="x86", example_inputs=None, *, trials: int = 256, work_dir: str = "tuning",
         rpc: str | None = None, cost_model: str = "xgb", trials_per_iter: int = 16, progress: bool | None = None,
         seed: int | None = 0, timeout_sec: float = 120.0) -> list[TaskResult]:
    """Tune the model's kernels; returns one TaskResult per task and leaves the database in ``work_dir``.

    ``timeout_sec``: how long one candidate's build, or one measurement session on an RPC device, may take before
    it is given up as hung (a measurement whose session timed out or was lost is made again, up to 3 times)."""
    if trials < 1:
        raise TvmBnnError(f"trials={trials}: the tuning budget must be at least 1")
    spec = resolve_target(target)
    if spec.family == "c":
        raise TvmBnnError(f"target={target!r} builds a C bundle; tuning is for x86 and ARM Linux targets")
    if spec.family == "arm" and not rpc:
        raise TvmBnnError(f"target={target!r}: ARM kernels are measured on the board; run a TVM RPC server there "
                          "(README: tuning on a board) and pass rpc='tracker_host:port:device_key'")
    if spec.family == "x86" and not rpc:  # the candidates run here: never code this CPU cannot execute
        x86_host.check_runnable(x86_host.required_features(spec.target), f"target {target!r}", "tune")
    spec, tasks, _ = extract_tasks(model, spec, example_inputs)
    tasks = [t for t in tasks if worth_tuning(t.dispatched[0]["main"])]
    database = open_database(work_dir, create=True)
    done = {}
    for t in tasks:
        workload = database.commit_workload(t.dispatched[0])
        done[t.task_name] = len(database.get_top_k(workload, 1 << 30))
    remaining = trials - sum(done.values())
    names = [t.task_name for t in tasks]
    best = {}
    if remaining > 0 and tasks:
        num_cores = int(spec.target.attrs["num-cores"])
        contexts, weights = _tune_contexts(tasks, work_dir, spec.target, num_cores, seed)
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
        # the time limits only catch hangs: LLVM builds of big candidates on a busy 2-core machine take tens of seconds
        f_export = None
        if spec.family == "arm":
            from .targets import qemu

            f_export = functools.partial(export_for_board, cc=qemu.require_tool(qemu.linux_arch(spec.board).cc))
        builder = ms.builder.LocalBuilder(max_workers=min(num_cores, os.cpu_count() or 1), timeout_sec=timeout_sec,
                                          f_build=build_candidate, f_export=f_export, initializer=builder_worker_init)
        if rpc:
            runner = RetryingRunner(ms.runner.RPCRunner(rpc_config=parse_rpc(rpc, timeout_sec),
                                                        evaluator_config=evaluator))
        else:
            runner = ms.runner.LocalRunner(timeout_sec=timeout_sec, evaluator_config=evaluator)
        if progress is not False:  # the bar replaces MetaSchedule's per-trial console tables (still in work_dir/logs)
            logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        bar = tqdm(total=remaining, desc=f"tuning {len(tasks)} tasks", unit="trial", disable=(progress is False) or None)
        try:
            ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=remaining,
                               num_trials_per_iter=min(trials_per_iter, remaining), builder=builder, runner=runner,
                               database=database,
                               cost_model=cost_model,
                               measure_callbacks=ms.measure_callback.MeasureCallback.create("default")
                               + [_progress_callback(bar, names, best)])
        finally:
            bar.close()
    measure_defaults(tasks, spec, work_dir, rpc, timeout_sec)
    results = []
    for i, t in enumerate(tasks):
        top = database.get_top_k(database.commit_workload(t.dispatched[0]), 1 << 30)
        secs = [float(sum(float(s) for s in r.run_secs) / len(r.run_secs)) for r in top if r.run_secs]
        results.append(TaskResult(t.task_name, int(t.weight), len(top), 1e6 * min(secs) if secs else None))
    return results


def format_results(results: list[TaskResult]) -> str:
    lines = [f"{'task':48s} {'weight':>6s} {'trials':>6s} {'best us':>10s}"]
    for r in results:
        best = f"{r.best_us:10.1f}" if r.best_us is not None else f"{'-':>10s}"
        lines.append(f"{r.name[:48]:48s} {r.weight:6d} {r.trials:6d} {best}")
    return "\n".join(lines)


__all__ = ["TaskResult", "extract_tasks", "format_results", "open_database", "parse_rpc", "tune"]
