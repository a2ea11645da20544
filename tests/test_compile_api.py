"""The user-facing API: inputs of every kind, the report, export/load, and the errors for bad input."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tvm_bnn
from tvm_bnn import nn as bnn

from .conftest import assert_float_close, randomize_batchnorm


class SmallBNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 20, 3, padding=1)
        self.bn0 = torch.nn.BatchNorm2d(20)
        self.conv = bnn.BinaryConv2d(20, 45, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(45)
        self.fc = bnn.BinaryLinear(45 * 3 * 3, 6, bias=False)  # integer outputs: exact comparisons

    def forward(self, x):
        y = F.max_pool2d(self.bn1(self.conv(self.bn0(self.stem(x)))), 2)
        return self.fc(y.flatten(1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = randomize_batchnorm(SmallBNN())
    x = torch.randn(2, 3, 7, 7)
    return model, x, tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)


def test_numpy_and_torch_inputs_give_same_numpy_output(small):
    model, x, cm = small
    a, b = cm(x), cm(x.numpy())
    assert isinstance(a, np.ndarray)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, model(x).detach().numpy())


def test_aligned_inputs_are_read_in_place_and_others_copied(small):
    """An input in memory aligned as TVM's tensors (a torch tensor's, an aligned numpy array) is handed to the VM
    without a copy and left unchanged; unaligned, read-only and strided inputs are copied. Same outputs for all."""
    from tvm_bnn.backends.runtime_library import INPUT_ALIGNMENT, as_input_tensor

    model, x, cm = small
    want = model(x).detach().numpy()
    aligned = x.numpy()
    assert aligned.ctypes.data % INPUT_ALIGNMENT == 0  # torch allocates 64-byte aligned
    kept = aligned.copy()
    assert np.shares_memory(np.from_dlpack(as_input_tensor(aligned)), aligned)
    unaligned = np.empty(aligned.size + 1, np.float32)[1:].reshape(aligned.shape)
    unaligned[...] = aligned
    assert not np.shares_memory(np.from_dlpack(as_input_tensor(unaligned)), unaligned)
    read_only = aligned.copy()
    read_only.flags.writeable = False
    strided = np.repeat(aligned, 2, axis=3)[..., ::2]
    for arr in (aligned, unaligned, read_only, strided, x):
        np.testing.assert_array_equal(cm(arr), want)
    np.testing.assert_array_equal(aligned, kept)


def test_report_records_and_table(small):
    _, _, cm = small
    rep = cm.report
    assert [r.name for r in rep] == ["stem", "conv", "fc"]
    assert [r.op for r in rep] == ["conv2d", "conv2d", "dense"]
    assert [r.binarized for r in rep] == [False, True, True]
    assert rep[0].reason and not rep[1].reason and not rep[2].reason
    assert rep[1].weight_bytes_float == 45 * 20 * 9 * 4
    assert rep[1].weight_bytes_packed == 45 * 9 * 1 * 8 + 2 * 45 * 4  # packed words + scale and bias
    text = str(rep)
    assert "2 of 3 conv2d/dense layers binarized" in text and "stem" in text


def test_exported_program_input(small):
    model, x, _ = small
    ep = torch.export.export(model, (x,))
    cm = tvm_bnn.compile(ep, "x86", progress=False)
    np.testing.assert_array_equal(cm(x), model(x).detach().numpy())


def test_relax_module_input(small):
    model, x, _ = small
    from tvm.relax.frontend.torch import from_exported_program

    mod = from_exported_program(torch.export.export(model, (x,)))
    cm = tvm_bnn.compile(mod, "x86", progress=False)
    assert cm.report.num_binarized == 2
    np.testing.assert_array_equal(cm(x), model(x).detach().numpy())


def test_multiple_outputs_are_a_tuple():
    class Two(torch.nn.Module):
        def forward(self, x):
            b = torch.where(x >= 0, 1.0, -1.0)
            return F.conv2d(b, torch.ones(3, 5, 1, 1)), x * 2

    x = torch.randn(1, 5, 4, 4)
    cm = tvm_bnn.compile(Two(), "x86", example_inputs=(x,), progress=False)
    out = cm(x)
    assert isinstance(out, tuple) and len(out) == 2
    np.testing.assert_array_equal(out[0], Two()(x)[0].numpy())
    assert_float_close(out[1], Two()(x)[1].numpy())


def test_export_and_load_roundtrip(small, tmp_path):
    model, x, cm = small
    path = str(tmp_path / "model.so")
    cm.export(path)
    loaded = tvm_bnn.load(path)
    np.testing.assert_array_equal(loaded(x), cm(x))
    assert [r.binarized for r in loaded.report] == [r.binarized for r in cm.report]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        cm.export(path)
    cm.export(path, overwrite=True)


def test_onnx_model_matches_onnxruntime(small, tmp_path):
    import onnxruntime as ort

    model, x, _ = small
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"])
    cm = tvm_bnn.compile(path, "x86", progress=False)
    assert [r.binarized for r in cm.report] == [False, True, True], str(cm.report)
    ref = ort.InferenceSession(path).run(None, {"x": x.numpy()})[0]
    np.testing.assert_array_equal(cm(x), ref)
    import onnx

    cm2 = tvm_bnn.compile(onnx.load(path), "x86", progress=False)
    np.testing.assert_array_equal(cm2(x), ref)


def test_onnx_sign_op_and_pad_and_gemm(tmp_path):
    """ONNX Sign, the Pad that F.pad exports (computed pads), and Gemm with transB."""
    import onnxruntime as ort

    torch.manual_seed(3)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(7, 9, 3, 3))
            self.fc = torch.nn.Parameter(torch.randn(4, 7 * 6 * 6))
            self.bn = torch.nn.BatchNorm2d(7)

        def forward(self, x):
            y = F.conv2d(F.pad(torch.sign(x), (1, 0, 2, 0)), torch.sign(self.w))
            y = self.bn(y)
            return F.linear(torch.sign(y).flatten(1), torch.sign(self.fc))

    model = randomize_batchnorm(Net())
    x = torch.randn(2, 9, 6, 7)
    path = str(tmp_path / "sign.onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"])
    cm = tvm_bnn.compile(path, "x86", progress=False)
    assert cm.report.num_binarized == 2, str(cm.report)
    np.testing.assert_array_equal(cm(x), ort.InferenceSession(path).run(None, {"x": x.numpy()})[0])


def test_onnx_dynamic_batch_needs_example_inputs(small, tmp_path):
    model, x, _ = small
    path = str(tmp_path / "dyn.onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    with pytest.raises(tvm_bnn.ModelImportError, match=r"input 'x' has a dynamic dimension \(batch\).*example_inputs"):
        tvm_bnn.compile(path, "x86", progress=False)
    x3 = torch.randn(3, 3, 7, 7)
    cm = tvm_bnn.compile(path, "x86", example_inputs=(x3,), progress=False)
    np.testing.assert_array_equal(cm(x3), model(x3).detach().numpy())


def test_unknown_target_names_the_argument():
    with pytest.raises(tvm_bnn.UnknownTargetError, match=r"target='riscv-foo'.*'x86'"):
        tvm_bnn.compile(torch.nn.Linear(2, 2), "riscv-foo", example_inputs=(torch.randn(1, 2),))


def test_file_that_is_not_a_model(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model")
    with pytest.raises(tvm_bnn.ModelImportError, match="not a valid ONNX model"):
        tvm_bnn.compile(str(bad), "x86")
    with pytest.raises(tvm_bnn.ModelImportError, match="does not exist"):
        tvm_bnn.compile(str(tmp_path / "missing.onnx"), "x86")


def test_not_a_model_object():
    with pytest.raises(tvm_bnn.ModelImportError, match="cannot compile an object of type dict"):
        tvm_bnn.compile({"a": 1}, "x86")


def test_module_without_example_inputs():
    with pytest.raises(tvm_bnn.ModelImportError, match="example_inputs"):
        tvm_bnn.compile(torch.nn.Linear(2, 2), "x86")


def test_unsupported_op_names_the_op():
    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.fft.fft(x).real

    with pytest.raises(tvm_bnn.ModelImportError, match="fft"):
        tvm_bnn.compile(Odd(), "x86", example_inputs=(torch.randn(1, 8),))


def test_dynamic_shapes_are_refused_with_advice():
    from tvm.relax.frontend.torch import from_exported_program

    model = torch.nn.Linear(4, 3)
    batch = torch.export.Dim("batch", min=2, max=64)
    ep = torch.export.export(model, (torch.randn(2, 4),), dynamic_shapes=({0: batch},))
    with pytest.raises(tvm_bnn.ModelImportError, match="dynamic shape.*example_inputs"):
        tvm_bnn.compile(from_exported_program(ep), "x86")


def test_wrong_input_shape_names_the_input(small):
    _, _, cm = small
    with pytest.raises(tvm_bnn.InputError, match="input 'x': shape \\(1, 3, 7, 7\\)"):
        cm(np.zeros((1, 3, 7, 7), np.float32))
    with pytest.raises(tvm_bnn.InputError, match="takes 1 input"):
        cm()


def test_x86_target_is_the_host_cpu_not_generic():
    from tvm_bnn.targets import resolve_target, x86_host
    from tvm_bnn.targets.presets import host_cpu

    spec = resolve_target("x86")
    forced = x86_host.forced_level()  # TVM_BNN_X86_LEVEL: the generic CPU of that level
    assert str(spec.target.attrs["mcpu"]) == (x86_host.level(forced).mcpu if forced else host_cpu()) != "generic"
    assert int(spec.target.attrs["num-cores"]) >= 1
    assert not x86_host.missing_features(spec.required_features)  # "x86" always runs here


class _BinaryWeightsFloatInput(torch.nn.Module):
    """conv(x, sign(W)) on a float input: binary weights, activation not binarized (e.g. a forgotten sign)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv = bnn.BinaryConv2d(8, 6, 3, padding=1, bias=False, binarize_input=False)

    def forward(self, x):
        return self.conv(self.stem(x))


def test_binary_weights_with_unrecognised_activation_warn_or_raise():
    torch.manual_seed(0)
    model, x = _BinaryWeightsFloatInput().eval(), torch.randn(1, 3, 6, 6)
    with pytest.warns(UserWarning, match=r"layer 'conv' \(conv2d, weights 6x8x3x3\) has binary weights but stays float: "
                                         r"activation input is not binarized: it is a float tensor computed by an Add of x with a constant, x = a "
                                         r"Conv: it takes many values \(any float\)"):
        cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    assert [r.binary_weights for r in cm.report] == [False, True] and not cm.report[1].binarized
    with pytest.raises(tvm_bnn.NotBinarizedError, match=r"1 layer\(s\)[\s\S]*'conv'"):
        tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False, require_binary=True)


def test_float_layers_with_float_weights_do_not_warn(small):
    import warnings

    model, x, _ = small
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False, require_binary=True)
