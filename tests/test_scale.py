"""Depth: a 100-layer binary MLP compiles and matches PyTorch exactly (bench/scale.py measures time and memory of
this and of the ResNet-50-sized BNN; the README states the limits)."""
import torch

import tvm_bnn
from tvm_bnn.zoo import binary_mlp, randomize_batchnorm_

from .conftest import assert_float_close


def test_hundred_layer_binary_mlp_is_exact():
    torch.manual_seed(0)
    model = randomize_batchnorm_(binary_mlp(depth=100, width=70, inputs=33, classes=5)).eval()
    x = torch.randn(3, 33)
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    assert cm.report.num_binarized == 99 and len(cm.report) == 100
    with torch.no_grad():
        ref = model(x).numpy()
    assert_float_close(cm(x), ref)  # 98 thresholds fused exactly; the classifier's float epilogue to rounding
