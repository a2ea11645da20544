"""QKeras (Keras) BNNs exported to ONNX by tf2onnx (tests/data/qkeras, made by regenerate.py in its own environment):
every layer that is 1-bit in input and kernel binarizes, and the outputs match Keras' own.

tf2onnx's forms: QKeras' quantizers are straight-through sums, ``x + stop(-x + k)`` with ``k = sign(x) + (1 -
|sign(x)|)`` (``binary``; ``tanh(x) + stop(-tanh(x) + k)`` with alpha=None), ``2 * (h + stop(round(h) - h)) - 1``
with ``h = clip(0.5 x + 0.5, 0, 1)`` written as ONNX Min/Max (``binary_tanh``), with Transposes to NHWC around the
Sign or the Round; the stop-gradients are gone. The kernels' sums are folded by TF into constants that are +-alpha
only to 1-2 ulps (``alpha="auto"``). A depthwise conv with float weights stays float, as in LCE.
"""
import json
import os

import numpy as np
import pytest

import tvm_bnn

from ..conftest import assert_float_close, need

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "qkeras")
MANIFEST = json.load(open(os.path.join(DATA, "manifest.json")))["models"]


def _layers(name, binary=True):
    return [layer["name"] for layer in MANIFEST[name]["keras"]["quantized_layers"] if layer["binary"] == binary]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_qkeras_model_binarizes_every_binary_layer(name):
    data = np.load(os.path.join(DATA, f"{name}.npz"))
    cm = tvm_bnn.compile(os.path.join(DATA, f"{name}.onnx"), "x86", progress=False)
    binarized = [r.name for r in cm.report if r.binarized]
    assert len(binarized) == len(_layers(name)), str(cm.report)
    for layer in _layers(name):  # tf2onnx names the ONNX node after the Keras layer
        assert any(f"/{layer}/" in n for n in binarized), (layer, str(cm.report))
    for layer in _layers(name, binary=False):  # QDepthwiseConv2D with float weights
        rec = next(r for r in cm.report if f"/{layer}/" in r.name)
        assert not rec.binarized and "weights are not binary" in rec.reason, str(cm.report)
    assert_float_close(cm(data["x"]), data["y"])  # exact +-1 activations; weights +-alpha to 2 ulps ("auto")


@pytest.mark.parametrize("target,tools", [("cortex-m4", ("arm-none-eabi-gcc", "qemu-system-arm")),
                                          ("aarch64", ("aarch64-linux-gnu-gcc", "qemu-aarch64"))])
def test_qkeras_binary_tanh_on_arm(target, tools):
    """binary_tanh (0 -> -1: round half to even) through the C and NEON kernels."""
    need(*tools)
    name = "act_binary_tanh_kernel_auto_po2"
    data = np.load(os.path.join(DATA, f"{name}.npz"))
    cm = tvm_bnn.compile(os.path.join(DATA, f"{name}.onnx"), target, progress=False)
    assert cm.report.num_binarized == len(_layers(name)), str(cm.report)
    assert_float_close(cm(data["x"]), data["y"], rtol=2e-5)


def test_example_runs(capsys):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "qkeras_binary.py")
    spec = importlib.util.spec_from_file_location("qkeras_binary", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main([])
    assert "max |tvm_bnn - Keras| = 0" in capsys.readouterr().out
