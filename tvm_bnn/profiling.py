"""Per-kernel time breakdown of a compiled model: where the latency goes.

Each PrimFunc the model calls is built alone for the same target and timed on random data of its buffer shapes
(kernels' time does not depend on the data values). Calls are counted from the Relax main function, so a kernel used
by several layers is charged for each call.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx


@dataclass
class KernelTime:
    name: str
    op: str  # our operator, or "float" for a TVM-generated float kernel
    calls: int
    seconds_per_call: float

    @property
    def total(self) -> float:
        return self.calls * self.seconds_per_call


def _calls(mod: tvm.IRModule) -> Counter:
    counts = Counter()

    @relax.expr_functor.visitor
    class _V(relax.PyExprVisitor):
        def visit_call_(self, call):
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir":
                counts[call.args[0].name_hint] += 1
            super().visit_call_(call)

    for _, f in mod.functions_items():
        if isinstance(f, relax.Function):
            _V().visit_expr(f)
    return counts


def _random_args(func: tirx.PrimFunc, dev, rng):
    args = []
    for param in func.params:
        shape = [int(d) for d in param.shape]  # TVM 0.27: PrimFunc params are the buffers' vars
        dtype = str(param.dtype)
        if dtype.startswith("float"):
            data = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            data = rng.integers(0, 2, shape).astype(bool)
        else:
            info = np.iinfo(dtype)
            data = rng.integers(max(info.min, -(2**62)), min(info.max, 2**62), shape, dtype=dtype, endpoint=True)
        args.append(tvm.runtime.tensor(data, dev))
    return args


def time_primfunc(func: tirx.PrimFunc, target, number: int = 5, repeat: int = 3, rng=None, remote=None,
                  fcompile=None, tir_pipeline: str = "default", attempts: int = 3) -> float:
    """Median seconds of one scheduled PrimFunc, built alone for ``target`` (lowered by the named TIR pipeline: the
    model's, ``targets.tir_pipeline.NAME``, to time it as built), on random data; on this machine, or on the device
    of ``remote`` (``fcompile``: the cross compiler that links the library).

    ``remote``: a TVM RPC session, or a function that opens one. A function is called only once the library is
    built and linked (a session's time limit then covers the upload and the measurement, not a build slowed by other
    work on this machine), and again, up to ``attempts`` sessions in all, when a session times out or is lost."""
    rng = rng or np.random.default_rng(0)
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target,
                      tir_pipeline=tir_pipeline)
    if remote is None:
        return _median_run(lib.mod, tvm.cpu(), func, number, repeat, rng)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tvm_bnn_kernel.so")
        lib.export_library(path, **({"fcompile": fcompile} if fcompile is not None else {}))
        for attempt in range(1, (attempts if callable(remote) else 1) + 1):
            session = remote() if callable(remote) else remote
            try:
                session.upload(path)
                return _median_run(session.load_module("tvm_bnn_kernel.so"), session.cpu(), func, number, repeat,
                                   rng)
            except Exception as exc:  # noqa: BLE001 - TVM's RPC errors come as several kinds; sorted below
                if attempt == attempts or not callable(remote) or not remote_failure_is_transient(exc):
                    raise
            finally:
                del session  # the board is handed to the next request only when this session is gone
    raise AssertionError("unreachable")


def _median_run(mod, dev, func, number, repeat, rng) -> float:
    timer = mod.time_evaluator("main", dev, number=number, repeat=repeat)
    return float(np.median(timer(*_random_args(func, dev, rng)).results))


TRANSIENT = ("timeout", "timed out", "connection", "socket", "broken pipe", "cannot request")


def remote_failure_is_transient(error) -> bool:
    """Whether a failed remote measurement (an exception, or MetaSchedule's error message, which ends with the
    exception's type and message) says the session timed out or was lost, rather than that the code failed: worth
    measuring again on a new session. Only the first and last lines are read (a traceback's code lines between
    mention sessions and timeouts whatever failed)."""
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    lines = [line for line in text.strip().splitlines() if line.strip()] or [""]
    return any(word in line.lower() for line in (lines[0], lines[-1]) for word in TRANSIENT)


def profile_kernels(scheduled: tvm.IRModule, target, number: int = 5, repeat: int = 3,
                    tir_pipeline: str = "default") -> list[KernelTime]:
    """Time every PrimFunc of ``scheduled`` (a module after scheduling, before VM lowering), each lowered by the
    named TIR pipeline."""
    counts = _calls(scheduled)
    rng = np.random.default_rng(0)
    out = []
    for gvar, func in scheduled.functions_items():
        if not isinstance(func, tirx.PrimFunc) or gvar.name_hint not in counts:
            continue
        seconds = time_primfunc(func, target, number, repeat, rng, tir_pipeline=tir_pipeline)
        op = str(func.attrs["tvm_bnn.op"]) if func.attrs is not None and "tvm_bnn.op" in func.attrs else "float"
        out.append(KernelTime(gvar.name_hint, op, counts[gvar.name_hint], seconds))
    return sorted(out, key=lambda k: -k.total)


def format_breakdown(times: list[KernelTime], limit: int = 25) -> str:
    total = sum(k.total for k in times) or 1.0
    lines = [f"{'kernel':48s} {'op':20s} {'calls':>5s} {'ms/call':>9s} {'ms total':>9s} {'share':>6s}"]
    for k in times[:limit]:
        lines.append(f"{k.name[:48]:48s} {k.op:20s} {k.calls:5d} {k.seconds_per_call * 1e3:9.3f} "
                     f"{k.total * 1e3:9.3f} {k.total / total:6.1%}")
    by_op = Counter()
    for k in times:
        by_op["binary kernels" if k.op != "float" else "float kernels"] += k.total
    lines.append(f"sum of kernels {total * 1e3:.2f} ms: " + ", ".join(
        f"{name} {t * 1e3:.2f} ms ({t / total:.0%})" for name, t in by_op.most_common()))
    return "\n".join(lines)
