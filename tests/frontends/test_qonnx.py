"""tvm_bnn.frontends.qonnx: QONNX custom ops -> standard ONNX with exactly QONNX's values, and custom-op refusal.

The reference is QONNX's own execution (``qonnx.core.onnx_exec.execute_onnx``, which runs the custom ops with
QONNX's numpy code); the decomposed models run in onnxruntime and through tvm_bnn (TVM). Inputs include the values
where a quantizer decides: 0 and -0, +-scale/2, every half-integer tie of the scaled input, the clip bounds and
beyond. Comparisons are exact (``assert_array_equal``): the decomposition does the same float operations in the same
order.
"""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import tvm_bnn
from tvm_bnn.errors import ModelImportError
from tvm_bnn.frontends.qonnx import check_domains, decompose_qonnx, max_int, min_int

from ..conftest import assert_float_close, randomize_batchnorm

QONNX = "qonnx.custom_op.general"
SHAPE = (2, 3, 4, 9)


# -- helpers ---------------------------------------------------------------------------------------------------------

def single_node_model(op_type, consts, attrs=None, domain=QONNX, domain_version=2, shape=SHAPE, opset=17):
    """x -> op_type(x, *consts) -> y; consts: list of numpy arrays (initializers) or names of graph inputs."""
    inits, inputs = [], ["x"]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    for k, c in enumerate(consts):
        name = f"in{k + 1}"
        if isinstance(c, tuple):  # ("input", array): a graph input, fed at run time
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(c[1].shape)))
        else:
            inits.append(numpy_helper.from_array(np.asarray(c, dtype=np.float32), name))
        inputs.append(name)
    node = helper.make_node(op_type, inputs, ["y"], domain=domain, name="q0", **(attrs or {}))
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                        list(shape))], inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, domain_version)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def run_qonnx(proto, feeds):
    """QONNX's reference execution (its numpy code for the custom ops)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    out = execute_onnx(ModelWrapper(proto), feeds)
    return np.asarray(out[proto.graph.output[0].name])


def run_ort(proto, feeds):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # op by op, as QONNX runs them
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def boundary_inputs(scale, lo, hi, zeropt=0.0, seed=0):
    """x such that x / scale + zeropt hits 0, -0, every half-integer tie and integer in [lo - 2, hi + 2], the clip
    bounds +-1/2, and random values; scale broadcasts over SHAPE (per tensor or per channel)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(SHAPE))
    t = np.concatenate([np.arange(lo - 2.0, hi + 2.5, 0.5), [0.0, -0.0, 0.5, -0.5, lo - 0.5, hi + 0.5, lo, hi]])
    t = np.concatenate([t, rng.normal(0, max(hi - lo, 1) / 2, size=n)])[:n]
    rng.shuffle(t)
    t = t.reshape(SHAPE).astype(np.float32)
    x = ((t - np.float32(zeropt)) * np.broadcast_to(np.asarray(scale, np.float32), SHAPE)).astype(np.float32)
    x.reshape(-1)[:4] = [0.0, -0.0, 1e-30, -1e-30]  # exact zeros and tiny values: the sign decisions
    return x


SCALES = {"tensor": np.float32(0.37), "channel": np.array([0.25, 0.1, 1.5], np.float32).reshape(1, 3, 1, 1)}


# -- Quant -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bitwidth", [1, 2, 4, 8])
@pytest.mark.parametrize("signed,narrow", [(1, 0), (1, 1), (0, 0), (0, 1)])
@pytest.mark.parametrize("scale_kind", ["tensor", "channel"])
def test_quant_matches_qonnx(bitwidth, signed, narrow, scale_kind):
    scale = SCALES[scale_kind]
    zeropt = np.float32(0.0)
    proto = single_node_model("Quant", [scale, zeropt, np.float32(bitwidth)],
                              dict(signed=signed, narrow=narrow, rounding_mode="ROUND"))
    x = boundary_inputs(scale, min_int(signed, narrow, bitwidth), max_int(signed, narrow, bitwidth))
    expected = run_qonnx(proto, {"x": x})
    decomposed = decompose_qonnx(proto)
    assert not any(n.domain for n in decomposed.graph.node), [n.op_type for n in decomposed.graph.node]
    assert [o.domain for o in decomposed.opset_import] == [""], "the QONNX opset import is dropped"
    np.testing.assert_array_equal(run_ort(decomposed, {"x": x}), expected)
    if bitwidth == 1 and signed:
        assert set(np.unique(expected / np.broadcast_to(scale, SHAPE))) == {-1.0, 1.0}


