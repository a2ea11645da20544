"""Minimal models from the differential fuzzer (tests/fuzz/test_differential.py), as plain tests.

The first and the last are bugs the fuzzer found (fixed in 7aa7d37 and with the float pad fix); the
others pin down behaviours it ran into whose semantics were not obvious from the README, so that a change to them is
noticed.
"""
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tvm_bnn

from ..conftest import assert_float_close


def ge_sign(x):
    return torch.where(x >= 0, 1.0, -1.0)


def test_onnx_export_folds_zero_gamma_batchnorm_into_binary_conv_weights():
    """Found by test_differential_onnx_x86, fixed in 7aa7d37: torch.onnx.export (eval, constant folding) folds
    Conv -> BatchNormalization into the conv's weights, so a channel with gamma == 0 becomes an all-zero weight
    channel. The whole binary conv used to be refused ("weights of output channel 0 contain zeros") and stayed
    float, while the PyTorch-frontend compile of the same model binarized it. An all-zero channel is +-0: binary,
    its output is the bias."""
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    w = torch.sign(torch.randn(2, 3, 3, 3))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", w)
            self.bn = torch.nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(F.conv2d(ge_sign(x), self.w, padding=1))

    model = Net().eval()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([1.0, 0.0]))
        model.bn.bias.copy_(torch.tensor([0.25, -0.5]))
    x = torch.randn(1, 3, 5, 6)
    f = io.BytesIO()
    torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17)
    proto = onnx.load_from_string(f.getvalue())
    folded = [onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if tuple(i.dims) == (2, 3, 3, 3)]
    assert folded and np.all(folded[0][1] == 0), "the exporter no longer folds BN into the conv weights"

    expected = model(x).detach().numpy()
    for m in (model, proto):
        cm = tvm_bnn.compile(m, "x86", example_inputs=(x,), progress=False)
        assert cm.report[0].binarized, str(cm.report)
        assert_float_close(cm(x), expected)
    np.testing.assert_array_equal(cm(x)[0, 1], np.full((5, 6), -0.5, np.float32))  # the zero channel: its bias


def test_weight_with_a_zero_among_nonzeros_is_ternary():
    """The other side of the fix above: one zero among nonzero weights is sign(0) = 0, not +-alpha. It used to be
    refused; such weights take three values per channel, {-1, 0, 1}: two weight planes (W2), exact."""
    w = torch.sign(torch.randn(3, 2, 3, 3))
    w[1, 0, 1, 1] = 0.0

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.conv2d(ge_sign(x), w, padding=1)

    x = torch.randn(1, 2, 4, 5)
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    assert cm.report[0].binarized and cm.report[0].bits == "W2A1", str(cm.report)
    assert not cm.report[0].binary_weights  # not +-alpha: require_binary does not ask for it
    np.testing.assert_array_equal(cm(x), Net()(x).numpy())


def test_refused_layer_computes_torch_sign_of_zero_as_zero():
    """The tie rule (0 -> +1) applies to bit-packed layers only. A layer that stays float (here: float weights)
    computes torch.sign in float, so sign(0) = 0 as in PyTorch; the STE form is canonicalized to that sign. Found
    by test_differential_x86 (BN with gamma == beta == 0 -> exact zeros -> bireal STE -> refused dense)."""
    wd = torch.tensor([[1.0, -1.0, 0.25, 0.75, 2.0], [1.0, 0.5, 1.5, -1.25, 3.0]])  # 5 values: float weights

    class Net(torch.nn.Module):
        def forward(self, x):
            b = torch.sign(x).detach() - torch.tanh(x).detach() + torch.tanh(x)  # ReActNet STE
            return F.linear(b, wd)

    x = torch.tensor([[0.0, 0.5, -2.0, 0.0, 1.0], [1.0, 0.0, 0.0, -0.25, 2.0]])
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    assert not cm.report[0].binarized and "not binary" in cm.report[0].reason, str(cm.report)
    np.testing.assert_array_equal(cm(x), F.linear(torch.sign(x), wd).numpy())
    np.testing.assert_array_equal(cm(x), [[0.75, 2.0], [2.25, 5.25]])  # ties count 0, not +1


