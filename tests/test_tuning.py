"""Autotuning: tasks, the database, resuming, applying it at compile time, and measuring over TVM RPC."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import tvm_bnn
from tvm_bnn import nn as bnn
from tvm_bnn.tuning import BASELINE_FILE, extract_tasks, parse_rpc

from .conftest import free_port, server_registered, stop_process_group, tracker_up, wait_until


def small_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 70, 3, padding=1), torch.nn.BatchNorm2d(70),
                                bnn.BinaryConv2d(70, 17, 3, padding=1, bias=False)).eval()
    return model, torch.randn(1, 3, 9, 9)


def test_extract_tasks_has_binary_and_float_kernels():
    model, x = small_model()
    _, tasks, report = extract_tasks(model, "x86", (x,))
    names = [t.task_name for t in tasks]
    assert any("binary_conv2d" in n for n in names) and any("conv2d" in n and "binary" not in n for n in names)
    assert report.num_binarized == 1


def test_tune_resume_and_apply(tmp_path):
    model, x = small_model()
    work = str(tmp_path / "tuning")
    first = tvm_bnn.tune(model, "x86", (x,), trials=4, work_dir=work, cost_model="random", trials_per_iter=2,
                         progress=False)
    measured = sum(r.trials for r in first)
    assert measured >= 1 and any(r.best_us for r in first)
    assert os.path.isfile(os.path.join(work, "database_tuning_record.json"))
    again = tvm_bnn.tune(model, "x86", (x,), trials=measured, work_dir=work, cost_model="random", progress=False)
    assert sum(r.trials for r in again) == measured  # nothing new: the budget was already spent
    baseline_path = os.path.join(work, BASELINE_FILE)
    baseline = json.load(open(baseline_path))
    assert len(baseline) == len(first) and all(v > 0 for v in baseline.values())

    def tuned_kernels():
        cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), tuning_db=work, progress=False)
        with torch.no_grad():
            np.testing.assert_array_equal(cm(x), model(x).numpy())
        return [gv.name_hint for gv, f in cm.scheduled.functions_items()
                if getattr(f, "attrs", None) is not None and f.attrs.get("tirx.is_scheduled")]

    # a tuned schedule is used only where it measured faster than our default one
    json.dump({k: 1e9 for k in baseline}, open(baseline_path, "w"))
    assert tuned_kernels(), "no kernel took its schedule from the database"
    json.dump({k: 1e-9 for k in baseline}, open(baseline_path, "w"))
    assert tuned_kernels() == []


def test_bad_tuning_database(tmp_path):
    model, x = small_model()
    with pytest.raises(tvm_bnn.TvmBnnError, match="holds no tuning database"):
        tvm_bnn.compile(model, "x86", example_inputs=(x,), tuning_db=str(tmp_path))
    (tmp_path / "database_workload.json").write_text("{not json")
    (tmp_path / "database_tuning_record.json").write_text("")
    with pytest.raises(tvm_bnn.TvmBnnError, match="cannot be read"):
        tvm_bnn.compile(model, "x86", example_inputs=(x,), tuning_db=str(tmp_path))


def test_parse_rpc():
    cfg = parse_rpc("127.0.0.1:9190:rpi4")
    assert (cfg.tracker_host, cfg.tracker_port, cfg.tracker_key) == ("127.0.0.1", 9190, "rpi4")
    with pytest.raises(tvm_bnn.TvmBnnError, match="tracker_host:tracker_port:device_key"):
        parse_rpc("localhost")


@pytest.fixture
def rpc_tracker_and_server():
    port = free_port()
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    procs = []
    try:  # each waits for the one before to be ready, however long a busy machine makes it take
        tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                    str(port), "--port-end", str(port + 1)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(("the RPC tracker", tracker))
        wait_until("the RPC tracker", lambda: tracker_up(port), procs)
        server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--tracker",
                                   f"127.0.0.1:{port}", "--key", "testboard"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(("the RPC server", server))
        wait_until("the RPC server to register", lambda: server_registered(port, "testboard"), procs)
        yield f"127.0.0.1:{port}:testboard"
    finally:
        for _, p in reversed(procs):
            stop_process_group(p)


def test_tune_over_rpc_tracker(tmp_path, rpc_tracker_and_server):
    model, x = small_model()
    results = tvm_bnn.tune(model, "x86", (x,), trials=3, work_dir=str(tmp_path / "rpc"), rpc=rpc_tracker_and_server,
                           cost_model="random", trials_per_iter=3, progress=False)
    assert any(r.best_us for r in results), results


def test_a_measurement_whose_session_timed_out_is_made_again():
    """RetryingRunner measures again what failed for a lost or timed-out session, not a candidate whose code
    failed."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    from tvm_bnn.tuning import RetryingRunner

    @derived_object
    class Ready(ms.runner.PyRunnerFuture):
        def __init__(self, result):
            super().__init__()
            self.value = result

        def done(self):
            return True

        def result(self):
            return self.value

    batches = []

    @derived_object
    class Flaky(ms.runner.PyRunner):
        def run(self, runner_inputs):
            batches.append([str(i.artifact_path) for i in runner_inputs])
            if len(batches) == 1:
                return [Ready(ms.runner.RunnerResult(None, "RPCRunner: Timeout, killed after 120 seconds")),
                        Ready(ms.runner.RunnerResult(None, "RPCRunner: An exception occurred\nTraceback:\n  "
                                                           "session = f_create_session(rpc_config)\n"
                                                           "ValueError: the kernel failed"))]
            return [Ready(ms.runner.RunnerResult([2e-5], None)) for _ in runner_inputs]

    inputs = [ms.runner.RunnerInput(name, "cpu", []) for name in ("timed_out.so", "broken.so")]
    results = [f.result() for f in RetryingRunner(Flaky(), attempts=3).run(inputs)]
    assert [float(s) for s in results[0].run_secs] == [2e-5] and results[0].error_msg is None
    assert "the kernel failed" in results[1].error_msg  # not measured again
    assert batches == [["timed_out.so", "broken.so"], ["timed_out.so"]]


