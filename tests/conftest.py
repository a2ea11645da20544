import os
import warnings

import numpy as np
import pytest

warnings.filterwarnings("ignore", category=FutureWarning)
os.environ.setdefault("TVM_NUM_THREADS", "2")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_float_close(actual, expected, rtol=1e-5):
    """Float outputs agree to float rounding: rtol 1e-5, with an absolute floor scaled to the output."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.max(np.abs(expected))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(scale, 1.0))


def randomize_batchnorm(model, rng_seed=0, zero_gamma_channel=True):
    """Eval BN statistics that make every sign tie-free and exercise gamma < 0 and gamma == 0."""
    import torch

    gen = torch.Generator().manual_seed(rng_seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            with torch.no_grad():
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 4 - 2 + 0.37)
                m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) * 2 - 1)
                if zero_gamma_channel and n > 1:
                    m.weight[1] = 0.0
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


def kernel_ops(mod):
    """The tvm_bnn kernels (op names) a Relax module calls, in order."""
    from tvm_bnn.passes.kernels import kernel_of

    ops = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            k = kernel_of(mod, binding.value)
            if k is not None:
                ops.append(k.op)
    return ops


def need(*tools):
    """Skip the test when an external tool (cross compiler, emulator) is missing; under CI=true fail it instead."""
    from tvm_bnn.errors import ToolchainMissingError
    from tvm_bnn.targets import qemu

    for tool in tools:
        try:
            qemu.require_tool(tool)
        except ToolchainMissingError as exc:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"CI=true and the toolchain is missing: {exc}")
            pytest.skip(str(exc))


_ISA_SKIPS = {}  # missing features -> how many tests ran their code only as far as the asm


def need_isa(*features, what: str = "asm checked, run skipped"):
    """Skip the rest of the test unless this host has every x86 feature in ``features`` (LLVM names, e.g.
    "avx512vpopcntdq"): code for an ISA the host lacks is built and its asm checked before calling this, never
    run (it would die with SIGILL). The reason names the features and the host; the run's summary lists them."""
    from tvm_bnn.targets import x86_host

    missing = x86_host.missing_features(features)
    if missing:
        key = x86_host.short_list(missing)
        _ISA_SKIPS[key] = _ISA_SKIPS.get(key, 0) + 1
        pytest.skip(f"host lacks {key} ({x86_host.describe_host()}): {what}")


def need_runnable(target, what: str = "asm checked, run skipped"):
    """need_isa for every feature code compiled for ``target`` (a preset name, dict or TVM target) may use."""
    from tvm_bnn.targets import resolve_target

    need_isa(*resolve_target(target).required_features, what=what)


def pytest_terminal_summary(terminalreporter):
    """Which x86 ISA paths ran here (CI logs show it even under -q)."""
    from tvm_bnn.targets import x86_host

    try:
        host = x86_host.describe_host()
    except Exception as exc:  # noqa: BLE001 - a bad TVM_BNN_X86_LEVEL: say so, do not hide the results
        host = f"unknown ({exc})"
    terminalreporter.write_line(f"x86 host: {host}")
    for key, n in sorted(_ISA_SKIPS.items()):
        terminalreporter.write_line(f"  built but not run for lack of {key}: {n} test(s)")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, ready, procs=(), timeout: float = 600) -> float:
    """Poll ``ready()`` until it is true; returns the seconds waited. Fails at once if one of ``procs`` ([(name,
    Popen)]) exits; ``timeout`` only catches a hang (a busy machine makes startup slow, never failing)."""
    import time

    t0 = time.monotonic()
    while not ready():
        for name, p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for {what}")
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not ready after {timeout} s")
        time.sleep(0.25)
    return time.monotonic() - t0


def tracker_up(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` (the RPC tracker, once it listens)."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def server_registered(port: int, key: str) -> bool:
    """Whether an RPC server with ``key`` has registered with the tracker on 127.0.0.1:``port``."""
    import json

    from tvm import rpc

    try:
        return key in json.dumps(rpc.connect_tracker("127.0.0.1", port).summary().get("queue_info", {}))
    except Exception:  # noqa: BLE001 - the tracker is still starting
        return False


def stop_process_group(p) -> None:
    """End a process started with start_new_session=True and everything it started (TVM's RPC server and tracker
    run their work in popen workers, their children: terminating the leader alone would orphan them)."""
    import signal
    import subprocess

    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    try:
        os.killpg(p.pid, signal.SIGKILL)  # the group's leftovers
    except ProcessLookupError:
        pass