def test_float_dense_with_one_input_feature_is_binary():
    """A [K=1] dense layer's float weights are trivially +-alpha per output channel, so on a binarized input it
    binarizes (found by the fuzzer: a float dense on a 1-feature input). Exact."""
    torch.manual_seed(1)
    w = torch.randn(7, 1)

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.linear(ge_sign(x), w)

    x = torch.tensor([[0.5], [-1.0], [0.0]])
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    assert cm.report[0].binarized, str(cm.report)
    assert_float_close(cm(x), Net()(x).numpy())


def test_onnx_report_names_match_their_layers():
    """Found by test_differential_onnx_x86 (fixed): the report's layer names were the ONNX node names in ONNX node
    order while the rows are in Relax program order, and TVM's importer emits a Gemm's matmul before an earlier
    MatMul, so each row carried the other layer's name. Names are now matched by the model inputs each layer
    depends on and the outputs it reaches (frontends/onnx.py _reach, importer.layer_reach), then by order."""
    onnx = pytest.importorskip("onnx")
    w0 = torch.tensor([[0.25, -0.75, 1.5, 2.0, -3.0]])  # five values: float weights, "weights are not binary"
    w1 = torch.tensor([[0.0, -1.0]])  # two levels, one of them 0: a weight plane and an offset (binarized)
    b1 = torch.tensor([0.5])

    class B0(torch.nn.Module):
        def forward(self, x):
            return F.linear(ge_sign(x), w0)

    class B1(torch.nn.Module):
        def forward(self, x):
            return F.linear(ge_sign(x), w1, b1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.b0, self.b1 = B0(), B1()

        def forward(self, x0, x1):
            return self.b0(x0), self.b1(x1)

    xs = (torch.tensor([[0.5, -1.0, 2.0, -0.5, 1.0]]), torch.tensor([[1.5, 2.0]]))
    f = io.BytesIO()
    torch.onnx.export(Net(), xs, f, dynamo=False, opset_version=17)
    proto = onnx.load_from_string(f.getvalue())
    cm = tvm_bnn.compile(proto, "x86", example_inputs=xs, progress=False)
    by_name = {r.name: r for r in cm.report}
    gemm = [n for n in by_name if "b1" in n]
    matmul = [n for n in by_name if "b0" in n]
    assert len(gemm) == 1 and len(matmul) == 1, str(cm.report)
    assert by_name[gemm[0]].binarized, str(cm.report)
    assert "not binary" in by_name[matmul[0]].reason, str(cm.report)
    for got, want in zip(cm(*xs), Net()(*xs)):
        np.testing.assert_array_equal(got, want.numpy())


def _constant_bn(n, beta):
    """An eval BatchNorm with gamma == 0 in every channel: its output is the constant beta, whatever the input."""
    bn = torch.nn.BatchNorm2d(n)
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.copy_(torch.tensor(beta, dtype=torch.float32))
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn.eval()


def test_constant_activation_is_binary_even_for_a_float_weight_layer():
    """Found by the fuzzer (test_differential_x86, long profile): a BatchNorm with gamma == 0 in every channel makes
    its output a constant function of the input, which the analysis takes as binary (one value +-v, one bit used;
    README "What is recognised"). So a float-weight layer after it reports "weights are not binary" (not "input
    not binarized"), and one with a single weight per output channel is binarized. Exact either way."""
    torch.manual_seed(3)
    bn = _constant_bn(1, [0.625])
    w1, w6 = torch.randn(5, 1), torch.randn(5, 6)  # 6 float values per output channel: more than 4 levels

    class Net(torch.nn.Module):
        def forward(self, x):
            c = bn(x)  # [N, 1, 2, 3], every element 0.625
            return F.linear(F.max_pool2d(c, 2).flatten(1), w1), F.linear(c.flatten(1), w6)

    x = torch.randn(3, 1, 2, 3)
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    assert cm.report[0].binarized, str(cm.report)
    assert not cm.report[1].binarized and cm.report[1].reason.startswith("weights are not binary"), str(cm.report)
    with torch.no_grad():
        for got, want in zip(cm(x), Net()(x)):
            assert_float_close(got, want.numpy())


def test_constant_zero_01_activation_stays_float():
    """Found by the fuzzer: a {0, 1} activation ``(x >= 0).float()`` of a constant negative tensor is the constant 0,
    which the analysis refuses ("it is the constant 0": +-0 has no scale), so the conv stays float, while the +-1
    form of the same tensor (the constant -1) is binarized. Exact either way; pinned here because the README does
    not say which a constant-0 activation is (binarizing it, as {0, 1} with the low bit, would also be exact)."""
    torch.manual_seed(4)
    bn = _constant_bn(2, [-0.5, -1.25])
    w = torch.sign(torch.randn(3, 2, 3, 3))

    class Net(torch.nn.Module):
        def __init__(self, form):
            super().__init__()
            self.form = form

        def forward(self, x):
            c = bn(x)
            b = (c >= 0).float() if self.form == "01" else ge_sign(c)
            return F.conv2d(b, w, padding=1)

    x = torch.randn(2, 2, 4, 5)
    for form, binarized in (("01", False), ("pm1", True)):
        cm = tvm_bnn.compile(Net(form), "x86", example_inputs=(x,), progress=False)
        assert cm.report[0].binarized == binarized, str(cm.report)
        if not binarized:
            assert "it is the constant 0" in cm.report[0].reason, str(cm.report)
        np.testing.assert_array_equal(cm(x), Net(form)(x).detach().numpy())


# Found by test_differential_x86 (long profile); open. Minimal fuzz spec (the padded column is float 0 -> +1 in
# PyTorch, garbage in the compiled model, so the bit is wrong whenever the garbage is negative):
#   NetSpec([Branch(batch=4, shape=(1, 1, 1), layers=[
#       Pool("max", 1, 1, 0),
#       BinConv(cout=1, kernel=(1, 1), stride=(1, 1), dilation=(1, 1), padding=(0, 0), fpad=(0, 1, 0, 0),
#               fpad_pre=True, act="where_ge", seed=0)])])
_PAD_AFTER = {
    "max_pool2d": ((1, 3, 6, 7), lambda x: F.pad(F.max_pool2d(x, 2, 1), (0, 1))),
    "max_pool2d 1x1": ((4, 1, 1, 1), lambda x: F.pad(F.max_pool2d(x, 1), (0, 1))),
    "avg_pool2d": ((2, 3, 9, 9), lambda x: F.pad(F.avg_pool2d(x, 3, 1), (0, 0, 0, 2))),
    "conv2d": ((1, 3, 6, 7), lambda x: F.pad(F.conv2d(x, torch.ones(4, 3, 3, 3) / 27), (0, 1))),
    "linear": ((4, 6), lambda x: F.pad(F.linear(x, torch.ones(5, 6) / 6), (0, 3))),
    "mean": ((1, 3, 4, 4), lambda x: F.pad(x.mean(dim=(2, 3), keepdim=True), (0, 1))),
}


@pytest.mark.parametrize("case", sorted(_PAD_AFTER))
def test_float_reduction_followed_by_pad_writes_the_padding(case):
    """A float pool / conv / dense / mean followed by F.pad (right or bottom): FuseOps fuses the pad into the
    reduction's PrimFunc as its epilogue. float_x86 used to compute that epilogue at the reduction's tile loop
    (reverse_compute_at), which covers only the elements that read the tile: the padded columns/rows were never
    written (left padding, or a pad after an elementwise op, was fine). The fuzzer found it; the epilogue is now
    computed at the tile only when it writes as many elements as the reduction (float_arm shares that code). Each
    call uses new inputs: the padding would hold whatever the buffer held before."""
    shape, fn = _PAD_AFTER[case]

    class Net(torch.nn.Module):
        def forward(self, x):
            return fn(x)

    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(*shape, generator=gen) + 3 for _ in range(8)]
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(xs[0],), progress=False)
    for x in xs:
        assert_float_close(cm(x), Net()(x).numpy())


