"""A QKeras BNN exported to ONNX by tf2onnx, compiled by tvm_bnn: every 1-bit layer binarized, Keras' output matched.

QKeras (the quantization library behind hls4ml) writes its 1-bit quantizers as straight-through sums: ``binary`` is
``x + stop_gradient(-x + k)`` with ``k = sign(x) + (1 - |sign(x)|)`` (sign with 0 -> +1), ``binary_tanh`` is
``2 * (h + stop_gradient(round(h) - h)) - 1`` with ``h = clip(0.5 x + 0.5, 0, 1)``. tf2onnx exports them as Add / Neg
/ Sign / Abs / Sub (and Min / Max / Round), with Transposes to NHWC between the pieces, and folds the kernels' sums
into constants that are +-alpha only to a rounding. tvm_bnn sinks the transposes, cancels the straight-through terms,
reads the exact two-valued function that remains (``x >= 0`` for ``binary``, ``x > 2^-24`` for ``binary_tanh``) and
binarizes the layer (``tests/data/qkeras/regenerate.py`` made the models; its README gives the versions).

Run: ``.venv/bin/python examples/qkeras_binary.py [path/to/model.onnx]`` (default: the binary_tanh test model).
"""
from __future__ import annotations

import os
import sys

import numpy as np

import tvm_bnn

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "qkeras")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join(DATA, "act_binary_tanh_kernel_auto_po2.onnx")
    cm = tvm_bnn.compile(path, "x86", require_binary=True)  # raise if a 1-bit layer were left float
    print(cm.report)
    reference = path[:-len(".onnx")] + ".npz"
    if os.path.exists(reference):
        data = np.load(reference)
        got = cm(data["x"])
        print(f"\nmax |tvm_bnn - Keras| = {np.abs(got - data['y']).max():.2g} (outputs up to "
              f"{np.abs(data['y']).max():.3g}); same top-1 class: {np.array_equal(got.argmax(1), data['y'].argmax(1))}")


if __name__ == "__main__":
    main()
