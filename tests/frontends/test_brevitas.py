"""Brevitas models (https://github.com/Xilinx/brevitas) through every route, against Brevitas' own eval output.

What must hold:

* **Report.** Every conv/dense whose weights are 1-bit and whose activation input is a 1-bit Brevitas quantizer
  (``QuantIdentity`` / ``QuantHardTanh`` with a binary act quantizer) is binarized; everything else stays float: the
  first layer on the image, and every layer of the 2W2A / 1W2A BNN-PYNQ models (2-bit activations take three
  values, -1/0/+1; 2-bit weights too), which must binarize nothing (no false positives).
* **Outputs.** Exactly equal where Brevitas' output is binarized integer arithmetic that float32 represents exactly
  (scales that are powers of two or small multiples: +-0.75 x +-0.5 products); otherwise within float rounding
  (``assert_float_close``). Inputs are chosen so that no quantizer input lies within a rounding of a decision
  boundary (0 for 1-bit, the half-integer ties for 2-bit), checked on Brevitas' own forward pass
  (:func:`tie_free`), and BatchNorm statistics are random and tie-free (``randomize_batchnorm``).
* **Routes.** ``nn.Module``, ``torch.export.ExportedProgram``, ``torch.onnx.export(dynamo=False)`` and
  ``(dynamo=True)``, and Brevitas' QONNX export (``brevitas.export.export_qonnx``; needs the QONNX hook in
  ``tvm_bnn/frontends/onnx.py``).

Brevitas' ``SignedBinaryWeightPerTensorConst`` clamps the stored weights in place (``InplaceTensorClampSte``) at
every forward call: every model here runs once before it is exported or compiled, so that Brevitas' output does not
change between calls. A stats-based weight scale with that in-place clamp would shrink at every call; the per-channel
stats quantizer below uses the out-of-place ``TensorClamp``.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

import brevitas.nn as qnn
import numpy as np
import pytest
import torch
from brevitas.core.function_wrapper import TensorClamp
from brevitas.core.scaling import ScalingImplType
from brevitas.inject.enum import ScalingPerOutputType, StatsOp
from brevitas.quant import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst
from brevitas_examples.bnn_pynq.models import get_model_cfg, model_impl

import tvm_bnn

from ..conftest import assert_float_close, need, randomize_batchnorm


# -- quantizers ------------------------------------------------------------------------------------------------------

class WeightPerTensorHalf(SignedBinaryWeightPerTensorConst):
    """+-0.5: with activations +-0.75 every product is +-0.375 and every dot product exact in float32."""
    scaling_const = 0.5


class WeightPerChannelStats(SignedBinaryWeightPerTensorConst):
    """+-mean|W| per output channel (XNOR-Net); out-of-place clamp, else each forward call shrinks the weights."""
    scaling_impl_type = ScalingImplType.STATS
    scaling_stats_op = StatsOp.AVE
    scaling_per_output_type = ScalingPerOutputType.CHANNEL
    tensor_clamp_impl = TensorClamp


class WeightPerChannelParam(SignedBinaryWeightPerTensorConst):
    """A learned per-output-channel scale (a Parameter of shape [C, 1, 1, 1])."""
    scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS
    scaling_stats_op = StatsOp.AVE
    scaling_per_output_type = ScalingPerOutputType.CHANNEL


class ActParam(SignedBinaryActPerTensorConst):
    """A learned per-tensor activation scale (a Parameter), set to 0.75 below."""
    scaling_impl_type = ScalingImplType.PARAMETER


ACT_QUANT = {"const": SignedBinaryActPerTensorConst, "param": ActParam}
WEIGHT_QUANT = {"half": WeightPerTensorHalf, "tensor": SignedBinaryWeightPerTensorConst,
                "chstats": WeightPerChannelStats, "chparam": WeightPerChannelParam}


class SmallNet(torch.nn.Module):
    """float stem (3x3, pad 1) -> BN -> 1-bit act -> binary conv 3x3 pad 1 (5 -> 37) -> BN -> 1-bit act
    -> binary conv 3x3 pad 0 (37 -> 21) -> BN -> 1-bit act -> flatten -> binary linear (525 -> 11)."""

    def __init__(self, act="identity", wq="tensor", aq="const", c0=5, c1=37, c2=21, hw=7, classes=11):
        super().__init__()
        act_cls = {"identity": qnn.QuantIdentity, "hardtanh": qnn.QuantHardTanh}[act]
        wq, aq = WEIGHT_QUANT[wq], ACT_QUANT[aq]
        self.stem = torch.nn.Conv2d(3, c0, 3, padding=1)
        self.bn0 = torch.nn.BatchNorm2d(c0)
        self.a0 = act_cls(act_quant=aq)
        self.conv1 = qnn.QuantConv2d(c0, c1, 3, padding=1, bias=False, weight_quant=wq)
        self.bn1 = torch.nn.BatchNorm2d(c1)
        self.a1 = act_cls(act_quant=aq)
        self.conv2 = qnn.QuantConv2d(c1, c2, 3, padding=0, bias=False, weight_quant=wq)
        self.bn2 = torch.nn.BatchNorm2d(c2)
        self.a2 = act_cls(act_quant=aq)
        self.fc = qnn.QuantLinear(c2 * (hw - 2) ** 2, classes, bias=False, weight_quant=wq)

    def forward(self, x):
        y = self.a0(self.bn0(self.stem(x)))
        y = self.a1(self.bn1(self.conv1(y)))
        y = self.a2(self.bn2(self.conv2(y)))
        return self.fc(y.flatten(1))


SMALL = {  # name: (SmallNet kwargs, output exactly representable in float32)
    "tensor_half_learned_act": (dict(act="identity", wq="half", aq="param"), True),
    "chstats_hardtanh_const_act": (dict(act="hardtanh", wq="chstats", aq="const"), False),
    "chparam_learned_act": (dict(act="identity", wq="chparam", aq="param"), False),
}
SMALL_REPORT = [False, True, True, True]  # stem float (image input), conv1, conv2, fc binarized


def set_learned_scales(model, act_scale=0.75, seed=0):
    """Learned activation scales -> 0.75 (so the output scale is exercised); learned weight scales -> random > 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scaling_impl.value"):
                if "act_quant" in name:
                    p.fill_(act_scale)
                else:
                    p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.05)
    return model


