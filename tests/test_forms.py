"""Every binarization form the passes recognise, compiled for x86 and compared with PyTorch eager."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tvm_bnn
from tvm_bnn import nn as bnn

from .conftest import assert_float_close, randomize_batchnorm


def ge_sign(x):
    return torch.where(x >= 0, 1.0, -1.0)


ACTIVATIONS = {
    # name: (binarize fn, PyTorch output exactly +-1?)
    "sign": (torch.sign, True),
    "where_ge": (ge_sign, True),
    "ste_add": (lambda x: x + (torch.sign(x) - x).detach(), False),
    "bireal_ste": (lambda x: torch.sign(x).detach() - _bireal_poly(x).detach() + _bireal_poly(x), False),
    "reactnet_ste": (lambda x: torch.sign(x).detach() - torch.tanh(x).detach() + torch.tanh(x), False),
    "hardtanh_sign": (lambda x: torch.sign(F.hardtanh(x)), True),
    "binary_sign": (bnn.binary_sign, True),
    "detach_ste": (lambda x: torch.sign(x).detach() + x - x.detach(), False),
    # a PyTorch BNN library's two-valued sign (sign(0) -> +1 written out by the model itself)
    "where_sign_eq0": (lambda x: torch.where(torch.sign(x) == 0, 1.0, torch.sign(x)), True),
    # {0, 1}: sign(0) = 0 is the model's own value after a ReLU (binarized exactly through the affine fold)
    "sign_relu": (lambda x: torch.sign(F.relu(x)), True),
    # QKeras' binary as PyTorch would write it: x + stop(-x + k), k = sign(x) + (1 - |sign(x)|)
    "qkeras_binary": (lambda x: x + (-x + (torch.sign(x) + (1 - torch.sign(x).abs()))).detach(), False),
    # QKeras' binary_tanh: 2 * (h + stop(round(h) - h)) - 1, h = clip(0.5 x + 0.5, 0, 1) (0 -> -1)
    "qkeras_binary_tanh": (lambda x: 2 * (_h(x) + (torch.round(_h(x)) - _h(x)).detach()) - 1, False),
    # |x| > 1: switches twice in x, once in |x| (TVM computes |x| in float, the threshold above it is binarized)
    "abs_gt_1": (lambda x: torch.where(x.abs() > 1, 1.0, -1.0), True),
}


def _h(x):
    return torch.clamp(0.5 * x + 0.5, 0, 1)


def _bireal_poly(x):
    """Bi-Real-Net's piecewise-polynomial approximation of sign."""
    m1 = (x < -1).float()
    m2 = (x < 0).float()
    m3 = (x < 1).float()
    out = -1 * m1 + (x * x + 2 * x) * (1 - m1)
    out = out * m2 + (-x * x + 2 * x) * (1 - m2)
    return out * m3 + 1 * (1 - m3)


WEIGHTS = {
    "sign": lambda w: torch.sign(w),
    "sign_times_const_alpha": lambda w: torch.sign(w) * torch.linspace(0.5, 1.5, w.shape[0]).view(
        -1, *([1] * (w.dim() - 1))),
    "xnor_mean": lambda w: torch.sign(w) * w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True),
    "where_ge": lambda w: torch.where(w >= 0, 1.0, -1.0),
}


