"""Larq (Keras) BNNs exported to ONNX by tf2onnx (tests/data/larq, made by regenerate.py in its own environment):
every layer that is 1-bit in input and kernel binarizes, and the outputs match Keras' own.

tf2onnx's forms: NHWC tensors with Transposes around each Conv, the input quantizer as Sign -> Add(0.1) -> Sign,
QuickNet's one-padding as Sign -> Pad(1.0, NHWC) -> Transpose -> Conv, BatchNorms folded into the binary weights
(±gamma/sigma per channel, negative where gamma is), grouped convs as one Conv with a group attribute.
"""
import json
import os

import numpy as np
import pytest

import tvm_bnn

from ..conftest import assert_float_close, need

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "larq")
MANIFEST = json.load(open(os.path.join(DATA, "manifest.json")))["models"]


def _binary_layer_names(name):
    return [layer["name"] for layer in MANIFEST[name]["keras"]["binary_layers"]]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_larq_model_binarizes_every_binary_layer(name):
    data = np.load(os.path.join(DATA, f"{name}.npz"))
    cm = tvm_bnn.compile(os.path.join(DATA, f"{name}.onnx"), "x86", progress=False)
    binary = _binary_layer_names(name)
    binarized = [r.name for r in cm.report if r.binarized]
    assert len(binarized) == len(binary), str(cm.report)
    for layer in binary:  # tf2onnx names the ONNX node after the Keras layer
        assert any(f"/{layer}/" in n for n in binarized), (layer, str(cm.report))
    for r in cm.report:
        if not r.binarized:
            assert not r.binary_weights or "not binarized" in r.reason, str(cm.report)
    assert_float_close(cm(data["x"]), data["y"])


@pytest.mark.parametrize("target,tools", [("c", ("gcc",)), ("cortex-m4", ("arm-none-eabi-gcc", "qemu-system-arm")),
                                          ("aarch64", ("aarch64-linux-gnu-gcc", "qemu-aarch64"))])
@pytest.mark.parametrize("name", ["one_padding", "grouped"])
def test_one_padding_and_groups_on_every_target(name, target, tools):
    """LCE's one-padding (padding bits of +1, no correction) and grouped binary convs in the C and NEON kernels."""
    need(*tools)
    data = np.load(os.path.join(DATA, f"{name}.npz"))
    cm = tvm_bnn.compile(os.path.join(DATA, f"{name}.onnx"), target, progress=False)
    assert cm.report.num_binarized == len(_binary_layer_names(name)), str(cm.report)
    assert_float_close(cm(data["x"]), data["y"], rtol=2e-5 if target != "c" else 1e-5)


# -- Larq DoReFa-Net (tests/data/larq_dorefa: larq_zoo's DoReFaNet blocks at a small size, through tf2onnx) ---------

DOREFA = os.path.join(os.path.dirname(__file__), "..", "data", "larq_dorefa")
DOREFA_MANIFEST = json.load(open(os.path.join(DOREFA, "manifest.json")))["models"]


def _dorefa_bits(name):
    """W1A2 for a sign kernel (2 values), W2A2 for DoReFa's 2-bit weights (4 values): every QuantConv2D/QuantDense's
    input quantizer is DoReFa(k_bit=2), 4 levels."""
    return [f"W{int(np.log2(layer['kernel_levels']))}A2" for layer in DOREFA_MANIFEST[name]["quant_layers"]]


@pytest.mark.parametrize("target", ["x86", "cortex-m4", "aarch64"])
@pytest.mark.parametrize("name", sorted(DOREFA_MANIFEST))
def test_larq_dorefa_layers_compile_few_bit(name, target):
    """Every 1W2A / 2W2A layer of the DoReFa models compiles in bit planes (DoReFa's 4 levels: 2 planes), the float
    stem and classifier stay float with a reason, and the output equals Keras'."""
    if target == "cortex-m4":
        need("arm-none-eabi-gcc", "qemu-system-arm")
    elif target == "aarch64":
        need("aarch64-linux-gnu-gcc", "qemu-aarch64")
    data = np.load(os.path.join(DOREFA, f"{name}.npz"))
    cm = tvm_bnn.compile(os.path.join(DOREFA, f"{name}.onnx"), target, progress=False)
    few_bit = [r for r in cm.report if r.bits != "W32A32"]
    assert [r.bits for r in few_bit] == _dorefa_bits(name), str(cm.report)
    for layer, record in zip(DOREFA_MANIFEST[name]["quant_layers"], few_bit):
        assert f"/{layer['name']}/" in record.name, str(cm.report)  # tf2onnx names the node after the Keras layer
    assert all(r.reason for r in cm.report if r.bits == "W32A32"), str(cm.report)
    assert_float_close(cm(data["x"]), data["y"])
