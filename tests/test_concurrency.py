"""Serving from threads (issue #19): a compiled model called by several Python threads at once gives, for every
input, exactly what a single-threaded call gives, and never crashes; memory stays flat over many calls.

TVM's Relax VM runs one call at a time (two threads on one VirtualMachine died with SIGSEGV in
``StorageObj::AllocTensor``), so x86 models take a VM per call from a pool (``deploy.runtime_loader.MachinePool``).
The x86 cases run in a fresh interpreter (``run_isolated``): a crash fails the test instead of ending the run. The
C bundle and the ARM Linux runner build and run a program per call (in a directory of its own), so they run here.

Nothing here is timed: the threads of each case start together at a barrier and are checked on their results only,
so a busy machine makes the tests slower, never failing.
"""
import contextlib
import gc
import threading

import numpy as np
import pytest
import torch

import tvm_bnn
from tvm_bnn import nn as bnn

from .conftest import need
from .test_hostile_inputs import run_isolated

# Run first in every isolated case: a model with integer outputs (binary conv -> binary dense, no float epilogue),
# so every ISA level and PyTorch agree exactly; distinct inputs; and hammer(), the threaded check.
PRELUDE = '''
import threading
import numpy as np
import torch
from tvm_bnn import nn as bnn

def tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(bnn.BinaryConv2d(8, 16, 3, padding=1, bias=False), torch.nn.Flatten(),
                               bnn.BinaryLinear(16 * 6 * 6, 10, bias=False)).eval()

def inputs(n):
    return [np.random.default_rng(i).standard_normal((1, 8, 6, 6)).astype("float32") for i in range(n)]

def references(model, xs):
    with torch.no_grad():
        return [model(torch.from_numpy(x)).numpy() for x in xs]

def hammer(fn, xs, refs, threads=4, calls=100, others=()):
    """``threads`` threads x ``calls`` calls of fn on distinct inputs, and one thread per function in ``others``,
    all released at once; every output must equal its reference exactly."""
    barrier = threading.Barrier(threads + len(others))
    errors = []

    def caller(t):
        barrier.wait()
        for j in range(calls):
            i = (t * calls + j) % len(xs)
            out = fn(xs[i])
            if not np.array_equal(out, refs[i]):
                errors.append(f"thread {t} call {j}: input {i} gave a wrong output")

    def other(f):
        barrier.wait()
        f()

    def guarded(target, arg):
        try:
            target(arg)
        except BaseException as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=guarded, args=(caller, t)) for t in range(threads)]
    pool += [threading.Thread(target=guarded, args=(other, f)) for f in others]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors, errors[:5]
'''


def isolated(code: str, tmp_path):
    line = run_isolated(PRELUDE + code, tmp_path)
    assert line == "NO ERROR", line


def test_x86_model_from_threads(tmp_path):
    """Four threads on one fresh model: their first calls race (the variant chosen once, the VM pool made once)."""
    isolated('''
model = tiny()
xs = inputs(16)
cm = tvm_bnn.compile(model, "x86", example_inputs=(torch.from_numpy(xs[0]),), progress=False)
hammer(cm, xs, references(model, xs))
_, machines = cm._machines()
assert 1 <= machines.created <= 4, machines.created  # a VM per call in flight at most, reused after
''', tmp_path)


def test_loaded_library_from_threads(tmp_path):
    """A library exported and loaded back (the portable one: tvm_bnn.load picks the level), and a one-CPU library
    through the board's runtime-only loader."""
    isolated(f'''
from tvm_bnn.deploy import runtime_loader
model = tiny()
xs = inputs(16)
refs = references(model, xs)
cm = tvm_bnn.compile(model, "x86", example_inputs=(torch.from_numpy(xs[0]),), progress=False)
loaded = tvm_bnn.load(cm.export({str(tmp_path / "portable.so")!r}))
hammer(loaded, xs, refs)
minimal = runtime_loader.load(cm.export({str(tmp_path / "one_cpu.so")!r}, portable=False))
hammer(minimal, xs, refs)
assert 1 <= minimal.machines.created <= 4, minimal.machines.created
''', tmp_path)


def test_time_and_profile_while_other_threads_call(tmp_path):
    """time() sets inputs on a VM (set_input + invoke_stateful): a VM of its own, which no call can take."""
    isolated('''
model = tiny()
xs = inputs(16)
cm = tvm_bnn.compile(model, "x86", example_inputs=(torch.from_numpy(xs[0]),), progress=False)
seconds, profiles = [], []

def timing():
    for x in xs[:4]:
        seconds.append(cm.time(x, number=3, repeat=2))

hammer(cm, xs, references(model, xs), threads=3, calls=100,
       others=(timing, lambda: profiles.append(cm.profile(number=2, repeat=1))))
assert len(seconds) == 4 and all(s > 0 for s in seconds), seconds
assert profiles and profiles[0], profiles
''', tmp_path)