# -- found by the long fuzz runs of bench/fuzz_long.py (issue 19), replayed through the differential check --------

def _replay(spec, target="x86"):
    from .test_differential import check_model

    check_model(spec, target)


def test_zero_width_pad_is_the_tensor_itself():
    """Cortex-M and x86: ``F.pad(x, (0, 0, 0, 0))`` before a sign of the model input was taken as a pad that may put
    zeros there, so the input's own (chance) zeros were the model's: the layer computed {-1, 0, 1} in two planes
    (W1A2) while the tie rule makes it +-1. A zero-width pad pads nothing: W1A1, sign(0) -> +1."""
    from .strategies import BinConv, Branch, NetSpec

    spec = NetSpec([Branch(1, (11, 1, 1), [
        BinConv(cout=11, kernel=(1, 1), stride=(1, 1), dilation=(1, 1), padding=(0, 0), fpad=(0, 0, 0, 0),
                fpad_pre=True, act="bireal_ste", wform="sign", groups=11, bias=True, bn=True, tap=True, seed=0)],
        input_seed=0, input_zeros=0.2)])
    _replay(spec)

    x = torch.tensor([0.0, -1.5, 2.0, 0.0]).view(1, 4, 1, 1)
    w = torch.sign(torch.randn(3, 4, 1, 1, generator=torch.Generator().manual_seed(0)))

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.conv2d(torch.sign(F.pad(x, (0, 0, 0, 0))), w)

    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    assert cm.report[0].bits == "W1A1", str(cm.report)
    np.testing.assert_array_equal(cm(x), F.conv2d(torch.where(x >= 0, 1.0, -1.0), w).numpy())


