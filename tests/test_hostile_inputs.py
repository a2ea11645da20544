"""Hostile and malformed input: every case gives a clear TvmBnnError (naming what is wrong and what to do), never a
crash of the interpreter, never a silently wrong model, and never overwrites a user's file without being asked.

Each case runs in a fresh subprocess where a crash (segfault, abort) would otherwise take the test run down with
it: the subprocess must exit normally and print the error class and message it caught.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import tvm_bnn
from tvm_bnn import nn as bnn
from tvm_bnn.errors import TvmBnnError

from .conftest import assert_float_close


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = bnn.BinaryConv2d(3, 5, 3, padding=1)
        self.fc = torch.nn.Linear(5 * 6 * 6, 4)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    torch.onnx.export(Small().eval(), (torch.randn(1, 3, 6, 6),), str(path), dynamo=False, input_names=["x"])
    return path


def run_isolated(code: str, tmp_path) -> str:
    """Run ``code`` in a fresh interpreter; it must exit 0 (no crash) and print one line ``CAUGHT <class> <msg>``."""
    script = tmp_path / "case.py"
    script.write_text("import sys, warnings\nwarnings.filterwarnings('ignore')\nimport tvm_bnn\ntry:\n" +
                      textwrap.indent(textwrap.dedent(code), "    ") +
                      "\n    print('NO ERROR')\nexcept tvm_bnn.TvmBnnError as exc:\n"
                      "    print('CAUGHT', type(exc).__name__, str(exc).replace(chr(10), ' '))\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, f"the interpreter died (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("CAUGHT", "NO ERROR"))]
    assert lines, proc.stdout + proc.stderr[-2000:]
    return lines[-1]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "zeros"])
def test_corrupt_onnx_files(onnx_path, tmp_path, damage):
    data = onnx_path.read_bytes()
    bad = {"truncated": data[: len(data) // 2], "garbage": bytes(np.random.default_rng(0).integers(0, 256, 4096,
                                                                                                   dtype=np.uint8)),
           "empty": b"", "zeros": b"\0" * 1000}[damage]
    path = tmp_path / "bad.onnx"
    path.write_bytes(bad)
    line = run_isolated(f"tvm_bnn.compile({str(path)!r}, 'x86')", tmp_path)
    assert line.startswith("CAUGHT ModelImportError") and "bad.onnx" in line, line


def _onnx_model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_op_the_importer_does_not_know(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = _onnx_model([helper.make_node("Det", ["x"], ["y"], name="my_det")], [x], [y])
    path = tmp_path / "det.onnx"
    onnx.save(model, str(path))
    line = run_isolated(f"tvm_bnn.compile({str(path)!r}, 'x86')", tmp_path)
    assert line.startswith("CAUGHT ModelImportError") and "Det" in line, line


def test_onnx_custom_domain_op(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = _onnx_model([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], [x], [y])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    line = run_isolated(f"tvm_bnn.compile({str(path)!r}, 'x86')", tmp_path)
    assert line.startswith("CAUGHT") and "Frobnicate" in line, line


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_weights_stay_float_with_a_reason(bad):
    """A conv on sign-binarized activations whose weights are ±0.5 except one NaN/Inf: not a binary layer (the
    bad weight is not ±alpha), so it stays float, the report says why, and the outputs are PyTorch's."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.sign(torch.randn_like(conv.weight)) * 0.5)
        conv.weight[0, 0, 0, 0] = bad
    model = torch.nn.Sequential(bnn.BinarySign(), conv).eval()
    x = torch.randn(1, 3, 5, 5)
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,))
    rec = [r for r in cm.report if r.op == "conv2d"][0]
    assert not rec.binarized and rec.reason, rec
    with torch.no_grad():
        ref = model(x).numpy()
    got = cm(x)
    assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.array_equal(np.isinf(got), np.isinf(ref))
    finite = np.isfinite(ref)
    assert_float_close(got[finite], ref[finite])


