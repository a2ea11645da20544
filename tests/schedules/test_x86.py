"""x86 schedules: scheduled kernels stay exact, and the popcount instruction is the one the target CPU has.

Every x86 variant is built and its asm checked on any host; it runs only where the host has its CPU features
(``need_runnable``: skipped with the reason otherwise, never a SIGILL)."""
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


def _host_popcount():
    """What the "x86" target (this host) should use: (expected instruction, forbidden one)."""
    from tvm_bnn.targets import resolve_target

    isa = resolve_target("x86").popcount_isa
    if isa == "avx512-vpopcntdq":
        return "vpopcntq", None
    if isa.startswith("avx2"):
        return "vpshufb", "vpopcntq"
    if isa == "popcnt":
        return "popcnt", "vpopcntq"
    return None, "popcnt"


@pytest.mark.parametrize("target,expect,forbid", [
    ("x86", "host", None),
    ("x86-avx512", "vpopcntq", None),
    ("x86-avx2", "vpshufb", "vpopcntq"),  # AVX2 has no vector popcount: LLVM's nibble-table (pshufb) sequence
    ("x86-popcnt", "popcnt", "vpopcntq"),
    ("x86-sse2", None, "popcnt"),  # no popcount instruction at all: LLVM's SWAR sequence
])
def test_every_x86_variant_is_exact_and_uses_its_popcount(target, expect, forbid):
    from ..conftest import need_runnable, randomize_batchnorm

    if expect == "host":
        expect, forbid = _host_popcount()
    torch.manual_seed(0)
    model = randomize_batchnorm(TwoBinaryConvs())
    x = torch.randn(2, 70, 9, 11)
    cm = tvm_bnn.compile(model, target, example_inputs=(x,), progress=False)  # building for any CPU is fine
    asm = _asm(cm)
    if expect:
        assert expect in asm
    if forbid:
        assert forbid not in asm
    need_runnable(target)
    np.testing.assert_array_equal(cm(x), model(x).numpy())