def test_float_output_within_pytorchs_own_rounding():
    """A residual block of 567-term sums that cancel: PyTorch's float32 was 1.1e-5 from the float64 value, the
    compiled model 6e-6; the check compared the two at rtol 1e-5 and failed. Float outputs are now compared to
    PyTorch within its own measured rounding (test_differential.compare_float_to_torch)."""
    from .strategies import Branch, NetSpec, Residual

    _replay(NetSpec([Branch(1, (63, 11, 12), [
        Residual(kernel=3, dilation=1, act="BinarySign", wform="xnor_mean", post="hardtanh", tap=True, seed=3)],
        input_seed=1)]))


@pytest.mark.parametrize("target", ["x86", "cortex-m4"])
def test_sign_after_relu_padded_with_minus_one_is_refused(target):
    """A sign of a ReLU's output takes {0, 1} (the ReLU's zeros are the model's): F.pad with -1 is neither value, so
    the layer stays float with that reason (the check expected the +-1 of a sign). Cortex-M long run."""
    from ..conftest import need
    from .strategies import BinConv, Branch, NetSpec, Residual

    if target != "x86":
        need("arm-none-eabi-gcc", "qemu-system-arm")
    _replay(NetSpec([Branch(1, (1, 1, 1), [
        Residual(kernel=1, dilation=1, act="where_ones", wform="sign", post="relu", tap=True, seed=0),
        BinConv(cout=1, kernel=(1, 1), stride=(1, 1), dilation=(1, 1), padding=(1, 1), fpad=(0, 0, 0, 1),
                fpad_fill=-1, act="bireal_ste", wform="sign", bias=True, bn=True, tap=True, seed=0)],
        input_seed=960, input_zeros=0.2)]), target)


