"""x86 schedules of the float layers a BNN keeps (tvm_bnn.schedules.float_x86): exact against PyTorch, applied to
the PrimFuncs they are meant for, and never fatal (a schedule that raises falls back to the generic one)."""
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tvm_bnn
from tvm_bnn.schedules import float_x86, generic

from ..conftest import assert_float_close, randomize_batchnorm


class ConvBnResidual(torch.nn.Module):
    """conv(k, stride, 'same' padding) -> BatchNorm -> + a strided 1x1 conv of the input (the residual)."""

    def __init__(self, cin, cout, k, stride, bias=False):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=bias)
        self.bn = torch.nn.BatchNorm2d(cout)
        self.short = torch.nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.short(x)


def _float_funcs(cm, prefix):
    return {gv.name_hint: f for gv, f in cm.scheduled.functions_items()
            if gv.name_hint.startswith(prefix) and hasattr(f, "body")}


def _fallbacks(caplog):
    return [r.getMessage() for r in caplog.records if "float_x86 schedule failed" in r.getMessage()]


def _compile_check(model, x, rtol=1e-5):
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    with torch.no_grad():
        ref = model(x).numpy()
    assert_float_close(cm(x), ref, rtol=rtol)
    return cm


@pytest.mark.parametrize("cin,cout,k,stride,batch,hw,bias", [
    (3, 20, 7, 2, 1, (30, 30), False),  # stem-like: 7x7 stride 2, padded, 20 channels
    (5, 24, 3, 1, 2, (9, 11), True),  # 3x3, batch 2, bias, width 11 (11-lane vectors)
    (4, 8, 3, 1, 1, (5, 17), False),  # width 17: no useful vector divisor -> scalar register tile
    (16, 32, 1, 1, 1, (7, 7), False),  # 1x1 shortcut shape, width 7
    (7, 17, 3, 2, 2, (13, 11), False),  # odd channel count, stride 2, odd padded width (no de-interleave)
    (12, 40, 1, 1, 1, (16, 32), False),  # full 16-lane vectors, two per tile
])
def test_conv_bn_residual_matches_pytorch(cin, cout, k, stride, batch, hw, bias, caplog):
    caplog.set_level(logging.DEBUG, logger="tvm_bnn.schedules.generic")
    torch.manual_seed(cin * 100 + cout)
    model = randomize_batchnorm(ConvBnResidual(cin, cout, k, stride, bias), zero_gamma_channel=False)
    x = torch.randn(batch, cin, *hw)
    cm = _compile_check(model, x)
    assert not _fallbacks(caplog)
    convs = _float_funcs(cm, "fused_conv2d")
    assert convs
    width = (hw[1] - 1) // stride + 1
    lanes = float_x86.isa_of(cm.target).lanes  # 16 fp32 lanes with AVX-512, 8 with AVX2, 4 with SSE
    for name, f in convs.items():  # our schedule applied: accumulators in a local tile, epilogue fused
        script = f.script()
        assert "_local" in script and "T.parallel" in script, name
        assert ("T.vectorized" in script) == (float_x86.vector_lanes(width, lanes) >= 4), (name, lanes)


def test_stem_conv_relu_maxpool_matches_pytorch(caplog):
    caplog.set_level(logging.DEBUG, logger="tvm_bnn.schedules.generic")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 7, 2, 3, bias=False), torch.nn.BatchNorm2d(16),
                                torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1))
    model = randomize_batchnorm(model, zero_gamma_channel=False)
    _compile_check(model, torch.randn(1, 3, 64, 64))
    assert not _fallbacks(caplog)


class PoolNet(torch.nn.Module):
    def forward(self, x):
        a = F.max_pool2d(x, 3, 2, 1) + F.avg_pool2d(x, 2, 2)
        return torch.flatten(F.adaptive_avg_pool2d(a, 1), 1) * 2.0 + a.mean(dim=(2, 3))


def test_pooling_and_elementwise_match_pytorch(caplog):
    caplog.set_level(logging.DEBUG, logger="tvm_bnn.schedules.generic")
    _compile_check(PoolNet(), torch.randn(2, 6, 28, 28))
    assert not _fallbacks(caplog)


@pytest.mark.parametrize("batch,fin,fout,bias", [(1, 512, 1000, True), (3, 50, 37, False), (2, 64, 48, True)])
def test_linear_matches_pytorch(batch, fin, fout, bias, caplog):
    caplog.set_level(logging.DEBUG, logger="tvm_bnn.schedules.generic")
    torch.manual_seed(fout)
    model = torch.nn.Linear(fin, fout, bias=bias).eval()
    _compile_check(model, torch.randn(batch, fin))
    assert not _fallbacks(caplog)


def test_a_failing_schedule_falls_back(monkeypatch, caplog):
    def boom(func, num_cores):
        raise RuntimeError("schedule bug")

    monkeypatch.setattr(float_x86, "schedule_conv2d_nchw", boom)
    monkeypatch.setattr(float_x86, "schedule_elementwise", boom)
    caplog.set_level(logging.DEBUG, logger="tvm_bnn.schedules.generic")
    torch.manual_seed(2)
    model = randomize_batchnorm(ConvBnResidual(4, 8, 3, 1), zero_gamma_channel=False)
    _compile_check(model, torch.randn(1, 4, 8, 8))
    assert _fallbacks(caplog)


def test_vector_lanes():
    assert float_x86.vector_lanes(112) == 16
    assert float_x86.vector_lanes(28) == 14
    assert float_x86.vector_lanes(7) == 7
    assert float_x86.vector_lanes(13) == 13
    assert float_x86.vector_lanes(34) == 2
    assert np.all([float_x86.vector_lanes(n) <= 16 for n in range(1, 100)])


def test_vector_isa_follows_the_target():
    import tvm

    assert float_x86.isa_of(None) == float_x86.AVX512
    assert float_x86.isa_of(tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})) == float_x86.AVX512
    assert float_x86.isa_of(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})) == float_x86.AVX2
    assert float_x86.isa_of(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})).lanes == 4
