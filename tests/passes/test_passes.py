"""Each pass on its own: what it matches, what it emits, what it leaves alone."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tvm_bnn
from tvm_bnn.frontends import import_model
from tvm_bnn.passes import FoldZeroPadIntoConv, SimplifyStraightThrough, cleanup
from tvm_bnn.passes.binarize import binary_weight_scale
from tvm_bnn.passes.fuse_threshold import step_thresholds
from tvm_bnn.passes.graph import Graph, op_name

from ..conftest import kernel_ops, randomize_batchnorm


def _ops(mod):
    return [op_name(v) for _, v in Graph(mod["main"]).order]


def _imported(fn, *shape):
    class Net(torch.nn.Module):
        def forward(self, x):
            return fn(x)

    return cleanup()(import_model(Net(), (torch.randn(*shape),)).mod)


def test_step_thresholds_directions():
    dots = np.arange(-4, 5)
    bits = np.stack([dots >= 1, dots <= -2, np.ones(9, bool), np.zeros(9, bool)])
    d, t = step_thresholds(bits, dots)
    np.testing.assert_array_equal(d, [1, -1, 0, 0])
    np.testing.assert_array_equal(t, [1, 2, 0, 1])
    for o in range(4):
        np.testing.assert_array_equal(dots * d[o] >= t[o], bits[o])
    assert step_thresholds(np.stack([(dots >= 1) ^ (dots >= 3)]), dots) is None  # not a step: refuse


def test_binary_weight_scale_reasons():
    w = np.sign(np.random.default_rng(0).standard_normal((4, 3, 3, 3))).astype(np.float32)
    np.testing.assert_array_equal(binary_weight_scale(w * 2, 0), [2, 2, 2, 2])
    w2 = w.copy()
    w2[2, 0, 0, 0] = 0
    assert "output channel 2" in binary_weight_scale(w2, 0) and "zeros" in binary_weight_scale(w2, 0)
    w3 = w.copy()
    w3[1, 1, 1, 1] *= 3
    assert "output channel 1 has 2 distinct magnitudes" in binary_weight_scale(w3, 0)
    w4 = w.copy()
    w4[0, 0, 0, 0] = np.nan
    assert "NaN" in binary_weight_scale(w4, 0)


def test_straight_through_sums_simplify_to_the_binarizer():
    mod = _imported(lambda x: (x + (torch.sign(x) - x).detach()) * 3, 2, 5)
    assert "relax.subtract" in _ops(mod)
    out = cleanup()(SimplifyStraightThrough(mod))
    assert _ops(out) == ["relax.sign", "relax.multiply", None]  # last: the output tuple


@pytest.mark.parametrize("form", [
    lambda x, s: x + (s - x).detach(),  # a + stop(b - a)
    lambda x, s: x - (x - s).detach(),  # a - stop(a - b)
    lambda x, s: x + (-x + s).detach(),  # a + stop(-a + b)
    lambda x, s: (s - x).detach() + x,  # stop(b - a) + a
    lambda x, s: s.detach() + x - x.detach(),  # stop(b) + a - stop(a)
    lambda x, s: x + 1.0 * (s - x).detach(),  # a scaled by 1
    lambda x, s: x.transpose(1, 3) + (s - x).detach().transpose(1, 3),  # one tensor through two layout paths
    lambda x, s: (x.transpose(1, 3) + (s.transpose(1, 3) - x.transpose(1, 3)).detach()).transpose(1, 3),
])
def test_straight_through_algebra(form):
    """Every arrangement of the straight-through sum is its binarizer (transposes between the pieces too)."""
    mod = _imported(lambda x: form(x, torch.where(x >= 0, 1.0, -1.0)), 2, 3, 4, 5)
    out = SimplifyStraightThrough(mod)
    assert not {"relax.add", "relax.subtract"} & set(_ops(cleanup()(out))), _ops(out)


def test_straight_through_of_a_weight_is_exact():
    """A weight quantizer's sum is simplified before folding: the folded weights are exactly +-alpha."""
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 3, 3, 3) * 7)

        def quantized(self):
            alpha = self.w.abs().mean(dim=(1, 2, 3), keepdim=True)
            return self.w + (torch.sign(self.w) * alpha - self.w).detach()

        def forward(self, x):
            return F.conv2d(torch.where(x >= 0, 1.0, -1.0), self.quantized())

    net = Net()
    assert len(torch.unique(net.quantized().abs())) > 4  # PyTorch's sum rounds: not +-alpha exactly
    _, _, report = tvm_bnn.analyse(net, (torch.randn(1, 3, 6, 6),))
    assert report[0].binarized, str(report)


def test_straight_through_leaves_non_binary_sums_alone():
    mod = _imported(lambda x: x + (torch.tanh(x) - x), 2, 5)  # tanh is not a binarizer: the float sum stays
    out = cleanup()(SimplifyStraightThrough(mod))
    assert "relax.tanh" in _ops(out) and "relax.add" in _ops(out)


def test_fold_pad_into_conv():
    w = torch.randn(3, 4, 3, 3)
    mod = _imported(lambda x: F.conv2d(F.pad(x, (1, 2, 0, 3)), w, padding=1), 1, 4, 6, 6)
    out = FoldZeroPadIntoConv(mod)
    convs = [v for _, v in Graph(out["main"]).order if op_name(v) == "relax.nn.conv2d"]
    assert [int(p) for p in convs[-1].attrs.padding] == [1, 2, 4, 3]  # top, left, bottom, right
    mod2 = _imported(lambda x: F.conv2d(F.pad(x, (1, 1, 1, 1), value=1.0), w), 1, 4, 6, 6)
    convs2 = [v for _, v in Graph(FoldZeroPadIntoConv(mod2)["main"]).order if op_name(v) == "relax.nn.conv2d"]
    assert [int(p) for p in convs2[-1].attrs.padding] == [0, 0, 0, 0]  # non-zero pad value: not folded


def test_output_transform_fuses_bias_scale_bn_into_one_kernel():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, 3, bias=True)
    bn = randomize_batchnorm(torch.nn.BatchNorm2d(7))
    with torch.no_grad():
        conv.weight.copy_(torch.sign(conv.weight))
    _, optimized, _ = tvm_bnn.analyse(
        _Wrap(lambda x: bn(conv(torch.where(x >= 0, 1.0, -1.0)) * 2.0 - 1.0)), (torch.randn(1, 5, 6, 6),))
    assert kernel_ops(optimized) == ["bitpack_nchw", "binary_conv2d"]
    assert all(op in (None, "relax.call_tir") for op in _ops(optimized)), _ops(optimized)


def test_residual_add_is_not_fused_into_threshold():
    torch.manual_seed(0)
    w = torch.sign(torch.randn(6, 6, 3, 3))

    def f(x):
        b = torch.where(x >= 0, 1.0, -1.0)
        y = F.conv2d(b, w, padding=1) + x
        return F.conv2d(torch.where(y >= 0, 1.0, -1.0), w, padding=1)

    _, optimized, report = tvm_bnn.analyse(_Wrap(f), (torch.randn(1, 6, 5, 5),))
    assert report.num_binarized == 2
    assert "binary_conv2d_bits" not in kernel_ops(optimized)


class _Wrap(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)