def settle(model):
    """eval, and one forward call: Brevitas' in-place weight clamp happens at the first call."""
    model.eval()
    with torch.no_grad():
        model(torch.zeros(*model.example_shape))
    return model


def small_model(name, bn_seed=0):
    torch.manual_seed(0)
    kwargs, _ = SMALL[name]
    model = set_learned_scales(randomize_batchnorm(SmallNet(**kwargs), rng_seed=bn_seed))
    model.example_shape = (2, 3, 7, 7)
    return settle(model)


# -- BNN-PYNQ --------------------------------------------------------------------------------------------------------

BNN_PYNQ_1W1A = {  # name: binarized flags of the conv/dense layers in program order
    # CNV: the first conv takes the 8-bit image (Q1.7), stays float; 5 convs + 3 linears take 1-bit inputs
    "cnv_1w1a": [False] + [True] * 8,
    # FC: IN_BIT_WIDTH 1, so even the first linear takes a 1-bit (sign of 2x - 1) input
    "lfc_1w1a": [True] * 4,
    "sfc_1w1a": [True] * 4,
    "tfc_1w1a": [True] * 4,
}
BNN_PYNQ_2W2A = {  # name: (bits of the conv/dense layers in program order, route, build and compare outputs?)
    # 2-bit weights are ternary here (Brevitas' narrow range: -s, 0, s): two weight planes; 2-bit activations: the
    # three levels' two bit planes. CNV's first conv takes the 8-bit image and stays float. The FC models go through
    # different routes (the QONNX ones as 2-bit Quant nodes); lfc_2w2a's report only (TFC's build covers the FCs)
    "cnv_2w2a": (["W32A32"] + ["W2A2"] * 8, "module", True), "tfc_2w2a": (["W2A2"] * 4, "module", True),
    "sfc_2w2a": (["W2A2"] * 4, "qonnx", False), "lfc_2w2a": (["W2A2"] * 4, "qonnx", False),
}


