"""x86 schedules: scheduled kernels stay exact, and the popcount instruction is the one the target CPU has."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tvm_bnn


class TwoBinaryConvs(torch.nn.Module):
    def __init__(self, cin=70, cmid=130, cout=9):
        super().__init__()
        self.w1 = torch.sign(torch.randn(cmid, cin, 3, 3))
        self.w2 = torch.sign(torch.randn(cout, cmid, 3, 3))
        self.bn = torch.nn.BatchNorm2d(cmid)

    def forward(self, x):
        y = self.bn(F.conv2d(torch.where(x >= 0, 1.0, -1.0), self.w1, padding=1))
        return F.conv2d(torch.where(y >= 0, 1.0, -1.0), self.w2, stride=2, padding=1)


def _asm(cm):
    return cm.executable.mod.inspect_source("asm") + "".join(
        m.inspect_source("asm") for m in cm.executable.mod.imports if m.kind == "llvm")


@pytest.mark.parametrize("target,expect,forbid", [
    ("x86", "vpopcntq", None),
    ("x86-avx512", "vpopcntq", None),
    ("x86-avx2", "vpshufb", "vpopcntq"),  # AVX2 has no vector popcount: LLVM's nibble-table (pshufb) sequence
    ("x86-popcnt", "popcnt", "vpopcntq"),
])
def test_every_x86_variant_is_exact_and_uses_its_popcount(target, expect, forbid):
    from tvm_bnn.targets import resolve_target

    if target == "x86" and resolve_target("x86").popcount_isa != "avx512-vpopcntdq":
        pytest.skip("host CPU has no AVX-512 VPOPCNTDQ")
    torch.manual_seed(0)
    from ..conftest import randomize_batchnorm

    model = randomize_batchnorm(TwoBinaryConvs())
    x = torch.randn(2, 70, 9, 11)
    cm = tvm_bnn.compile(model, target, example_inputs=(x,), progress=False)
    np.testing.assert_array_equal(cm(x), model(x).numpy())
    asm = _asm(cm)
    assert expect in asm
    if forbid:
        assert forbid not in asm