def test_select_level_while_other_threads_call(tmp_path):
    """A portable model: one thread switches the ISA level while three call; a call finishes on the level it began
    with (the levels' outputs are identical integers here)."""
    isolated('''
from tvm_bnn.errors import CPUFeatureError
model = tiny()
xs = inputs(16)
cm = tvm_bnn.compile(model, "x86-portable", example_inputs=(torch.from_numpy(xs[0]),), progress=False)
runnable = []
for level in cm.levels:
    try:
        cm.select_level(level)
        runnable.append(level)
    except CPUFeatureError:
        pass
cm.select_level(None)

def switch():
    for k in range(60):
        cm.select_level(runnable[k % len(runnable)])

hammer(cm, xs, references(model, xs), threads=3, calls=100, others=(switch,))
assert len(runnable) >= 1, runnable
''', tmp_path)


def _tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(bnn.BinaryConv2d(8, 16, 3, padding=1, bias=False), torch.nn.Flatten(),
                               bnn.BinaryLinear(16 * 6 * 6, 10, bias=False)).eval()


def _threads(fn, xs, threads, calls):
    """Outputs of ``threads`` threads x ``calls`` calls released together, by input index."""
    barrier, out, errors = threading.Barrier(threads), {}, []

    def work(t):
        try:
            barrier.wait()
            for j in range(calls):
                i = t * calls + j
                out[i] = fn(xs[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors, errors
    return out


@pytest.mark.parametrize("target, tools, threads, calls", [
    ("c", ("gcc",), 3, 2),  # the portable C bundle, built and run with the host's gcc per call
    ("aarch64", ("aarch64-linux-gnu-gcc", "qemu-aarch64"), 2, 2),  # a bundle run under qemu-user per call
    ("cortex-m4", ("arm-none-eabi-gcc", "qemu-system-arm"), 2, 1),  # firmware on an emulated board per call
])
def test_bundle_runners_from_threads(target, tools, threads, calls):
    need(*tools)
    model = _tiny()
    xs = [np.random.default_rng(i).standard_normal((1, 8, 6, 6)).astype("float32") for i in range(threads * calls)]
    cm = tvm_bnn.compile(model, target, example_inputs=(torch.from_numpy(xs[0]),), progress=False)
    out = _threads(cm, xs, threads, calls)
    with torch.no_grad():
        for i, x in enumerate(xs):
            np.testing.assert_array_equal(out[i], model(torch.from_numpy(x)).numpy(), err_msg=f"input {i}")
    if cm.board is not None:  # the stats of a call come from that call's own run
        stats = cm.stats
        assert stats.instructions_per_inference > 0 and stats.ram_stack_bytes, stats


def _rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def test_many_sequential_calls_keep_memory_flat():
    """2000 calls after a warm-up: a tensor kept per call (the 32 KB input, its output) would add 64 MB or more."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(bnn.BinaryConv2d(8, 16, 3, padding=1, bias=False), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    xs = [np.random.default_rng(i).standard_normal((1, 8, 32, 32)).astype("float32") for i in range(4)]
    cm = tvm_bnn.compile(model, "x86", example_inputs=(torch.from_numpy(xs[0]),), progress=False)
    first = [cm(x) for x in xs]
    for k in range(300):  # warm-up: the allocator's pools, numpy's and Python's free lists
        cm(xs[k % 4])
    before = _rss()
    for k in range(2000):
        out = cm(xs[k % 4])
    growth = _rss() - before
    np.testing.assert_array_equal(out, first[(2000 - 1) % 4])
    assert growth < 16 << 20, f"RSS grew {growth / 2**20:.1f} MB over 2000 calls"
    assert cm._machines()[1].created == 1  # sequential calls reuse one VM


def test_the_vms_of_a_pool_share_the_weights():
    """The weights are constants of the executable; a VM refers to them: eight VMs in use at once cost about what
    one does, not eight copies of the 16 MB of float weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048)).eval()
    x = torch.randn(1, 64)
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    expected = cm(x)
    _, machines = cm._machines()
    args = cm._convert((x,))
    before = _rss()
    with contextlib.ExitStack() as stack:
        vms = [stack.enter_context(machines.checkout()) for _ in range(8)]
        outs = [vm["main"](*args)[0].numpy() for vm in vms]  # main returns a tuple of one
        growth = _rss() - before
    assert machines.created == 8
    for out in outs:
        np.testing.assert_array_equal(out, expected)
    weight_bytes = sum(p.numel() for p in model.parameters()) * 4
    assert growth < weight_bytes // 2, f"8 VMs added {growth / 2**20:.1f} MB; the weights are {weight_bytes / 2**20:.0f} MB"
