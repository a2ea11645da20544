"""The tvm-bnn command line: compile, inspect, run, and its errors."""
import subprocess
import sys

import numpy as np
import torch

from tvm_bnn import nn as bnn


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tvm_bnn.cli", *args], capture_output=True, text=True, timeout=600)


def test_compile_inspect_run(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 9, 3), bnn.BinaryConv2d(9, 5, 3, bias=False)).eval()
    x = torch.randn(1, 3, 8, 8)
    onnx_path, lib = str(tmp_path / "m.onnx"), str(tmp_path / "m.so")
    torch.onnx.export(model, (x,), onnx_path, dynamo=False, input_names=["x"])
    np.save(tmp_path / "x.npy", x.numpy())

    out = run_cli("inspect", onnx_path)
    assert out.returncode == 0, out.stderr
    assert "1 of 2 conv2d/dense layers binarized" in out.stdout

    out = run_cli("compile", onnx_path, "--target", "x86", "-o", lib)
    assert out.returncode == 0, out.stderr
    out = run_cli("compile", onnx_path, "--target", "x86", "-o", lib)
    assert out.returncode == 2 and "already exists" in out.stderr

    out = run_cli("run", lib, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"))
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), model(x).detach().numpy())


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    out = run_cli("inspect", str(bad))
    assert out.returncode == 2 and out.stderr.startswith("error:") and "not a valid ONNX model" in out.stderr
    out = run_cli("compile", str(bad), "--target", "sparc", "-o", str(tmp_path / "o.so"))
    assert out.returncode == 2 and "target='sparc'" in out.stderr


def test_require_binary_fails_naming_the_layer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 9, 3), bnn.BinaryConv2d(9, 5, 3, bias=False, binarize_input=False))
    x = torch.randn(1, 3, 8, 8)
    onnx_path = str(tmp_path / "m.onnx")
    torch.onnx.export(model.eval(), (x,), onnx_path, dynamo=False, input_names=["x"])
    out = run_cli("compile", onnx_path, "--require-binary", "-o", str(tmp_path / "m.so"))
    assert out.returncode == 2 and "has binary weights but stays float" in out.stderr, out.stderr
    assert not (tmp_path / "m.so").exists()
