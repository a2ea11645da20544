"""tvm_bnn.compile for bare-metal targets: the user-facing path to the C bundle and the emulated boards."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tvm_bnn
from tvm_bnn import nn as bnn

from ..conftest import assert_float_close, need, randomize_batchnorm


class TinyBNN(torch.nn.Module):
    """Float stem, two binary convs (odd channels, zero padding, BN -> thresholds, max-pool), binary dense."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 13, 3, padding=1, bias=False)
        self.bn0 = torch.nn.BatchNorm2d(13)
        self.c1 = bnn.BinaryConv2d(13, 33, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(33)
        self.c2 = bnn.BinaryConv2d(33, 65, 3, stride=2, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(65)
        self.fc = bnn.BinaryLinear(65 * 2 * 2, 7, bias=False)

    def forward(self, x):
        y = self.bn1(self.c1(self.bn0(self.stem(x))))
        y = F.max_pool2d(self.bn2(self.c2(y)), 2)
        return self.fc(y.flatten(1))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomize_batchnorm(TinyBNN()), torch.randn(1, 1, 8, 8)


def test_cortex_m4_compile_run_stats_export(tiny, tmp_path):
    need("arm-none-eabi-gcc", "qemu-system-arm")
    model, x = tiny
    cm = tvm_bnn.compile(model, "cortex-m4", example_inputs=(x,))
    assert [r.binarized for r in cm.report] == [False, True, True, True]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_array_equal(cm(x), expected)  # binary dense output: exact integers
    stats = cm.stats
    assert stats.instructions_per_inference > 1000 and stats.flash_weight_bytes > 0
    assert stats.ram_arena_bytes <= stats.ram_arena_bytes_without_reuse
    assert stats.ram_stack_bytes is not None and 0 < stats.ram_stack_bytes < 4096
    assert "instructions per inference" in str(stats)
    out = tmp_path / "fw"
    cm.export(str(out))
    assert {"model.h", "model.c", "weights.c", "Makefile", "CMakeLists.txt", "README.md"} <= {p.name for p in
                                                                                           out.iterdir()}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        cm.export(str(out))
    subprocess.run(["make", "-C", str(out)], check=True, capture_output=True)


def test_portable_c_target_runs_on_host(tiny):
    need("gcc")
    model, x = tiny
    cm = tvm_bnn.compile(model, "c", example_inputs=(x,))
    with torch.no_grad():
        np.testing.assert_array_equal(cm(x), model(x).numpy())
    with pytest.raises(tvm_bnn.TvmBnnError, match="no board"):
        cm.stats


def test_other_cortex_m_boards_agree(tiny):
    need("arm-none-eabi-gcc", "qemu-system-arm")
    model, x = tiny
    with torch.no_grad():
        expected = model(x).numpy()
    for board in ("cortex-m7", "cortex-m0"):
        np.testing.assert_array_equal(tvm_bnn.compile(model, board, example_inputs=(x,))(x), expected)


def test_digits_demo_model_on_cortex_m4_matches_x86():
    need("arm-none-eabi-gcc", "qemu-system-arm")
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    from digits_demo import make_model

    torch.manual_seed(1)
    model = randomize_batchnorm(make_model())
    x = torch.randn(1, 1, 8, 8)
    on_board = tvm_bnn.compile(model, "cortex-m4", example_inputs=(x,))(x)
    on_x86 = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)(x)
    assert_float_close(on_board, on_x86)
    with torch.no_grad():
        assert_float_close(on_board, model(x).numpy())


def test_cli_compile_to_bundle_directory(tiny, tmp_path):
    need("arm-none-eabi-gcc", "qemu-system-arm")
    model, x = tiny
    path = str(tmp_path / "tiny.onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"])
    out = subprocess.run([sys.executable, "-m", "tvm_bnn.cli", "compile", path, "--target", "cortex-m4", "-o",
                          str(tmp_path / "fw")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "fw" / "model.h").is_file()


def test_bundle_refuses_tuning_db(tiny, tmp_path):
    model, x = tiny
    with pytest.raises(tvm_bnn.TvmBnnError, match="takes no tuning database"):
        tvm_bnn.compile(model, "c", example_inputs=(x,), tuning_db=str(tmp_path))


def test_per_call_instruction_profile(tiny):
    need("arm-none-eabi-gcc", "qemu-system-arm")
    model, x = tiny
    cm = tvm_bnn.compile(model, "cortex-m4", example_inputs=(x,))
    y, total = cm.bundle.run_board(x.numpy(), "cortex-m4")
    y2, calls = cm.bundle.run_board(x.numpy(), "cortex-m4", per_call=True)
    np.testing.assert_array_equal(y, y2)
    assert [k for k, _ in calls] == cm.bundle.kernels and all(n > 0 for _, n in calls)
    assert total - 64 * len(calls) <= sum(n for _, n in calls) <= total


def test_kernels_from_llvm_thumbv7em_codegen(tiny, tmp_path):
    """The Cortex-M bundle with its kernels from TVM's LLVM codegen (a TVM target dict with a thumb triple): the
    same outputs; bench/cortexm.py --codegen compares it with the C codegen (the default, fewer instructions)."""
    need("arm-none-eabi-gcc", "qemu-system-arm")
    model, x = tiny
    target = {"kind": "llvm", "mtriple": "thumbv7em-none-eabi", "mcpu": "cortex-m4", "mfloat-abi": "hard"}
    cm = tvm_bnn.compile(model, target, example_inputs=(x,))
    with torch.no_grad():
        np.testing.assert_array_equal(cm(x), model(x).numpy())
    assert cm.stats.instructions_per_inference > 1000
    out = tmp_path / "fw"
    cm.export(str(out))
    assert "kernels.o" in {p.name for p in out.iterdir()}
    subprocess.run(["make", "-C", str(out)], check=True, capture_output=True)


class ConvForm(torch.nn.Module):
    def __init__(self, cin, cout, kernel, stride, dilation, pad):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, cin, 1)
        self.bn = torch.nn.BatchNorm2d(cout)
        self.conv = bnn.BinaryConv2d(cin, cout, kernel, stride=stride, dilation=dilation, bias=False)
        self.pad = pad

    def forward(self, x):
        y = F.pad(bnn.BinarySign()(self.stem(x)), self.pad)  # zero padding of a ±1 tensor, asymmetric
        return self.bn(self.conv(y))


@pytest.mark.parametrize("cin,cout,kernel,stride,dilation,pad,batch", [
    (1, 3, 1, 1, 1, (0, 0, 0, 0), 1),
    (5, 7, 3, 2, 1, (1, 1, 1, 1), 2),
    (33, 17, 5, 1, 2, (2, 1, 0, 3), 1),
    (70, 9, 7, 3, 1, (3, 3, 3, 3), 1),
    (65, 66, (3, 2), (2, 1), 1, (1, 0, 2, 1), 2),
])
def test_spine_conv_forms_on_cortex_m4(cin, cout, kernel, stride, dilation, pad, batch):
    need("arm-none-eabi-gcc", "qemu-system-arm")
    torch.manual_seed(cin)
    model = randomize_batchnorm(ConvForm(cin, cout, kernel, stride, dilation, pad))
    x = torch.randn(batch, 3, 11, 10)
    cm = tvm_bnn.compile(model, "cortex-m4", example_inputs=(x,))
    assert [r.binarized for r in cm.report if r.name.endswith("conv")] == [True]
    with torch.no_grad():
        assert_float_close(cm(x), model(x).numpy())