def test_threshold_within_tanh_rounding_is_refused():
    """A sign of BN(tanh(dense)) whose threshold lands within libm's rounding of tanh at one of the values the
    binary dense can produce: where it switches depends on the library's tanh, so the layer stays float with that
    reason (correct: PyTorch and TVM may round tanh differently), and the outputs equal PyTorch's."""
    from .strategies import BinDense, BN, Branch, Elementwise, NetSpec

    _replay(NetSpec([Branch(1, (1, 1, 2), [
        BinDense(out=3, act="where_ones", wform="sign", flatten_first=False, bias=True, bn=True, tap=True, seed=0,
                 matmul=True),
        Elementwise(op="tanh", seed=0), BN(seed=0),
        BinDense(out=1, act="tvm_bnn.nn", flatten_first=True, bias=True, bn=True, tap=True, seed=0)],
        input_seed=0)]))


def test_sign_of_padded_input_computes_every_zero_as_pytorch():
    """A sign of ``F.pad(x)`` takes {-1, 0, 1} (the pad's zeros are the model's): the layer computes it in two
    planes (W1A2), so the model input's own zeros are 0 there too, as in PyTorch; the check applied the tie rule to
    them (+1) and failed on 21% of the outputs. Found by the long x86 run."""
    from .strategies import BinConv, BN, Branch, NetSpec, Pool

    _replay(NetSpec([Branch(4, (7, 7, 1), [
        BinConv(cout=257, kernel=(3, 3), stride=(2, 1), dilation=(2, 2), padding=(0, 3), fpad=(0, 0, 0, 2),
                fpad_pre=True, act="hardtanh_ste", wform="where_ge", bn=True, tap=True, seed=2019),
        BinConv(cout=128, kernel=(6, 6), stride=(1, 1), dilation=(1, 1), padding=(2, 2), act="where_ge",
                wform="sign", bn=True, seed=85),
        BN(seed=468), Pool(op="max", kernel=1, stride=1, padding=0, ceil_mode=True, count_include_pad=True)],
        input_seed=17472, input_zeros=0.2)]))


def test_float_layer_with_four_weights_per_channel_is_two_bit():
    """A 'float' 1x1 conv on 4 input channels has 4 weights per output channel: at most 4 values, so weight planes
    (W2A1), exact; the check expected it to stay float. Found by the long x86 run."""
    from .strategies import BinConv, BinDense, Branch, FloatConv, NetSpec, Pool

    _replay(NetSpec([Branch(4, (2, 4, 3), [
        BinConv(cout=4, kernel=(3, 1), stride=(1, 3), dilation=(1, 1), padding=(0, 0), fpad=(0, 0, 0, 1),
                fpad_pre=True, act="BinarySign", wform="sign", groups=2, bias=True, bn=True, tap=True, seed=411),
        Pool(op="avg", kernel=1, stride=1, padding=0, ceil_mode=True, count_include_pad=False),
        FloatConv(cout=31, kernel=(1, 1), stride=(2, 3), dilation=(2, 2), padding=(1, 1), act="where_ones",
                  wform="float", bias=False, bn=False, tap=True, seed=728),
        BinDense(out=1, act="tvm_bnn.nn", flatten_first=False, bias=True, bn=True, tap=True, seed=0)],
        input_seed=1)]))


