"""FuseResidualAdd: a float conv kernel's output added to a tensor of its shape is one kernel, computing the same
float32 sum (checked bit for bit against the build without the pass, and against PyTorch)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm

import tvm_bnn
from tvm_bnn.core import pipeline
from tvm_bnn.ops import epilogue
from tvm_bnn.passes.fuse_residual import FuseResidualAdd
from tvm_bnn.passes.graph import Graph, op_name
from tvm_bnn.passes.kernels import kernel_of

from ..conftest import need, randomize_batchnorm
from .test_passes import _Wrap

C = 37  # not a multiple of 32 or 64


class Residual(torch.nn.Module):
    """Bi-Real-Net's block: sign -> binary conv -> BN, plus the block's input; ``first``: the residual on the left
    of the add; ``reuse``: the conv's output read twice (not fusable)."""

    def __init__(self, channels=C, first=False, reuse=False, broadcast=False):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)
        with torch.no_grad():
            for conv in (self.conv, self.conv2):
                conv.weight.copy_(torch.sign(conv.weight))
        self.first, self.reuse, self.broadcast = first, reuse, broadcast

    def forward(self, x):
        y = self.bn(self.conv(torch.where(x >= 0, 1.0, -1.0)))
        r = x.mean((2, 3), keepdim=True) if self.broadcast else x
        z = r + y if self.first else y + r
        out = self.bn2(self.conv2(torch.where(z >= 0, 1.0, -1.0))) + z
        return out + y if self.reuse else out


def _fused_kernels(model, x):
    _, optimized, _ = tvm_bnn.analyse(model, (x,))
    mod = FuseResidualAdd(optimized)
    calls = [kernel_of(mod, v) for _, v in Graph(mod["main"]).order]
    return [(c.op, bool(c.params.get("residual"))) for c in calls if c is not None], \
        [op_name(v) for _, v in Graph(mod["main"]).order]


def _model(**kw):
    torch.manual_seed(0)
    return randomize_batchnorm(Residual(**kw)).eval(), torch.randn(1, C, 9, 11)


@pytest.mark.parametrize("first", [False, True])
def test_add_of_conv_and_residual_is_one_kernel(first):
    kernels, ops = _fused_kernels(*_model(first=first))
    assert [k for k in kernels if k[0] == "binary_conv2d"] == [("binary_conv2d", True)] * 2
    assert "relax.add" not in ops


def test_leaves_alone_a_conv_read_twice_and_a_broadcast_add():
    kernels, _ = _fused_kernels(*_model(reuse=True))
    # the first conv's output is read by its residual add and by the last add: it stays; the second conv fuses
    assert [k for k in kernels if k[0] == "binary_conv2d"] == [("binary_conv2d", False), ("binary_conv2d", True)]
    kernels, ops = _fused_kernels(*_model(broadcast=True))
    assert [k for k in kernels if k[0] == "binary_conv2d"] == [("binary_conv2d", False), ("binary_conv2d", True)]
    assert ops.count("relax.add") == 1  # y + mean(x): [1, C, 1, 1] is broadcast, not a residual of the conv's shape


def test_leaves_the_add_to_a_float_producer_the_conv_does_not_read():
    """A stage transition: the shortcut is a float 1x1 conv of the block's input, which TVM fuses the add into."""
    torch.manual_seed(0)
    w = torch.sign(torch.randn(C, C, 3, 3))
    shortcut = torch.randn(C, C, 1, 1)

    def f(x):
        return F.conv2d(torch.where(x >= 0, 1.0, -1.0), w, padding=1) + F.conv2d(x, shortcut)

    kernels, ops = _fused_kernels(_Wrap(f), torch.randn(1, C, 9, 11))
    assert ("binary_conv2d", True) not in kernels and "relax.add" in ops


def test_reference_adds_after_rounding_the_affine_part():
    rng = np.random.default_rng(0)
    dot = rng.integers(-300, 300, (1, 5, 7, 3)).astype(np.int32)
    scale, bias = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    acc = rng.standard_normal((1, 3, 5, 7)).astype(np.float32)
    affine = (dot.transpose(0, 3, 1, 2).astype(np.float32) * scale[:, None, None] + bias[:, None, None])
    np.testing.assert_array_equal(epilogue.conv_float_reference(dot, scale, bias, acc),
                                  affine.astype(np.float32) + acc)


def _without_pass(monkeypatch, compile_):
    with monkeypatch.context() as m:
        m.setattr(pipeline, "FuseResidualAdd", tvm.transform.Sequential([], name="none"))
        return compile_()


@pytest.mark.parametrize("target,tools", [("x86", ()), ("c", ("gcc",)),
                                          ("cortex-m4", ("arm-none-eabi-gcc", "qemu-system-arm")),
                                          ("cortex-m55", ("arm-none-eabi-gcc", "qemu-system-arm"))])
def test_same_bits_as_the_separate_add(monkeypatch, target, tools):
    need(*tools)
    model, x = _model(first=True)
    with torch.no_grad():
        expected = model(x).numpy()
    fused = tvm_bnn.compile(model, target, example_inputs=(x,), progress=False)
    separate = _without_pass(monkeypatch, lambda: tvm_bnn.compile(model, target, example_inputs=(x,),
                                                                  progress=False))
    got = fused(x)
    np.testing.assert_array_equal(got, separate(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_forced_avx2_byte_lane_kernel_adds_the_same_bits(monkeypatch):
    """The AVX2 byte-lane conv (schedules/simd_bytes.py) with its weights laid out at compile time and a residual."""
    monkeypatch.setenv("TVM_BNN_X86_LEVEL", "avx2")
    model, x = _model()
    fused = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    separate = _without_pass(monkeypatch, lambda: tvm_bnn.compile(model, "x86", example_inputs=(x,),
                                                                  progress=False))
    np.testing.assert_array_equal(fused(x), separate(x))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(fused(x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_two_activation_planes_sum_in_the_second_kernel(monkeypatch):
    """A W1A2 layer on x86 is two binary convs (one per activation plane) and a float add: the second conv adds the
    first one's output."""
    torch.manual_seed(1)
    w = torch.sign(torch.randn(C, C, 3, 3))

    class W1A2(torch.nn.Module):
        def forward(self, x):
            q = torch.clamp(torch.round(torch.clamp(x, 0, 1) * 2) / 2, 0, 1)  # 3 levels: 0, 0.5, 1
            return F.conv2d(q, w, padding=1)

    x = torch.randn(1, C, 9, 11)
    kernels, ops = _fused_kernels(W1A2(), x)
    assert [k for k in kernels if k[0] == "binary_conv2d"] == [("binary_conv2d", False), ("binary_conv2d", True)]
    assert "relax.add" not in ops
    fused = tvm_bnn.compile(W1A2(), "x86", example_inputs=(x,), progress=False)
    assert [r.bits for r in fused.report] == ["W1A2"]
    separate = _without_pass(monkeypatch, lambda: tvm_bnn.compile(W1A2(), "x86", example_inputs=(x,),
                                                                  progress=False))
    np.testing.assert_array_equal(fused(x), separate(x))
    with torch.no_grad():
        np.testing.assert_array_equal(fused(x), W1A2()(x).numpy())  # integers and halves: exact