def bnn_pynq(name, bn_seed=0):
    """A BNN-PYNQ model (brevitas_examples.bnn_pynq), untrained, with random BN statistics. Brevitas ships no
    lfc_2w2a configuration: it is lfc_1w1a's with 2-bit weights, activations and input."""
    cfg = get_model_cfg("lfc_1w1a" if name == "lfc_2w2a" else name)
    if name == "lfc_2w2a":
        for key in ("WEIGHT_BIT_WIDTH", "ACT_BIT_WIDTH", "IN_BIT_WIDTH"):
            cfg.set("QUANT", key, "2")
    torch.manual_seed(0)
    model = randomize_batchnorm(model_impl[cfg.get("MODEL", "ARCH")](cfg), rng_seed=bn_seed)
    model.example_shape = (2, 3, 32, 32) if name.startswith("cnv") else (2, 1, 28, 28)
    return settle(model)


# -- inputs, routes, compiles ----------------------------------------------------------------------------------------

def _quantizer_margins(model, x):
    """Per Brevitas activation quantizer: the smallest distance of its input to a decision boundary: to 0 for a 1-bit
    quantizer, to the half-integer ties of round() (in units of its scale) otherwise."""
    margins, hooks = [], []

    def hook(module, args):
        v = args[0].value if hasattr(args[0], "value") else args[0]
        bits = int(module.act_quant.bit_width())
        if bits == 1:
            margins.append(float(v.abs().min()))
        else:
            t = v / module.act_quant.scale()
            margins.append(float((t - torch.floor(t) - 0.5).abs().min()))

    for m in model.modules():
        if isinstance(m, (qnn.QuantIdentity, qnn.QuantHardTanh)):
            hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return margins


@functools.lru_cache(maxsize=None)
def tie_free(kind, name, tol=1e-5):
    """(model, input) such that every quantizer input is at least ``tol`` away from a decision boundary, so that float rounding differences between Brevitas and the compiled model cannot flip one.
    Binary layers produce integers, so their margins depend on the BatchNorm statistics more than on the input:
    both seeds are searched, deterministically."""
    build = small_model if kind == "small" else bnn_pynq
    for bn_seed in range(10):
        model = build(name, bn_seed)
        for seed in range(3):
            gen = torch.Generator().manual_seed(1000 + seed)
            shape = model.example_shape
            x = torch.randn(shape, generator=gen) if kind == "small" else torch.rand(shape, generator=gen)
            margins = _quantizer_margins(model, x)
            if min(margins) > tol:
                return model, x
    pytest.fail(f"{name}: no tie-free BatchNorm statistics and input found (last margins {margins})")


def export_route(model, x, route, directory):
    """The model as the route hands it to tvm_bnn.compile."""
    if route == "module":
        return model
    if route == "ep":
        return torch.export.export(model, (x,))
    path = os.path.join(directory, f"{route}.onnx")
    with torch.no_grad():
        if route == "onnx":
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17)
        elif route == "onnx-dynamo":
            torch.onnx.export(model, (x,), path, dynamo=True, verbose=False)
        elif route == "qonnx":
            from brevitas.export import export_qonnx

            export_qonnx(model, x, export_path=path)
        else:
            raise ValueError(route)
    return path


_TMP = tempfile.mkdtemp(prefix="tvm_bnn_brevitas_")  # exported files of the cached compiles; removed at exit
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def compiled(kind, name, route="module"):
    """(compiled model, input, Brevitas' output); compiled once per (model, route) for all tests that use it."""
    model, x = tie_free(kind, name)
    with torch.no_grad():
        expected = model(x).numpy()
    src = export_route(model, x, route, tempfile.mkdtemp(dir=_TMP))
    cm = tvm_bnn.compile(src, "x86", example_inputs=(x.numpy(),), progress=False)
    return cm, x.numpy(), expected


@functools.lru_cache(maxsize=None)
def analysed(kind, name, route="module"):
    """The report alone (tvm_bnn.analyse: import and passes, no build), for the models whose build would only
    re-check float layers that other tests check, and costs most of this file's time (CNV's float convs)."""
    model, x = tie_free(kind, name)
    src = export_route(model, x, route, tempfile.mkdtemp(dir=_TMP))
    return tvm_bnn.analyse(src, (x.numpy(),))[2]


def binarized(cm):
    return [r.binarized for r in cm.report]


