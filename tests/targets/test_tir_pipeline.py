"""targets/tir_pipeline.py: a compiled model's small allocations (register tiles, a bitpack's row of words) are stack
slots, so no parallel loop calls TVM's workspace pool per tile."""
import re

import torch

import tvm_bnn
from tvm_bnn.targets import tir_pipeline

from ..conftest import assert_float_close, randomize_batchnorm


class StemThenBinary(torch.nn.Module):
    """A float 7x7/2 stem (register-tiled conv + BatchNorm epilogue), then a sign-binarized 3x3 conv: the float
    schedule's tile and the bitpack's row of words are both small per-iteration buffers of a parallel loop."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 24, 7, 2, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(24)
        self.w = torch.sign(torch.randn(20, 24, 3, 3))

    def forward(self, x):
        y = self.bn(self.stem(x))
        return torch.nn.functional.conv2d(torch.where(y >= 0, 1.0, -1.0), self.w, padding=1)


def _lambda_workspace_calls(cm) -> dict:
    """{parallel lambda: calls of TVMBackendAllocWorkspace in it} over the compiled model's assembly."""
    asm = cm.executable.mod.inspect_source("asm") + "".join(
        m.inspect_source("asm") for m in cm.executable.mod.imports if m.kind == "llvm")
    calls, current = {}, None
    for line in asm.splitlines():
        function = re.match(r"^\s*\.type\s+([.\w]+),@function", line)
        if function:
            current = function.group(1) if "parallel_lambda" in function.group(1) else None
        elif current is not None and "AllocWorkspace" in line:
            calls[current] = calls.get(current, 0) + 1
    return calls


def _compile(model, x):
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    with torch.no_grad():
        assert_float_close(cm(x), model(x).numpy(), rtol=1e-5)
    return cm


def test_no_parallel_loop_allocates_per_tile(monkeypatch):
    torch.manual_seed(3)
    model = randomize_batchnorm(StemThenBinary(), zero_gamma_channel=False).eval()
    x = torch.randn(1, 3, 40, 56)
    cm = _compile(model, x)
    assert cm.report.num_binarized == 1, cm.report
    assert not _lambda_workspace_calls(cm)
    # the check sees the calls with TVM's default lowering (LowerTVMBuiltin sends "local" tiles to the pool)
    monkeypatch.setattr(tir_pipeline, "NAME", "default")
    assert _lambda_workspace_calls(_compile(model, x))
