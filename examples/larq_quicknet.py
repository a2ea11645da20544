"""A Larq (Keras) BNN with QuickNet's one-padding, exported to ONNX by tf2onnx, compiled by tvm_bnn.

Larq (https://larq.dev) trains BNNs in Keras; Larq Compute Engine runs them on ARM through TFLite. Here the Keras
model was exported with tf2onnx (``tests/data/larq/regenerate.py`` made this file, in an environment with TensorFlow,
Larq and tf2onnx; its README gives the versions): NHWC input, a Transpose before each Conv, the input quantizer as
``Sign -> Add -> Sign``, QuickNet's ``pad_values=1.0`` as ``Pad(1.0)`` on the NHWC tensor, the BatchNorm folded
into the binary weights. tvm_bnn binarizes every 1-bit layer (the one-padding becomes padding bits of +1: no
correction, LCE's fastest path) and matches Keras' own output.

Run: ``.venv/bin/python examples/larq_quicknet.py [path/to/model.onnx]`` (default: the one-padding test model).
"""
from __future__ import annotations

import os
import sys

import numpy as np

import tvm_bnn

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "larq")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join(DATA, "one_padding.onnx")
    reference = path[:-len(".onnx")] + ".npz"
    cm = tvm_bnn.compile(path, "x86", require_binary=True)  # raise if a 1-bit layer were left float
    print(cm.report)
    if os.path.exists(reference):
        data = np.load(reference)
        got = cm(data["x"])
        print(f"\nmax |tvm_bnn - Keras| = {np.abs(got - data['y']).max():.2g} (outputs up to "
              f"{np.abs(data['y']).max():.3g}); same top-1 class: {np.array_equal(got.argmax(1), data['y'].argmax(1))}")
    for target in ("c", "aarch64"):  # the same model as portable C and for ARM Linux (run here under QEMU)
        try:
            cm_t = tvm_bnn.compile(path, target)
        except tvm_bnn.ToolchainMissingError as exc:
            print(f"{target}: skipped ({exc})")
            continue
        if os.path.exists(reference):
            print(f"{target}: max |tvm_bnn - Keras| = {np.abs(cm_t(data['x']) - data['y']).max():.2g}")


if __name__ == "__main__":
    main()