# -- small models: quantizer variants (nn.Module) ----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_report(name):
    cm, _, _ = compiled("small", name)
    assert [r.op for r in cm.report] == ["conv2d", "conv2d", "conv2d", "dense"], str(cm.report)
    assert binarized(cm) == SMALL_REPORT, str(cm.report)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_output(name):
    cm, x, expected = compiled("small", name)
    if SMALL[name][1]:  # +-0.75 activations x +-0.5 weights: Brevitas' float sums are exact
        np.testing.assert_array_equal(cm(x), expected)
    else:
        assert_float_close(cm(x), expected)


# -- small model: every route ------------------------------------------------------------------------------------------

ROUTES = ["ep", "onnx", "onnx-dynamo", "qonnx"]
ROUTE_MODEL = "chstats_hardtanh_const_act"  # out-of-place weight clamp: every exporter takes it


@pytest.mark.parametrize("route", ROUTES)
def test_small_routes_report_and_output(route):
    cm, x, expected = compiled("small", ROUTE_MODEL, route)
    assert binarized(cm) == SMALL_REPORT, f"route {route}:\n{cm.report}"
    assert_float_close(cm(x), expected)


def test_onnx_dynamo_false_with_inplace_weight_clamp(tmp_path):
    """SignedBinaryWeightPerTensorConst clamps the weights in place (torch.min(w, s, out=w)), which the TorchScript
    ONNX exporter (dynamo=False) cannot translate; Brevitas' QONNX export and dynamo=True can."""
    model, x = tie_free("small", "tensor_half_learned_act")
    try:
        path = export_route(model, x, "onnx", str(tmp_path))
    except torch.onnx.errors.SymbolicValueError as exc:
        pytest.xfail("torch.onnx.export(dynamo=False) cannot export Brevitas' in-place weight clamp "
                     f"(InplaceTensorClampSte: torch.min(x, max_val, out=x)): {str(exc).splitlines()[0][:120]}")
    cm = tvm_bnn.compile(path, "x86", example_inputs=(x.numpy(),), progress=False)
    assert binarized(cm) == SMALL_REPORT, str(cm.report)
    with torch.no_grad():
        np.testing.assert_array_equal(cm(x.numpy()), model(x).numpy())


# -- BNN-PYNQ --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BNN_PYNQ_1W1A))
def test_bnn_pynq_1w1a_binarizes_every_1bit_layer(name):
    cm, x, expected = compiled("bnn_pynq", name)
    assert binarized(cm) == BNN_PYNQ_1W1A[name], str(cm.report)
    assert cm.report.num_binarized == sum(BNN_PYNQ_1W1A[name])
    assert_float_close(cm(x), expected)  # the last TensorNorm is float; the binary layers are exact integers


def test_bnn_pynq_1w1a_binarized_layer_count():
    """20 conv/dense layers of the four 1W1A models take 1-bit inputs and 1-bit weights: 8 + 4 + 4 + 4."""
    got = {name: compiled("bnn_pynq", name)[0].report.num_binarized for name in BNN_PYNQ_1W1A}
    assert got == {name: sum(v) for name, v in BNN_PYNQ_1W1A.items()}
    assert sum(got.values()) == 20


@pytest.mark.parametrize("name", sorted(BNN_PYNQ_2W2A))
def test_bnn_pynq_2w2a_in_weight_and_activation_planes(name):
    bits, route, build = BNN_PYNQ_2W2A[name]
    report = compiled("bnn_pynq", name, route)[0].report if build else analysed("bnn_pynq", name, route)
    assert [r.bits for r in report] == bits, str(report)
    assert report.num_binarized == sum(b != "W32A32" for b in bits)
    assert not any(r.binary_weights for r in report)  # ternary: require_binary asks nothing of these layers
    if build:
        cm, x, expected = compiled("bnn_pynq", name, route)
        assert_float_close(cm(x), expected)


@pytest.mark.parametrize("route", ["module", "onnx"])
def test_bnn_pynq_1w2a_in_bit_planes(route):
    """TFC 1W2A: 1-bit weights, 2-bit activations (Brevitas' QuantIdentity at bit_width 2: -1, 0, +1, the 2-bit
    signed range narrowed): every layer computes its activation as two bit planes (W1A2), outputs equal Brevitas'."""
    cm, x, expected = compiled("bnn_pynq", "tfc_1w2a", route)
    assert [r.bits for r in cm.report] == ["W1A2"] * 4, str(cm.report)
    assert_float_close(cm(x), expected)