@pytest.mark.parametrize("mode", ["ROUND", "HALF_EVEN", "CEIL", "FLOOR", "UP", "DOWN", "HALF_UP", "HALF_DOWN"])
@pytest.mark.parametrize("zeropt", [0.0, 3.0])
def test_quant_rounding_modes_and_zero_point(mode, zeropt):
    scale = SCALES["channel"]
    proto = single_node_model("Quant", [scale, np.float32(zeropt), np.float32(4)],
                              dict(signed=0, narrow=0, rounding_mode=mode))
    x = boundary_inputs(scale, 0 - zeropt, 15 - zeropt, zeropt=zeropt, seed=1)
    expected = run_qonnx(proto, {"x": x})
    np.testing.assert_array_equal(run_ort(decompose_qonnx(proto), {"x": x}), expected)


def test_quant_in_onnx_brevitas_and_finn_domains_and_intquant_alias():
    scale = SCALES["tensor"]
    x = boundary_inputs(scale, -2, 1)
    ref = run_qonnx(single_node_model("Quant", [scale, np.float32(0), np.float32(2)], dict(signed=1, narrow=0)),
                    {"x": x})
    for domain, op in [("onnx.brevitas", "Quant"), ("finn.custom_op.general", "Quant"), (QONNX, "IntQuant")]:
        proto = single_node_model(op, [scale, np.float32(0), np.float32(2)], dict(signed=1, narrow=0),
                                  domain=domain, domain_version=1)
        decomposed = decompose_qonnx(proto)
        assert [o.domain for o in decomposed.opset_import] == [""]
        np.testing.assert_array_equal(run_ort(decomposed, {"x": x}), ref, err_msg=f"{domain} {op}")


def test_quant_scale_and_zero_point_may_be_runtime_tensors():
    scale = SCALES["channel"]
    proto = single_node_model("Quant", [("input", scale), np.float32(0), np.float32(3)], dict(signed=1, narrow=1))
    x = boundary_inputs(scale, -3, 3)
    feeds = {"x": x, "in1": scale}
    np.testing.assert_array_equal(run_ort(decompose_qonnx(proto), feeds), run_qonnx(proto, feeds))


def test_quant_runtime_bitwidth_is_refused_naming_the_node():
    proto = single_node_model("Quant", [np.float32(0.5), np.float32(0), ("input", np.zeros((), np.float32))],
                              dict(signed=1, narrow=0))
    with pytest.raises(ModelImportError, match=r"Quant node 'q0'.*bit width.*constant"):
        decompose_qonnx(proto)


def test_quant_missing_required_attribute_is_refused():
    proto = single_node_model("Quant", [np.float32(0.5), np.float32(0), np.float32(4)], dict(signed=1))
    with pytest.raises(ModelImportError, match="narrow"):
        decompose_qonnx(proto)


# -- BipolarQuant ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale_kind", ["tensor", "channel"])
def test_bipolar_quant_matches_qonnx(scale_kind):
    scale = SCALES[scale_kind]
    proto = single_node_model("BipolarQuant", [scale])
    x = boundary_inputs(scale, -1, 1, seed=2)
    expected = run_qonnx(proto, {"x": x})
    decomposed = decompose_qonnx(proto)
    np.testing.assert_array_equal(run_ort(decomposed, {"x": x}), expected)
    assert expected.reshape(-1)[0] == expected.reshape(-1)[1] > 0, "0 and -0 are +scale (x >= 0)"


def test_bipolar_quant_in_old_opset_uses_less_not():
    proto = single_node_model("BipolarQuant", [np.float32(0.5)], opset=11)
    x = boundary_inputs(np.float32(0.5), -1, 1, seed=3)
    decomposed = decompose_qonnx(proto)
    assert "GreaterOrEqual" not in [n.op_type for n in decomposed.graph.node]
    np.testing.assert_array_equal(run_ort(decomposed, {"x": x}), run_qonnx(proto, {"x": x}))


