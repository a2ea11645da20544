"""Autotuning: tasks, the database, resuming, applying it at compile time, and measuring over TVM RPC."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import tvm_bnn
from tvm_bnn import nn as bnn
from tvm_bnn.tuning import BASELINE_FILE, extract_tasks, parse_rpc

from .conftest import free_port, stop_process_group


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
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                str(port), "--port-end", str(port + 1)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(2)
    server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--tracker",
                               f"127.0.0.1:{port}", "--key", "testboard"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(3)
    try:
        yield f"127.0.0.1:{port}:testboard"
    finally:
        for p in (server, tracker):
            stop_process_group(p)


def test_tune_over_rpc_tracker(tmp_path, rpc_tracker_and_server):
    model, x = small_model()
    results = tvm_bnn.tune(model, "x86", (x,), trials=3, work_dir=str(tmp_path / "rpc"), rpc=rpc_tracker_and_server,
                           cost_model="random", trials_per_iter=3, progress=False)
    assert any(r.best_us for r in results), results