def test_conv_output_of_padding_only_is_the_models_zero():
    """A float conv padded by more than its kernel reaches in has outputs that see only zero padding: exactly 0
    whatever the input, the model's own zeros. A sign of them is PyTorch's 0 (the layer computes {-1, 0, 1} in
    planes), not the tie rule's +1, which the analysis used to apply as if they were 0 by chance (wrong outputs:
    7% of one conv's). Found by the long aarch64 run (the same on every target)."""
    from .strategies import BinConv, BinDense, Branch, FloatConv, NetSpec

    _replay(NetSpec([Branch(1, (2, 6, 18), [
        FloatConv(cout=9, kernel=(3, 2), stride=(3, 3), dilation=(1, 1), padding=(0, 2), act=None, wform="sign",
                  bias=False, bn=False, tap=True, seed=7226),
        BinConv(cout=33, kernel=(2, 2), stride=(1, 3), dilation=(1, 1), padding=(2, 2), fpad=(2, 2, 2, 2),
                act="ste_add", wform="sign", bias=True, seed=2976),
        BinConv(cout=33, kernel=(2, 2), stride=(1, 1), dilation=(2, 2), padding=(1, 1), act="sign_sub_t",
                wform="sign", groups=33, seed=65535)], input_seed=7027, input_zeros=0.2)]))
    _replay(NetSpec([Branch(1, (1, 1, 1), [
        FloatConv(cout=1, kernel=(1, 1), stride=(2, 2), dilation=(1, 1), padding=(0, 1), act=None, wform="sign",
                  bias=False, bn=False, tap=True, seed=0),
        BinDense(out=31, act="ste_add", wform="ternary", flatten_first=False, bias=True, bn=True, tap=True, seed=0,
                 matmul=True),
        BinDense(out=1, act="tvm_bnn.nn", flatten_first=True, bias=True, bn=True, tap=True, seed=0)],
        input_seed=0)]))


def test_constant_sign_is_binary():
    """BatchNorms with gamma = 0 make a tensor constant per channel; a sign of it (both constants >= 0) is the
    constant +1: one of the two values +-1, binarized (it was refused: "a Where maps both of its values to 1").
    Found by the long x86 run."""
    from .strategies import BN, BinDense, Branch, FloatDense, NetSpec

    _replay(NetSpec([
        Branch(1, (1,), [FloatDense(out=1, act=None, bias=False, bn=False, tap=True, seed=0)], input_seed=0),
        Branch(1, (2, 1, 1), [BN(seed=0), BinDense(out=1, act="tvm_bnn.nn", flatten_first=False, bias=True, bn=True,
                                                    tap=True, seed=0)], input_seed=0)]))


@pytest.mark.parametrize("case", ["sum", "hardtanh"])
def test_residual_of_the_input_keeps_its_chance_zeros(case):
    """x + body(x) is 0 only where the input's own (chance) zero meets a 0 of the body: a zero by chance, so a
    torch.sign form after it takes the tie rule's +1 in the compiled model, as the analysis says; the check called it
    the model's zero (a zero channel in the body's BatchNorm) and expected PyTorch's 0. Found by the long Cortex-M
    run; compiled and check now agree."""
    from .strategies import Branch, Fork, NetSpec, Pool, Residual

    if case == "sum":
        spec = NetSpec([Branch(2, (6, 1, 1), [
            Pool(op="avg", kernel=1, stride=1, padding=0, ceil_mode=True, count_include_pad=False),
            Residual(kernel=1, dilation=1, act="tvm_bnn.nn", wform=None, post=None, tap=True, seed=5),
            Fork(cout=1, kernel=3, act="bireal_ste", wform="sign", bn=False, seed=0)], input_seed=4, input_zeros=0.2)])
    else:
        spec = NetSpec([Branch(2, (127, 1, 1), [
            Pool(op="avg", kernel=1, stride=1, padding=0, ceil_mode=True, count_include_pad=True),
            Residual(kernel=3, dilation=1, act="brevitas_rand", wform="const_alpha", post="hardtanh", seed=5),
            Fork(cout=127, kernel=5, act="hardtanh_sign", wform="where_ge", bn=True, seed=1422)],
            input_seed=20, input_zeros=0.2)])
    _replay(spec)


