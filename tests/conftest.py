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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