@pytest.mark.parametrize("name,target", [("cnv_2w2a", "cortex-m4"), ("tfc_1w2a", "cortex-m4"),
                                         ("cnv_1w2a", "aarch64"), ("tfc_2w2a", "aarch64"), ("cnv_2w2a", "aarch64")])
def test_bnn_pynq_few_bit_on_emulated_targets(name, target):
    """The few-bit BNN-PYNQ models on the Cortex-M4 board and aarch64 Linux (emulated): every 2-bit layer in planes,
    the outputs equal to Brevitas' as on x86."""
    from tvm_bnn.targets import qemu

    if target == "aarch64":
        need(qemu.linux_arch("aarch64").cc, qemu.linux_arch("aarch64").qemu)
    else:
        need("arm-none-eabi-gcc", "qemu-system-arm")
    model, x = tie_free("bnn_pynq", name)
    with torch.no_grad():
        expected = model(x).numpy()
    cm = tvm_bnn.compile(model, target, example_inputs=(x.numpy(),), progress=False)
    w_bits, a_bits = name.split("_")[1][0], name.split("_")[1][2]  # "2w2a": 2-bit weights, 2-bit activations
    few_bit = [r.bits for r in cm.report if r.bits != "W32A32"]  # CNV's first conv takes the 8-bit image
    assert few_bit == [f"W{w_bits}A{a_bits}"] * (8 if name.startswith("cnv") else 4), str(cm.report)
    assert_float_close(cm(x.numpy()), expected)
    if (name, target) == ("cnv_2w2a", "aarch64"):  # its ternary convs in NEON's byte counters, one per plane
        ops = [str(f.attrs["tvm_bnn.op"]) for _, f in cm.scheduled.functions_items()
               if getattr(f, "attrs", None) is not None and "tvm_bnn.op" in f.attrs]
        assert "ternary_conv2d" in ops and "binary_conv2d" not in ops, ops


def test_three_bit_quant_relu_and_identity_in_three_planes():
    """Brevitas' 3-bit activations (QuantReLU: 8 levels 0 .. 7s; QuantIdentity with the signed narrow range: 7
    levels) before 1-bit-weight convs: W1A3, three bit planes each, output equal to Brevitas'."""
    from brevitas_examples.bnn_pynq.models.common import CommonActQuant, CommonWeightQuant

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 24, 3), torch.nn.BatchNorm2d(24), qnn.QuantReLU(bit_width=3),
        qnn.QuantConv2d(24, 19, 3, padding=1, weight_quant=CommonWeightQuant, weight_bit_width=1, bias=False),
        torch.nn.BatchNorm2d(19), qnn.QuantIdentity(act_quant=CommonActQuant, bit_width=3),
        qnn.QuantConv2d(19, 7, 3, weight_quant=CommonWeightQuant, weight_bit_width=1, bias=False))
    model = randomize_batchnorm(model).eval()
    x = torch.randn(2, 3, 12, 11)
    with torch.no_grad():
        model(x)  # settles Brevitas' lazily initialised scales
        expected = model(x).numpy()
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    assert [r.bits for r in cm.report] == ["W32A32", "W1A3", "W1A3"], str(cm.report)
    assert_float_close(cm(x.numpy()), expected)


@pytest.mark.parametrize("route", ["onnx", "onnx-dynamo", "qonnx"])  # "ep" is the module route's own export
def test_bnn_pynq_tfc_1w1a_routes(route):
    cm, x, expected = compiled("bnn_pynq", "tfc_1w1a", route)
    assert binarized(cm) == BNN_PYNQ_1W1A["tfc_1w1a"], f"route {route}:\n{cm.report}"
    assert_float_close(cm(x), expected)


def test_bnn_pynq_cnv_1w1a_qonnx():
    """The FINN flow's model: CNV exported to QONNX (report only: its outputs through QONNX are checked on the small
    conv model and TFC, and CNV's through the module route)."""
    report = analysed("bnn_pynq", "cnv_1w1a", "qonnx")
    assert [r.binarized for r in report] == BNN_PYNQ_1W1A["cnv_1w1a"], str(report)