def test_zero_of_a_float_sum_that_cancels_is_a_near_tie():
    """A float conv's 0.1778 * 3 - 0.1778 * 3 is exactly 0 in PyTorch and -1.5e-8 in the compiled model (LLVM fuses
    the multiply-add: a float layer's rounding, README "Float layers"), so a sign after it differs. That zero is a
    near tie, rejected like any value within a rounding of its threshold, not a tie-rule case. Found by the long
    x86 run (the check had taken the exact 0 as a tie)."""
    from hypothesis.errors import UnsatisfiedAssumption

    from .strategies import BinDense, Branch, FloatConv, Fork, NetSpec, build, evaluate

    spec = NetSpec([Branch(1, (1, 1, 2), [
        Fork(cout=2, kernel=3, act="where_ge", wform="sign", bn=False, seed=41),
        FloatConv(cout=1, kernel=(1, 1), stride=(1, 1), dilation=(2, 2), padding=(0, 0), act=None,
                  wform="stored_alpha", bias=False, bn=False, tap=True, seed=0),
        BinDense(out=1, act="tvm_bnn.nn", flatten_first=False, bias=True, bn=True, tap=True, seed=0)],
        input_seed=0)])
    assert evaluate(build(spec)).near_ties > 0
    with pytest.raises(UnsatisfiedAssumption):
        _replay(spec)


@pytest.mark.parametrize("target,units", [("x86", 2), ("aarch64", 2), ("x86", 3)])
def test_level_quantizer_of_a_prelu_cuts_below_the_round(target, units):
    """Found by the long aarch64 runs (d1736ef, 14561ed): clamp(round(prelu(y)), -1, 1) with a negative PReLU slope
    is not monotone in y, so the analysis lets TVM compute a float node and analyses the chain above it. It cut at
    the node nearest the top (the Round), above which only a Clip of arbitrary floats was left: refused, the layer
    float; and with 3 units, where the chain takes all three levels, it tried no cut at all ("its level rises and
    falls"). The lowest cuttable node is the PReLU's output, of which the chain is a 3-level staircase: W1A2."""
    from .strategies import BinDense, Branch, Elementwise, NetSpec

    if target == "aarch64":
        from tvm_bnn.targets import qemu

        from ..conftest import need

        need(qemu.linux_arch("aarch64").cc, qemu.linux_arch("aarch64").qemu)
    spec = NetSpec([Branch(1, (1, 1, 1), [
        BinDense(out=units, act="BinarySign", wform="sign", flatten_first=False, bias=True, bn=True, tap=True,
                 seed=0, matmul=True),
        Elementwise(op="prelu", seed=0),
        BinDense(out=1, act="round3", wform="sign", flatten_first=True, bias=True, bn=True, tap=True, seed=0,
                 matmul=True)], input_seed=0, input_zeros=0.0)])
    _replay(spec, target)


def test_zero_width_pad_of_a_two_valued_tensor_pads_nothing():
    """Found by the long x86 run (b370cab): a BatchNorm of a conv output that takes two values, then F.pad(x, (0, 0,
    0, 0)) and a tvm_bnn.nn.BinaryConv2d with its own zero padding. The zero-width pad was read as a padding with 0
    (mapped by the sign to +1), so the conv had "two padding values" and stayed float. It pads nothing: W1A1."""
    from .strategies import BinConv, Branch, NetSpec, Residual

    spec = NetSpec([Branch(3, (4, 7, 13), [
        Residual(kernel=1, dilation=1, act="tvm_bnn.nn", wform=None, post=None, tap=True, seed=9529),
        BinConv(cout=1, kernel=(2, 1), stride=(1, 1), dilation=(1, 1), padding=(0, 0), fpad=(0, 0, 0, 0),
                fpad_pre=True, act="BinarySign", wform="ternary", bias=True, bn=True, tap=True, seed=749),
        BinConv(cout=1, kernel=(1, 1), stride=(1, 1), dilation=(1, 1), padding=(0, 1), fpad=(0, 0, 0, 0),
                fpad_pre=True, act="tvm_bnn.nn", wform=None, bias=True, bn=True, tap=True, seed=0)],
        input_seed=0, input_zeros=0.0)])
    _replay(spec)


