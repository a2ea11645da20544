"""A Brevitas 1W1A network trained on the 8x8 digits, compiled by tvm_bnn three ways, compared with Brevitas.

Brevitas (https://github.com/Xilinx/brevitas) trains quantized PyTorch models; with 1-bit weight and activation
quantizers it makes BNNs. tvm_bnn compiles such a model from the ``nn.Module`` itself, from ``torch.onnx.export``
and from Brevitas' own QONNX export (the format FINN reads), and binarizes every layer whose weights and input are
1-bit; the 8-bit-input first conv stays float, and the report says why.

Run: ``.venv/bin/python examples/brevitas_digits.py [--epochs N]``.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import brevitas.nn as qnn
import numpy as np
import torch
from brevitas.quant import Int8ActPerTensorFloat
from brevitas_examples.bnn_pynq.models.common import CommonActQuant, CommonWeightQuant

import tvm_bnn
from digits_demo import load_data, train  # noqa: E402 - same data and training loop as the main demo


def make_model() -> torch.nn.Module:
    """8-bit input -> 8-bit-weight conv -> 1-bit activations and weights from there on, with the quantizers of
    Brevitas' BNN-PYNQ examples (CNV/LFC/SFC/TFC)."""
    act = dict(act_quant=CommonActQuant, bit_width=1, return_quant_tensor=False)
    conv = dict(weight_quant=CommonWeightQuant, weight_bit_width=1, bias=False)
    return torch.nn.Sequential(
        qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=False),
        qnn.QuantConv2d(1, 32, 3, padding=1, weight_bit_width=8, bias=False), torch.nn.BatchNorm2d(32),
        qnn.QuantIdentity(**act), qnn.QuantConv2d(32, 64, 3, padding=1, **conv), torch.nn.BatchNorm2d(64),
        torch.nn.MaxPool2d(2),
        qnn.QuantIdentity(**act), qnn.QuantConv2d(64, 96, 3, padding=1, **conv), torch.nn.BatchNorm2d(96),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        qnn.QuantIdentity(**act), qnn.QuantLinear(96 * 2 * 2, 10, **conv),
        torch.nn.BatchNorm1d(10))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    x_train, x_test, y_train, y_test = load_data()
    model = train(make_model(), x_train, y_train, args.epochs)
    with torch.no_grad():
        expected = model(torch.tensor(x_test)).numpy()
    print(f"Brevitas test accuracy: {(expected.argmax(1) == y_test).mean():.3f}")

    workdir = tempfile.mkdtemp(prefix="brevitas_digits_")
    onnx_path, qonnx_path = os.path.join(workdir, "model.onnx"), os.path.join(workdir, "model.qonnx.onnx")
    example = torch.tensor(x_test)
    with torch.no_grad():
        torch.onnx.export(model, (example,), onnx_path, dynamo=False)
    from brevitas.export import export_qonnx

    export_qonnx(model, example, export_path=qonnx_path)
    for route, source in (("nn.Module", model), ("torch.onnx.export", onnx_path), ("QONNX", qonnx_path)):
        inputs = (example,) if route == "nn.Module" else (x_test,)
        cm = tvm_bnn.compile(source, "x86", example_inputs=inputs, require_binary=True)
        got = cm(x_test)
        print(f"\n{route}: {cm.report.num_binarized} of {len(cm.report)} layers binarized; "
              f"max |tvm_bnn - Brevitas| = {np.abs(got - expected).max():.2g}; "
              f"identical predictions: {np.array_equal(got.argmax(1), expected.argmax(1))}")
    print()
    print(cm.report)


if __name__ == "__main__":
    main()
