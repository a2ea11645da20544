"""Tuning an ARM board over TVM RPC, end to end, with the board emulated: a TVM RPC tracker on 127.0.0.1 (host
Python), a TVM RPC server running as an aarch64 process under qemu-user (scripts/aarch64_rpc_board.sh: Debian's arm64
CPython 3.11 and the aarch64 TVM wheels), tvm_bnn.tune(..., target="aarch64", rpc=...) cross-compiling each
candidate with aarch64-linux-gnu-gcc and measuring it on the board, then compile(..., tuning_db=) against PyTorch.

The board is built once by ``scripts/aarch64_rpc_board.sh setup`` (about 40 s, 200 MB in
$HOME/.cache/tvm_bnn/aarch64-board, or $TVM_BNN_AARCH64_BOARD). Without it these tests skip, except under CI=true,
where they fail.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tvm_bnn
from tvm_bnn import nn as bnn
from tvm_bnn.tuning import BASELINE_FILE, open_database

from ..conftest import (free_port, need, randomize_batchnorm, server_registered, stop_process_group, tracker_up,
                        wait_until)

ROOT = Path(__file__).resolve().parents[2]
BOARD_SCRIPT = ROOT / "scripts" / "aarch64_rpc_board.sh"
KEY = "qemu-aarch64"


def require_board():
    need("aarch64-linux-gnu-gcc", "qemu-aarch64")
    check = subprocess.run(["bash", str(BOARD_SCRIPT), "check"], capture_output=True, text=True)
    if check.returncode != 0:
        msg = ("the emulated aarch64 RPC board is not set up (" + check.stderr.strip() + "); "
               "run: scripts/aarch64_rpc_board.sh setup")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {msg}")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def emulated_board(tmp_path_factory):
    """'127.0.0.1:PORT:KEY' of a tracker with the qemu-aarch64 RPC server registered."""
    require_board()
    logs = tmp_path_factory.mktemp("board_logs")
    port = free_port()
    procs = []
    try:
        tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                    str(port), "--port-end", str(port + 1)], stdout=open(logs / "tracker.log", "w"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(("tracker", tracker))
        wait_until("the RPC tracker", lambda: tracker_up(port), procs)
        server = subprocess.Popen(["bash", str(BOARD_SCRIPT), "serve", "--tracker", f"127.0.0.1:{port}", "--key", KEY],
                                  stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True, env={**os.environ, "TVM_NUM_THREADS": "1"})
        procs.append(("the qemu-aarch64 RPC server", server))
        try:
            secs = wait_until("the qemu-aarch64 RPC server to register", lambda: server_registered(port, KEY), procs)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; server log:\n{(logs / 'server.log').read_text()[-3000:]}") from exc
        print(f"emulated aarch64 RPC server registered in {secs:.1f} s")
        yield f"127.0.0.1:{port}:{KEY}"
    finally:
        for _, p in reversed(procs):
            stop_process_group(p)


def model_and_input():
    torch.manual_seed(0)
    model = torch.nn.Sequential(bnn.BinaryConv2d(16, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8))
    return randomize_batchnorm(model).eval(), torch.randn(1, 16, 8, 8)


def failures(work: str) -> list:
    """The builder's and runner's error lines in MetaSchedule's logs (what a run with no measurement went through)."""
    lines = []
    for path in sorted(Path(work, "logs").glob("*.log")):
        lines += [ln.strip() for ln in path.read_text().splitlines() if "Timeout" in ln or "rror" in ln]
    return lines[-20:]


def test_tune_aarch64_on_emulated_board_over_rpc(emulated_board, tmp_path):
    model, x = model_and_input()
    work = str(tmp_path / "tuning")
    t0 = time.monotonic()
    results = tvm_bnn.tune(model, "aarch64", (x,), trials=4, work_dir=work, rpc=emulated_board, cost_model="random",
                           trials_per_iter=4, progress=False)
    print(f"tuned {sum(r.trials for r in results)} aarch64 candidates over RPC in {time.monotonic() - t0:.1f} s")
    assert [r.name.rstrip("0123456789") for r in results] == ["tvm_bnn_binary_conv2d"], results  # one conv task
    assert results[0].trials >= 1 and results[0].best_us, (results, failures(work))

    # measured on the board: the database's records carry run times
    records = open_database(work, create=False).get_all_tuning_records()
    measured = [r for r in records if r.run_secs and all(float(s) > 0 for s in r.run_secs)]
    assert measured, f"no record of {len(records)} was measured (run_secs); see {work}/logs"
    baseline = json.load(open(os.path.join(work, BASELINE_FILE)))
    assert len(baseline) == 1 and all(v > 0 for v in baseline.values())  # our default schedule, timed on the board

    with torch.no_grad():
        ref = model(x).numpy()

    def compile_and_run():
        cm = tvm_bnn.compile(model, "aarch64", example_inputs=(x,), tuning_db=work, progress=False)
        # the integer dot is exact; LLVM may fuse the float epilogue's multiply-add on ARM (one rounding, not two)
        np.testing.assert_allclose(cm(x), ref, rtol=1e-6, atol=1e-5)
        return [gv.name_hint for gv, f in cm.scheduled.functions_items()
                if getattr(f, "attrs", None) is not None and f.attrs.get("tirx.is_scheduled")]

    compile_and_run()  # the database as tuned: the tuned schedule wherever it beat ours on the board
    json.dump({k: 1e9 for k in baseline}, open(os.path.join(work, BASELINE_FILE), "w"))
    assert compile_and_run(), "the tuned schedule was not taken from the database"  # forced: it must be exact too