class FormNet(torch.nn.Module):
    """float stem -> BN -> [act] -> binary conv -> BN -> [act] -> binary conv -> BN -> maxpool -> [act] -> binary dense."""

    def __init__(self, act, wform, c1=37, c2=70, classes=11, hw=9):
        super().__init__()
        self.act, self.wform = act, wform
        self.stem = torch.nn.Conv2d(3, c1, 3, padding=1)
        self.bn0 = torch.nn.BatchNorm2d(c1)
        self.w1 = torch.nn.Parameter(torch.randn(c2, c1, 3, 3))
        self.bn1 = torch.nn.BatchNorm2d(c2)
        self.w2 = torch.nn.Parameter(torch.randn(c2, c2, 3, 2))
        self.bn2 = torch.nn.BatchNorm2d(c2)
        pooled = ((hw - 1) // 2 + 1) // 2
        self.fc = torch.nn.Parameter(torch.randn(classes, c2 * pooled * ((hw - 1 + 1) // 2 // 2 if False else pooled)))

    def forward(self, x):
        y = self.bn0(self.stem(x))
        y = self.bn1(F.conv2d(self.act(y), self.wform(self.w1), padding=1))
        y = self.bn2(F.conv2d(self.act(y), self.wform(self.w2), stride=2, padding=(1, 1)))
        y = F.max_pool2d(y, 2)
        return F.linear(self.act(y).flatten(1), self.wform(self.fc))


def _check(model, x, exact_pm1):
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    expected = model(x).detach().numpy()
    got = cm(x)
    if exact_pm1:
        np.testing.assert_array_equal(got, expected)  # binarized integer results, exactly
    else:  # PyTorch's STE output is +-1 only to a rounding; its integer sums carry that rounding
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)
    return cm


@pytest.mark.parametrize("act_name", sorted(ACTIVATIONS))
def test_activation_forms_binarize_exactly(act_name):
    torch.manual_seed(0)
    act, exact = ACTIVATIONS[act_name]
    model = randomize_batchnorm(FormNet(act, WEIGHTS["sign"]))
    cm = _check(model, torch.randn(2, 3, 9, 9), exact)
    assert [r.binarized for r in cm.report] == [False, True, True, True], str(cm.report)


@pytest.mark.parametrize("w_name", sorted(WEIGHTS))
def test_weight_forms_binarize(w_name):
    torch.manual_seed(1)
    model = randomize_batchnorm(FormNet(ge_sign, WEIGHTS[w_name]))
    x = torch.randn(3, 3, 9, 9)
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    assert [r.binarized for r in cm.report] == [False, True, True, True], str(cm.report)
    assert_float_close(cm(x), model(x).detach().numpy())


def test_constant_pm_alpha_weights_are_binary():
    """A stored tensor whose values per output channel are +-alpha_o binarizes (no sign op in the graph)."""
    torch.manual_seed(2)
    alpha = torch.rand(13, 1, 1, 1) + 0.1
    w = torch.sign(torch.randn(13, 5, 3, 3)) * alpha

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", w)

        def forward(self, x):
            return F.conv2d(ge_sign(x), self.w, padding=1)

    x = torch.randn(1, 5, 6, 7)
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    assert cm.report[0].binarized
    assert_float_close(cm(x), Net()(x).numpy())


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    (1, 1, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 2), ((3, 1), (1, 2), (1, 0), 1), (2, 1, 0, (1, 2)),
    (7, 3, 3, 1)])
@pytest.mark.parametrize("cin,cout,batch", [(1, 3, 1), (65, 17, 2), (130, 64, 3)])
def test_conv_geometries_exact(kernel, stride, padding, dilation, cin, cout, batch):
    """Integer conv outputs match PyTorch exactly, zero padding included, on odd channel counts."""
    torch.manual_seed(3)
    w = torch.sign(torch.randn(cout, cin, *((kernel, kernel) if isinstance(kernel, int) else kernel)))

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.conv2d(ge_sign(x), w, stride=stride, padding=padding, dilation=dilation)

    x = torch.randn(batch, cin, 11, 10)
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    assert cm.report[0].binarized, str(cm.report)
    np.testing.assert_array_equal(cm(x), Net()(x).numpy())


def test_asymmetric_padding_via_f_pad_exact():
    """F.pad then conv: the zeros F.pad inserts count as zeros (PyTorch semantics), not as -1."""
    torch.manual_seed(4)
    w = torch.sign(torch.randn(9, 33, 3, 3))

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.conv2d(F.pad(ge_sign(x), (0, 2, 1, 0)), w)

    x = torch.randn(2, 33, 7, 8)
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    assert cm.report[0].binarized, str(cm.report)
    np.testing.assert_array_equal(cm(x), Net()(x).numpy())


def test_bias_scale_bn_prelu_residual_after_binary_layer():
    torch.manual_seed(5)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = bnn.BinaryConv2d(19, 19, 3, padding=1, bias=True, scale="xnor")
            self.bn = torch.nn.BatchNorm2d(19)
            self.prelu = torch.nn.PReLU(19)
            self.conv2 = bnn.BinaryConv2d(19, 23, 3, padding=1, bias=False)
            self.bn2 = torch.nn.BatchNorm2d(23)

        def forward(self, x):
            y = self.prelu(self.bn(self.conv(x)) * 0.5 + x)  # residual add
            return torch.nn.functional.hardtanh(self.bn2(self.conv2(y)))

    model = randomize_batchnorm(Net())
    with torch.no_grad():
        model.prelu.weight.uniform_(-0.5, 0.5)
    x = torch.randn(2, 19, 8, 7)
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    assert [r.binarized for r in cm.report] == [True, True]
    assert_float_close(cm(x), model(x).detach().numpy())


class ConvBnConv(torch.nn.Module):
    """BinaryConv2d -> BatchNorm -> ``between`` (identity by default) -> BinaryConv2d, 3x3, padding 1, no bias."""

    def __init__(self, cin, mid, cout, between=None):
        super().__init__()
        self.c1 = bnn.BinaryConv2d(cin, mid, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(mid)
        self.c2 = bnn.BinaryConv2d(mid, cout, 3, padding=1, bias=False)
        self.between = between

    def forward(self, x):
        y = self.bn(self.c1(x))
        return self.c2(y if self.between is None else self.between(y))


def test_threshold_with_negative_and_zero_gamma_exact():
    """conv -> BN(gamma < 0 and == 0 channels) -> sign -> conv: folded into integer thresholds, bit-exact."""
    torch.manual_seed(6)
    model = randomize_batchnorm(ConvBnConv(29, 67, 5))
    assert (model.bn.weight < 0).any() and (model.bn.weight == 0).any()
    x = torch.randn(3, 29, 6, 9)
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    np.testing.assert_array_equal(cm(x), model(x).detach().numpy())
    _, optimized, _ = tvm_bnn.analyse(model, (x,))
    from .conftest import kernel_ops

    assert "binary_conv2d_bits" in kernel_ops(optimized)


def test_maxpool_on_binary_activations_is_bitwise():
    torch.manual_seed(7)
    model = randomize_batchnorm(ConvBnConv(3, 70, 6, lambda y: F.max_pool2d(y, 3, stride=2, padding=1)))
    x = torch.randn(2, 3, 11, 13)
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    np.testing.assert_array_equal(cm(x), model(x).detach().numpy())
    _, optimized, _ = tvm_bnn.analyse(model, (x,))
    from .conftest import kernel_ops

    ops = kernel_ops(optimized)
    assert "binary_maxpool" in ops and "binary_conv2d_bits" in ops, ops


class GatheredNet(torch.nn.Module):
    """A sign of per-channel thresholds, ``index_select``-ed, a binary conv, then a pad in ``mode`` of its sign (of
    a ReLU's output with ``relu``) and a second binary conv."""

    def __init__(self, mode, relu):
        super().__init__()
        self.mode, self.relu = mode, relu
        self.c1 = torch.nn.Conv2d(3, 40, 3)
        self.bn = torch.nn.BatchNorm2d(40)
        self.t = torch.randn(1, 40, 1, 1)
        self.idx = torch.randperm(40)[:35]
        self.w = torch.sign(torch.randn(37, 35, 3, 3))
        self.w2 = torch.sign(torch.randn(9, 37, 3, 3))

    def forward(self, x):
        y = self.bn(self.c1(x))
        z = torch.index_select(torch.sign(y - self.t), 1, self.idx)
        y = F.conv2d(z, self.w, padding=1) - 0.5
        y = F.relu(y) if self.relu else y
        return F.conv2d(torch.sign(F.pad(y, (2, 1, 1, 2), mode=self.mode)), self.w2)


@pytest.mark.parametrize("route", ["module", "onnx"])
@pytest.mark.parametrize("mode,relu", [("reflect", False), ("replicate", False), ("reflect", True)])
def test_gathered_activations_binarize(mode, relu, route, tmp_path):
    """A reflect / replicate pad (``take`` with constant indices from torch.export; ONNX's edge / reflect Pad
    imported as the same ``take``s) and an ``index_select`` of channels move elements only: a sign of them is still
    two-valued (bits gathered like the floats, per-channel tests with them), and the ReLU's zeros they gather stay
    the model's own (``{-1, 0, 1}``: W1A2), exact either way."""
    torch.manual_seed(5)
    model = randomize_batchnorm(GatheredNet(mode, relu))
    x = torch.randn(2, 3, 11, 13)
    source = model
    if route == "onnx":
        source = str(tmp_path / "gathered.onnx")
        torch.onnx.export(model, (x,), source, dynamo=False)
    cm = tvm_bnn.compile(source, "x86", example_inputs=(x.numpy(),), progress=False)
    assert [r.bits for r in cm.report] == ["W32A32", "W1A1", "W1A2" if relu else "W1A1"], str(cm.report)
    with torch.no_grad():
        np.testing.assert_array_equal(cm(x.numpy()), model(x).numpy())


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pool_with_default_stride_and_ceil_mode(pool):
    """``F.max_pool2d(x, 2, ceil_mode=True)``: torch.export writes the default stride as [] (the kernel size), which
    TVM's importer alone rejects; the binary layers around it still binarize and the output is exact."""
    torch.manual_seed(3)
    pool_fn = F.max_pool2d if pool == "max" else F.avg_pool2d
    model = randomize_batchnorm(ConvBnConv(3, 37, 6, lambda y: pool_fn(y, 2, ceil_mode=True)))
    x = torch.randn(2, 3, 11, 13)
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    assert sum(r.binarized for r in cm.report) == 2, str(cm.report)
    with torch.no_grad():
        assert_float_close(cm(x), model(x).numpy())


@pytest.mark.parametrize("groups,cin,cout,padding", [(2, 4, 8, 0), (3, 75, 36, 1), (5, 135, 70, 1)])
def test_grouped_binary_conv_exact(groups, cin, cout, padding):
    """Grouped convs with binary inputs and weights binarize (one kernel per group), exactly; their bits feed the
    next layer's threshold."""
    torch.manual_seed(groups)
    w1 = torch.sign(torch.randn(cout, cin // groups, 3, 3))
    w2 = torch.sign(torch.randn(7, cout, 3, 3))
    bn = randomize_batchnorm(torch.nn.BatchNorm2d(cout))

    class Net(torch.nn.Module):
        def forward(self, x):
            y = bn(F.conv2d(ge_sign(x), w1, padding=padding, groups=groups))
            return F.conv2d(ge_sign(y), w2, padding=1)

    x = torch.randn(2, cin, 7, 6)
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    assert [r.binarized for r in cm.report] == [True, True], str(cm.report)
    np.testing.assert_array_equal(cm(x), Net()(x).detach().numpy())


def test_depthwise_conv_with_float_weights_stays_float():
    w = torch.randn(6, 1, 3, 3)

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.conv2d(ge_sign(x), w, groups=6)

    x = torch.randn(1, 6, 6, 6)
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    assert not cm.report[0].binarized and "weights are not binary" in cm.report[0].reason
    assert_float_close(cm(x), Net()(x).numpy())


def test_float_model_compiles_and_says_nothing_binarized():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.randn(2, 3, 6, 6)
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    assert cm.report.num_binarized == 0
    assert "Nothing was binarized" in str(cm.report)
    assert_float_close(cm(x), model(x).detach().numpy())


def test_torch_sign_tie_at_zero_is_documented_difference():
    """torch.sign(0) = 0 but one bit cannot hold 0: the compiled model treats 0 as +1 (README: Tie rule)."""
    w = torch.ones(1, 1, 1, 1)

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.conv2d(torch.sign(x), w)

    x = torch.tensor([[[[0.0, 1.0, -2.0]]]])
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    np.testing.assert_array_equal(cm(x), [[[[1.0, 1.0, -1.0]]]])
    np.testing.assert_array_equal(Net()(x).numpy(), [[[[0.0, 1.0, -1.0]]]])


def test_split_into_one_conv_per_group_binarizes_each(tmp_path):
    """A grouped conv written as Split -> one Conv per group -> Concat (tf2onnx's form for some graphs), through the
    module and through ONNX: each Conv reads its slice of the binarized tensor."""
    torch.manual_seed(11)
    ws = [torch.sign(torch.randn(9, 33, 3, 3)), torch.sign(torch.randn(7, 37, 3, 3))]

    class Net(torch.nn.Module):
        def forward(self, x):
            parts = torch.split(ge_sign(x), [33, 37], dim=1)
            return torch.cat([F.conv2d(p, w, padding=1) for p, w in zip(parts, ws)], dim=1)

    x = torch.randn(2, 70, 6, 5)
    onnx_path = str(tmp_path / "split.onnx")
    torch.onnx.export(Net(), (x,), onnx_path, dynamo=False)
    for source in (Net(), onnx_path):
        cm = tvm_bnn.compile(source, "x86", example_inputs=(x,) if source is not onnx_path else (x.numpy(),),
                             progress=False)
        assert [r.binarized for r in cm.report] == [True, True], str(cm.report)
        np.testing.assert_array_equal(cm(x.numpy()), Net()(x).numpy())


@pytest.mark.parametrize("route", ["module", "onnx", "onnx-dynamo"])
def test_constant_padding_with_either_value_is_exact(route, tmp_path):
    """F.pad of a binarized tensor with +1 / -1 (Larq's one-padding) is a constant bit in the binary conv, through
    the module and both ONNX exporters (TVM's importer would hide a Pad with a nonzero value in a TIR function)."""
    torch.manual_seed(12)
    w1, w2 = torch.sign(torch.randn(17, 37, 3, 3)), torch.sign(torch.randn(5, 17, 3, 3))

    class Net(torch.nn.Module):
        def forward(self, x):
            y = F.conv2d(F.pad(ge_sign(x), (1, 1, 1, 1), value=1.0), w1, stride=2)
            return F.conv2d(F.pad(torch.where(y > 2, 1.0, -1.0), (1, 0, 2, 0), value=-1.0), w2)

    x = torch.randn(2, 37, 9, 8)
    source = Net()
    if route != "module":
        source = str(tmp_path / "pad.onnx")
        torch.onnx.export(Net(), (x,), source, dynamo=route == "onnx-dynamo", opset_version=18)
    cm = tvm_bnn.compile(source, "x86", example_inputs=(x,) if route == "module" else (x.numpy(),), progress=False)
    assert [r.binarized for r in cm.report] == [True, True], str(cm.report)
    np.testing.assert_array_equal(cm(x.numpy()), Net()(x).numpy())


THREE_BIT = {  # 5-8 equally spaced levels: 3 planes in the binary code
    "dorefa_k3": lambda x: torch.round(torch.clamp(x, 0, 1) * 7) / 7,  # 8 levels 0 .. 1
    "round5": lambda x: torch.clamp(torch.round(x * 2), -2, 2),  # 5 levels -2 .. 2
    "floor8_scaled": lambda x: torch.clamp(torch.floor(x * 3), -4, 3) * 0.25,  # 8 levels -1 .. 0.75
}


class ThreeBitNet(torch.nn.Module):
    def __init__(self, quantize):
        super().__init__()
        self.quantize = quantize
        self.w = torch.sign(torch.randn(37, 29, 3, 3))
        self.w2 = torch.randn(11, 37, 3, 3).round().clamp(-1, 1)  # ternary: two weight planes
        self.g, self.b = torch.randn(1, 37, 1, 1) * 0.05, torch.rand(1, 37, 1, 1)

    def forward(self, x):
        y = F.conv2d(self.quantize(x), self.w, padding=1) * self.g + self.b
        return F.conv2d(self.quantize(F.max_pool2d(y, 2, 2, ceil_mode=True)), self.w2, padding=1)


@pytest.mark.parametrize("form,target", [(form, "x86") for form in sorted(THREE_BIT)] + [
    ("round5", "cortex-m4"), ("dorefa_k3", "aarch64")])  # the planes are the same binary kernels on every target
def test_three_bit_activations_in_three_planes(form, target):
    """A 3-bit activation (5-8 equally spaced levels, after a max-pool too) computes as 3 bit planes: W1A3 with
    sign weights, W2A3 with ternary ones, outputs equal to PyTorch's to float rounding, on every kind of target."""
    from .conftest import need
    from tvm_bnn.targets import qemu

    if target == "cortex-m4":
        need("arm-none-eabi-gcc", "qemu-system-arm")
    elif target == "aarch64":
        need(qemu.linux_arch("aarch64").cc, qemu.linux_arch("aarch64").qemu)
    torch.manual_seed(0)
    model = ThreeBitNet(THREE_BIT[form]).eval()
    x = torch.randn(2, 29, 11, 13)
    cm = tvm_bnn.compile(model, target, example_inputs=(x,), progress=False)
    assert [r.bits for r in cm.report] == ["W1A3", "W2A3"], str(cm.report)
    with torch.no_grad():
        assert_float_close(cm(x), model(x).numpy())