# -- Trunc -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["FLOOR", "ROUND", "CEIL"])
@pytest.mark.parametrize("signed,narrow", [(1, 0), (0, 0), (1, 1)])
def test_trunc_v2_matches_qonnx(mode, signed, narrow):
    scale, out_scale = np.float32(0.125), np.float32(1.0)  # trunc by 2**3
    proto = single_node_model("Trunc", [scale, np.float32(0), np.float32(8), out_scale, np.float32(4)],
                              dict(rounding_mode=mode, signed=signed, narrow=narrow), domain_version=2)
    x = boundary_inputs(scale, -140, 140, seed=4)
    np.testing.assert_array_equal(run_ort(decompose_qonnx(proto), {"x": x}), run_qonnx(proto, {"x": x}))


def test_trunc_v2_runtime_scales():
    scale, out_scale = np.float32(0.25), np.float32(2.0)
    proto = single_node_model("Trunc", [("input", scale), np.float32(0), np.float32(8), ("input", out_scale),
                                        np.float32(4)], dict(rounding_mode="FLOOR"), domain_version=2)
    x = boundary_inputs(scale, -140, 140, seed=5)
    feeds = {"x": x, "in1": np.asarray(scale), "in4": np.asarray(out_scale)}
    np.testing.assert_array_equal(run_ort(decompose_qonnx(proto), feeds), run_qonnx(proto, feeds))


@pytest.mark.parametrize("mode", ["FLOOR", "ROUND"])
def test_trunc_v1_matches_qonnx(mode):
    scale = np.float32(0.5)
    proto = single_node_model("Trunc", [scale, np.float32(0), np.float32(8), np.float32(5)],
                              dict(rounding_mode=mode), domain_version=1)
    x = boundary_inputs(scale, -140, 140, seed=6)
    np.testing.assert_array_equal(run_ort(decompose_qonnx(proto), {"x": x}), run_qonnx(proto, {"x": x}))


# -- through TVM (tvm_bnn's float path) -------------------------------------------------------------------------------

@pytest.mark.parametrize("op,consts,attrs", [
    ("Quant", [SCALES["channel"], np.float32(0), np.float32(2)], dict(signed=1, narrow=0)),
    ("Quant", [SCALES["tensor"], np.float32(1), np.float32(4)], dict(signed=0, narrow=0, rounding_mode="FLOOR")),
    ("Quant", [SCALES["tensor"], np.float32(0), np.float32(1)], dict(signed=1, narrow=1)),
    ("BipolarQuant", [SCALES["channel"]], {}),
])
def test_decomposed_ops_through_tvm_are_exact(op, consts, attrs):
    """TVM computes the decomposed ops with the same float operations: division by the scale is not turned into a
    multiplication by its reciprocal, and Round is half to even."""
    proto = single_node_model(op, consts, attrs)
    x = boundary_inputs(consts[0], -4, 16, seed=7)
    cm = tvm_bnn.compile(decompose_qonnx(proto), "x86", example_inputs=(x,), progress=False)
    np.testing.assert_array_equal(cm(x), run_qonnx(proto, {"x": x}))


def test_decomposed_ops_import_as_plain_relax_ops():
    """TVM's ONNX importer turns some ops (Clip) into opaque call_tir; the decomposition uses none of those, so the
    passes see every op of a quantizer."""
    from tvm_bnn.frontends import import_model

    for op, consts, attrs in [("Quant", [SCALES["channel"], np.float32(0), np.float32(2)], dict(signed=1, narrow=1)),
                              ("Quant", [SCALES["tensor"], np.float32(0), np.float32(8)],
                               dict(signed=0, narrow=0, rounding_mode="HALF_UP")),
                              ("BipolarQuant", [SCALES["tensor"]], {}),
                              ("Trunc", [SCALES["tensor"], np.float32(0), np.float32(8), np.float32(1.0),
                                         np.float32(4)], dict(rounding_mode="FLOOR"))]:
        proto = decompose_qonnx(single_node_model(op, consts, attrs))
        script = import_model(proto, (np.zeros(SHAPE, np.float32),)).mod["main"].script()
        assert "call_tir" not in script, f"{op} {attrs}:\n{script}"


# -- custom ops of other domains --------------------------------------------------------------------------------------