def test_padding_kept_in_the_float_root_when_carried_it_would_be_a_second_padding():
    """``sign(F.pad(y, 0))`` of a few-level ``y`` (a ternary conv's BatchNorm): the analysis carried the padding to
    the bits as a padding value (sign(0) = +1), which with the conv's own zero padding is two padding values in one
    conv, and refused the layer. The padded float tensor packs exactly (its padding's bits are the test of 0), as it
    does when ``y`` is any float tensor: binarized now. Found by the x86 fuzzer (seed 1300000)."""
    from .strategies import BinConv, Branch, NetSpec, Residual

    _replay(NetSpec([Branch(1, (4, 1, 1), [
        Residual(kernel=1, dilation=1, act="tvm_bnn.nn", wform=None, post=None, tap=True, seed=0),
        BinConv(cout=1, kernel=(1, 1), stride=(1, 1), dilation=(1, 1), padding=(0, 0), fpad_pre=True,
                act="BinarySign", wform="ternary", bias=True, bn=True, tap=True, seed=749),
        BinConv(cout=1, kernel=(1, 1), stride=(1, 1), dilation=(1, 1), padding=(0, 1), fpad=(0, 0, 2, 0),
                fpad_pre=True, act="tvm_bnn.nn", wform=None, bias=True, bn=True, tap=True, seed=0)],
        input_seed=0)]))


def test_dense_of_a_padded_binary_tensor_packs_the_padded_float_tensor():
    """A dense layer has no padding to fold a padding value into: ``where(F.pad(y, 1) > 0.5, 1, -1) @ W`` of a
    two-valued ``y`` was refused ("the activation of a dense layer is padded"); its padded float tensor packs
    exactly. Same fix as the conv case above."""
    w = torch.sign(torch.randn(5, 12, generator=torch.Generator().manual_seed(0)))

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.where(F.pad((x >= 0).float(), (1, 1)) > 0.5, 1.0, -1.0) @ w.T

    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(1))
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    assert [r.binarized for r in cm.report] == [True], str(cm.report)
    assert_float_close(cm(x), Net()(x).numpy())


@pytest.mark.parametrize("target", ["c", "x86"])
def test_max_pool_of_one_tap_then_a_clip_reads_the_pool_result(target):
    """Found by test_differential_c (seed 1502000): a max-pool whose window is one element (kernel 1, ceil_mode)
    fused with a hardtanh. TVM's C codegen printed the clip's max/min operand ``pool[0]`` as the variable it had
    bound to the same text *before* the pool's update stored to it, so the C bundle returned clip(-3.4e38) = -1
    (c_codegen.min_max_as_calls: max/min of loads are calls now)."""
    model = torch.nn.Sequential(torch.nn.MaxPool2d(1, 1, 0, ceil_mode=True), torch.nn.Hardtanh()).eval()
    x = torch.tensor([[[[0.1257302165031433, -3.0], [2.5, -0.25]]]])
    cm = tvm_bnn.compile(model, target, example_inputs=(x,), progress=False)
    np.testing.assert_array_equal(cm(x), model(x).numpy())


def test_replicate_pad_of_an_axis_of_one_builds_as_c():
    """Found by test_differential_c (seed 1530000): a replicate pad of a binarized tensor along an axis of size 1 is
    a ``take`` whose index TVM simplifies away (every index reads element 0), leaving the kernel's index parameters
    unused: an error under -Wextra -Werror, so the model did not build as C. Such parameters are now marked used."""
    w = torch.tensor([[[[-1.0]], [[1.0]]]])

    class Net(torch.nn.Module):
        def forward(self, x):
            b = F.pad(ge_sign(x), (0, 0, 0, 1), mode="replicate")
            return F.conv2d(b, w)

    x = torch.tensor([[[[0.5]], [[-1.25]]]])
    cm = tvm_bnn.compile(Net(), "c", example_inputs=(x,), progress=False)
    np.testing.assert_array_equal(cm(x), Net()(x).numpy())