def test_a_kernel_timing_opens_its_session_after_the_build_and_again_when_lost():
    """profiling.time_primfunc with a function for ``remote``: called once the kernel is built, and again after a
    session that timed out; an error of the code itself is not retried."""
    import tvm
    from tvm import rpc
    from tvm.script import tirx as T

    from tvm_bnn.profiling import time_primfunc

    @T.prim_func
    def add_one(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
        for i in range(64):
            b[i] = a[i] + T.float32(1)

    class LostSession:
        def upload(self, path):
            raise TimeoutError("the session timed out")

    opened = []

    def remote():
        opened.append(len(opened))
        return LostSession() if len(opened) == 1 else rpc.LocalSession()

    assert time_primfunc(add_one, tvm.target.Target({"kind": "llvm"}), remote=remote) > 0
    assert opened == [0, 1]

    class BrokenCode:
        def upload(self, path):
            raise ValueError("the kernel failed")

    broken = []
    with pytest.raises(ValueError, match="the kernel failed"):
        time_primfunc(add_one, tvm.target.Target({"kind": "llvm"}), remote=lambda: broken.append(1) or BrokenCode(),
                      attempts=3)
    assert broken == [1]  # one session: not measured again


def test_tuned_schedules_of_a_conv_adding_its_residual(tmp_path):
    """The sampled design space of a binary conv whose epilogue adds a residual (passes/fuse_residual.py) builds,
    and the tuned model computes the same bits as the untuned one."""
    from .passes.test_fuse_residual import C, Residual
    from .conftest import randomize_batchnorm

    torch.manual_seed(0)
    model, x = randomize_batchnorm(Residual()).eval(), torch.randn(1, C, 9, 11)
    work = str(tmp_path / "tuning")
    records = tvm_bnn.tune(model, "x86", (x,), trials=6, work_dir=work, cost_model="random", trials_per_iter=3,
                           progress=False)
    assert any("binary_conv2d" in r.name for r in records if r.best_us), records
    json.dump({k: 1e9 for k in json.load(open(os.path.join(work, BASELINE_FILE)))},
              open(os.path.join(work, BASELINE_FILE), "w"))  # take every tuned schedule
    tuned = tvm_bnn.compile(model, "x86", example_inputs=(x,), tuning_db=work, progress=False)
    assert any(getattr(f, "attrs", None) is not None and f.attrs.get("tirx.is_scheduled")
               and "binary_conv2d" in gv.name_hint for gv, f in tuned.scheduled.functions_items())
    np.testing.assert_array_equal(tuned(x), tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)(x))


def test_tuned_byte_lane_ternary_convs(tmp_path, monkeypatch):
    """Forced AVX2: a W2A2 layer's byte-lane ternary kernels (one per activation plane, the second adding the
    first's output) are tuning tasks in their byte-lane form, and the tuned model equals PyTorch."""
    import torch.nn.functional as F

    monkeypatch.setenv("TVM_BNN_X86_LEVEL", "avx2")
    torch.manual_seed(0)
    w = torch.randn(33, 37, 3, 3)
    w = torch.where(w.abs() < 0.5, 0.0, torch.sign(w))

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.conv2d(torch.clamp(torch.round(x), -1, 1), w, padding=1)

    x = torch.randn(1, 37, 9, 11)
    work = str(tmp_path / "tuning")
    records = tvm_bnn.tune(Net(), "x86", (x,), trials=4, work_dir=work, cost_model="random", trials_per_iter=2,
                           progress=False)
    assert [r.name.startswith("tvm_bnn_ternary_conv2d") for r in records] == [True, True], records
    json.dump({k: 1e9 for k in json.load(open(os.path.join(work, BASELINE_FILE)))},
              open(os.path.join(work, BASELINE_FILE), "w"))  # take every tuned schedule
    tuned = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), tuning_db=work, progress=False)
    assert sum(1 for _, f in tuned.scheduled.functions_items()
               if getattr(f, "attrs", None) is not None and f.attrs.get("tirx.is_scheduled")) == 2
    with torch.no_grad():
        np.testing.assert_array_equal(tuned(x), Net()(x).numpy())