def test_unknown_domain_is_refused_naming_op_and_domain():
    proto = single_node_model("FancyQuant", [np.float32(0.5)], domain="com.example.ops", domain_version=1)
    with pytest.raises(ModelImportError) as info:
        check_domains(decompose_qonnx(proto))
    msg = str(info.value)
    assert "FancyQuant" in msg and "com.example.ops" in msg and "custom op" in msg and "opset" not in msg, msg


def test_qonnx_op_without_decomposition_is_refused():
    proto = single_node_model("MultiThreshold", [np.zeros((3, 2), np.float32)], domain=QONNX)
    with pytest.raises(ModelImportError, match=r"MultiThreshold.*QONNX custom op"):
        check_domains(decompose_qonnx(proto))


def test_standard_model_is_untouched():
    proto = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))
    assert decompose_qonnx(proto) is proto
    assert check_domains(proto) is proto


def test_import_refuses_custom_domain_with_a_clear_error(tmp_path):
    """Through tvm_bnn's ONNX frontend (needs the hook in tvm_bnn/frontends/onnx.py)."""
    proto = single_node_model("FancyQuant", [np.float32(0.5)], domain="com.example.ops", domain_version=1)
    with pytest.raises(ModelImportError) as info:
        tvm_bnn.analyse(proto, (np.zeros(SHAPE, np.float32),))
    msg = str(info.value)
    assert "FancyQuant" in msg and "com.example.ops" in msg and "lower opset" not in msg, msg


# -- a Brevitas QONNX export -----------------------------------------------------------------------------------------

class Small1W1A(torch.nn.Module):
    """float stem -> BN -> 1-bit act -> binary conv -> BN -> 1-bit act -> binary linear (Brevitas)."""

    def __init__(self):
        import brevitas.nn as qnn
        from brevitas.quant import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst

        super().__init__()
        self.stem = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.bn0 = torch.nn.BatchNorm2d(6)
        self.a0 = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst)
        self.conv = qnn.QuantConv2d(6, 13, 3, padding=1, bias=False, weight_quant=SignedBinaryWeightPerTensorConst)
        self.bn1 = torch.nn.BatchNorm2d(13)
        self.a1 = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst)
        self.fc = qnn.QuantLinear(13 * 5 * 5, 7, bias=False, weight_quant=SignedBinaryWeightPerTensorConst)

    def forward(self, x):
        y = self.a1(self.bn1(self.conv(self.a0(self.bn0(self.stem(x))))))
        return self.fc(y.flatten(1))


@pytest.fixture(scope="module")
def brevitas_qonnx(tmp_path_factory):
    from brevitas.export import export_qonnx

    torch.manual_seed(0)
    model = randomize_batchnorm(Small1W1A(), zero_gamma_channel=False)
    x = torch.randn(2, 3, 5, 5)
    path = str(tmp_path_factory.mktemp("qonnx") / "small.onnx")
    with torch.no_grad():
        model(x)  # Brevitas clamps the stored weights in place at the first call
        export_qonnx(model, x, export_path=path)
        expected = model(x).numpy()
    return onnx.load(path), x.numpy(), expected


def test_brevitas_qonnx_export_decomposes_and_matches(brevitas_qonnx):
    proto, x, expected = brevitas_qonnx
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    assert (QONNX, "BipolarQuant") in ops, ops
    decomposed = decompose_qonnx(proto)
    assert all(n.domain == "" for n in decomposed.graph.node)
    assert QONNX not in [o.domain for o in decomposed.opset_import]
    onnx.checker.check_model(decomposed)
    name = proto.graph.input[0].name
    got = run_ort(decomposed, {name: x})
    np.testing.assert_array_equal(got, run_qonnx(proto, {name: x}))  # QONNX's own execution, exactly
    assert_float_close(got, expected)  # Brevitas' eval output (sums of +-0.1 in another order)


def test_brevitas_qonnx_through_tvm_bnn(brevitas_qonnx):
    """The QONNX model compiles through tvm_bnn's ONNX frontend (needs the hook in tvm_bnn/frontends/onnx.py)."""
    proto, x, expected = brevitas_qonnx
    cm = tvm_bnn.compile(proto, "x86", example_inputs=(x,), progress=False)
    assert_float_close(cm(x), expected)