def test_nan_input_propagates_like_pytorch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    x = torch.randn(2, 4)
    x[0, 1] = float("nan")
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,))
    got = cm(x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    assert_float_close(got[1], ref[1])


@pytest.mark.parametrize("target", ["x86", "c"])
def test_zero_size_batch_is_refused_clearly(tmp_path, target):
    """Batch 0: a ModelImportError that names the tensor, never a crash or made-up values."""
    line = run_isolated(f"""
        import numpy as np, torch
        from tvm_bnn import nn as bnn
        model = torch.nn.Sequential(bnn.BinaryConv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 9, 2)).eval()
        x = torch.zeros(0, 3, 5, 5)
        got = tvm_bnn.compile(model, {target!r}, example_inputs=(x,))(x)
        assert got.shape == (0, 2), got.shape
        print("EMPTY OK")
    """, tmp_path)
    assert line.startswith("CAUGHT ModelImportError") and "zero-size" in line, line


def test_huge_shape_is_refused_before_allocating(tmp_path):
    """A 2^40-element input must be refused up front, not allocate and die."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1 << 20, 1 << 20])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1 << 20, 1 << 20])
    model = _onnx_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y])
    path = tmp_path / "huge.onnx"
    onnx.save(model, str(path))
    line = run_isolated(f"tvm_bnn.compile({str(path)!r}, 'x86')", tmp_path)
    assert line.startswith("CAUGHT") and "large" in line.lower(), line


def test_dynamic_shape_onnx_without_example_inputs(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    model = _onnx_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y])
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    line = run_isolated(f"tvm_bnn.compile({str(path)!r}, 'x86')", tmp_path)
    assert line.startswith("CAUGHT") and "example_inputs" in line and "x" in line, line


def test_tuning_database_from_another_model_changes_nothing(tmp_path):
    """A database tuned for model A applied to model B: no record matches B's kernels, so B compiles with the
    defaults and gives the right answer."""
    torch.manual_seed(0)
    a = Small().eval()
    tvm_bnn.tune(a, "x86", example_inputs=(torch.randn(1, 3, 6, 6),), trials=2, work_dir=str(tmp_path / "db"),
                 progress=False)
    b = torch.nn.Sequential(bnn.BinaryConv2d(3, 9, 5, padding=2), torch.nn.Flatten(), torch.nn.Linear(9 * 7 * 7, 2))
    x = torch.randn(1, 3, 7, 7)
    cm = tvm_bnn.compile(b.eval(), "x86", example_inputs=(x,), tuning_db=str(tmp_path / "db"))
    with torch.no_grad():
        assert_float_close(cm(x), b(x).numpy())


def test_corrupt_tuning_database(tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    (db / "database_workload.json").write_text('["not", "a workload"]\n{{{\n')
    (db / "database_tuning_record.json").write_text("[1, 2, 3]\n")
    line = run_isolated(f"""
        import torch
        from tvm_bnn import nn as bnn
        m = torch.nn.Sequential(bnn.BinaryConv2d(3, 4, 3))
        tvm_bnn.compile(m, 'x86', example_inputs=(torch.randn(1, 3, 5, 5),), tuning_db={str(db)!r})
    """, tmp_path)
    assert line.startswith("CAUGHT") and "database" in line, line


def test_exports_never_overwrite_without_being_asked(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    cm = tvm_bnn.compile(Small().eval(), "x86", example_inputs=(x,))
    target = tmp_path / "model.so"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        cm.export(str(target))
    assert target.read_bytes() == b"precious"
    meta = tmp_path / "other.so.tvm_bnn.json"
    meta.write_text("precious")
    with pytest.raises(FileExistsError):
        cm.export(str(tmp_path / "other.so"))
    assert meta.read_text() == "precious" and not (tmp_path / "other.so").exists()
    bundle = tvm_bnn.compile(Small().eval(), "c", example_inputs=(x,))
    occupied = tmp_path / "fw"
    occupied.mkdir()
    (occupied / "main.c").write_text("precious")
    with pytest.raises(FileExistsError):
        bundle.export(str(occupied))
    assert (occupied / "main.c").read_text() == "precious"


def test_missing_toolchain_is_a_clear_error(monkeypatch):
    """With the cross compiler off PATH, compiling for a board says which package to install."""
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TvmBnnError, match="apt-get install"):
        tvm_bnn.compile(Small().eval(), "aarch64", example_inputs=(torch.randn(1, 3, 6, 6),))
    with pytest.raises(TvmBnnError, match="apt-get install"):
        tvm_bnn.compile(Small().eval(), "cortex-m4", example_inputs=(torch.randn(1, 3, 6, 6),))


def test_load_of_a_damaged_export(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    path = tvm_bnn.compile(Small().eval(), "x86", example_inputs=(x,)).export(str(tmp_path / "m.so"))
    meta = json.loads(open(path + ".tvm_bnn.json").read())
    open(path + ".tvm_bnn.json", "w").write(json.dumps({k: v for k, v in meta.items() if k != "inputs"}))
    line = run_isolated(f"tvm_bnn.load({path!r})", tmp_path)
    assert line.startswith("CAUGHT") and "metadata" in line, line
    open(path, "wb").write(b"\x7fELF not really")
    open(path + ".tvm_bnn.json", "w").write(json.dumps(meta))
    line = run_isolated(f"tvm_bnn.load({path!r})", tmp_path)
    assert line.startswith("CAUGHT") and "m.so" in line, line
