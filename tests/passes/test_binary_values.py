"""The analysis of binarized activations (passes/binary_values.py) against TVM's own float evaluation.

Each case builds a Relax function ``conv2d(f(x), sign weights)`` with a binarizer ``f`` written the way some exporter
writes it, compiles it with tvm_bnn (which replaces ``f`` by a threshold test on ``x``) and with plain TVM (which
evaluates ``f`` in float32 op by op), and feeds both inputs that sit exactly on, and one float either side of, every
threshold the analysis found. The integer conv outputs must agree exactly.
"""
import numpy as np
import pytest
import tvm
from tvm import relax

import tvm_bnn
from tvm_bnn.passes.binarizers import binary_source
from tvm_bnn.passes.binary_values import BinaryTensor, first_true, from_key, negate_test, next_up, to_key
from tvm_bnn.passes.graph import Graph

N, C, H, W = 2, 5, 4, 3
RNG = np.random.default_rng(7)
PER_CHANNEL = np.array([0.3, -0.0, -1.25, 0.5, 2.0], np.float32).reshape(1, C, 1, 1)
PER_PIXEL = RNG.normal(size=(1, C, H, W)).astype(np.float32)
GAMMA = np.array([0.7, -1.3, 0.0, 2.5, -0.01], np.float32).reshape(1, C, 1, 1)


def _c(v):
    return relax.const(np.asarray(v, np.float32))


class _Sign:
    """``sign`` as the model writes it, or, for the reference, with the tie rule the compiled model applies
    (README, "Tie rule"): sign(0) = +1. Inputs on a threshold often give exactly 0 before a sign."""

    tie_rule = False

    def __call__(self, bb, v):
        if self.tie_rule:
            return bb.emit(relax.op.where(bb.emit(relax.op.greater_equal(v, _c(0.0))), _c(1.0), _c(-1.0)))
        return bb.emit(relax.op.sign(v))


SIGN = _Sign()


def _brevitas(bb, x, s=0.75):
    """Brevitas' 1-bit activation: clamp as where(x > s, s, x) / where(x < -s, -s, x), then (x >= 0) * 2 - 1, * s."""
    y = bb.emit(relax.op.where(bb.emit(relax.op.greater(x, _c(s))), _c(s), x))
    y = bb.emit(relax.op.where(bb.emit(relax.op.less(y, _c(-s))), _c(-s), y))
    b = bb.emit(relax.op.astype(bb.emit(relax.op.greater_equal(y, _c(0.0))), "float32"))
    return bb.emit(relax.op.multiply(bb.emit(relax.op.subtract(bb.emit(relax.op.multiply(b, _c(2.0))), _c(1.0))),
                                     _c(s)))


def _bn_sign(bb, x):
    """A BatchNorm (eval) folded in front of a sign, gamma of both signs and 0 (a constant channel)."""
    y = bb.emit(relax.op.divide(bb.emit(relax.op.subtract(x, _c(PER_CHANNEL))), _c(np.float32(0.37))))
    return SIGN(bb, bb.emit(relax.op.add(bb.emit(relax.op.multiply(y, _c(GAMMA))), _c(0.1))))


def _quant_1bit(bb, x, scale=0.5):
    """QONNX Quant, 1 bit signed: clip(round(x / s), -1, 0) * s: the values {-s, 0}."""
    q = bb.emit(relax.op.clip(bb.emit(relax.op.round(bb.emit(relax.op.divide(x, _c(scale))))), -1.0, 0.0))
    return bb.emit(relax.op.multiply(q, _c(scale)))


def _abs_by_where(bb, x):
    """|x| written as a where (not monotone), then a threshold: the where is left to TVM, the test above it binarized."""
    a = bb.emit(relax.op.where(bb.emit(relax.op.greater(x, _c(0.0))), x, bb.emit(relax.op.negative(x))))
    return bb.emit(relax.op.where(bb.emit(relax.op.greater(a, _c(1.0))), _c(1.0), _c(-1.0)))


FORMS = {
    "ge_per_channel": lambda bb, x: bb.emit(relax.op.where(bb.emit(relax.op.greater_equal(x, _c(PER_CHANNEL))),
                                                           _c(1.0), _c(-1.0))),
    "gt_per_channel": lambda bb, x: bb.emit(relax.op.where(bb.emit(relax.op.greater(x, _c(PER_CHANNEL))),
                                                           _c(1.0), _c(-1.0))),
    "lt_decreasing": lambda bb, x: bb.emit(relax.op.where(bb.emit(relax.op.less(x, _c(0.25))), _c(1.0), _c(-1.0))),
    "neg_sign": lambda bb, x: bb.emit(relax.op.negative(SIGN(bb, x))),
    "brevitas": _brevitas,
    "bn_sign": _bn_sign,
    "zero_one": lambda bb, x: bb.emit(relax.op.astype(bb.emit(relax.op.greater_equal(x, _c(-0.5))), "float32")),
    "quant_1bit": _quant_1bit,
    "sign_of_shift_clip": lambda bb, x: SIGN(bb, bb.emit(relax.op.clip(
        bb.emit(relax.op.subtract(x, _c(0.1))), -1.0, 1.0))),
    "scaled_negative": lambda bb, x: bb.emit(relax.op.multiply(SIGN(bb, x), _c(-0.5))),
    "abs_by_where": _abs_by_where,
    "overflowing_bn": lambda bb, x: SIGN(bb, bb.emit(relax.op.multiply(
        bb.emit(relax.op.subtract(x, _c(1e-3))), _c(1e30)))),
    "per_pixel": lambda bb, x: bb.emit(relax.op.where(bb.emit(relax.op.greater(
        x, _c(PER_PIXEL))), _c(1.0), _c(-1.0))),
}


def _module(form, padding=1, weights=None, tie_rule=False):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((N, C, H, W), "float32"))
    weights = np.sign(RNG.normal(size=(6, C, 3, 3))).astype(np.float32) if weights is None else weights
    SIGN.tie_rule = tie_rule
    with bb.function("main", [x]):
        with bb.dataflow():
            a = FORMS[form](bb, x)
            out = bb.emit_output(relax.op.nn.conv2d(a, _c(weights), padding=padding))
        bb.emit_func_output(out)
    SIGN.tie_rule = False
    return bb.get(), a


def _source(mod, a) -> BinaryTensor:
    src = binary_source(Graph(mod["main"]), a)
    assert isinstance(src, BinaryTensor), src
    return src


def _edge_inputs(src: BinaryTensor) -> np.ndarray:
    """Random inputs with, per element, the threshold itself or a float either side of it."""
    x = RNG.normal(size=(N, C, H, W)).astype(np.float32) * 2
    t = np.broadcast_to(src.threshold * np.where(src.scale == 0, 1, src.scale), (N, C, H, W))
    pick = RNG.integers(0, 4, size=x.shape)
    edge = np.stack([t, np.nextafter(t, np.float32(-np.inf)), np.nextafter(t, np.float32(np.inf))])
    return np.where(pick < 3, np.take_along_axis(edge, np.minimum(pick, 2)[None], 0)[0], x).astype(np.float32)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_binarized_exactly_as_tvm_evaluates_it(form):
    weights = np.sign(RNG.normal(size=(6, C, 3, 3))).astype(np.float32)
    mod, a = _module(form, weights=weights)
    src = _source(mod, a)
    ex = tvm.compile(_module(form, weights=weights, tie_rule=True)[0], target="llvm")
    reference = relax.VirtualMachine(ex, tvm.cpu())
    cm = tvm_bnn.compile(mod, "x86", progress=False)
    assert cm.report[0].binarized, str(cm.report)
    for _ in range(3):
        x = _edge_inputs(src)
        np.testing.assert_array_equal(cm(x), reference["main"](tvm.runtime.tensor(x)).numpy())


def test_thresholds_are_the_exact_switching_points():
    mod, a = _module("gt_per_channel")
    src = _source(mod, a)
    # x > c is x >= the next float after c
    np.testing.assert_array_equal(src.threshold[0, :, 0, 0], np.nextafter(PER_CHANNEL.reshape(-1),
                                                                              np.float32(np.inf)))
    mod, a = _module("ge_per_channel")
    src = _source(mod, a)
    assert np.all(src.scale == 1)
    np.testing.assert_array_equal(src.threshold[0, :, 0, 0], np.where(PER_CHANNEL == 0, 0, PER_CHANNEL).reshape(C))
    assert (src.low, src.high) == (-1.0, 1.0)


def test_values_and_direction():
    src = _source(*_module("brevitas"))
    assert (src.low, src.high) == (-0.75, 0.75)
    src = _source(*_module("scaled_negative"))  # -0.5 * sign(x): the bit of +0.5 is x < 0
    assert (src.low, src.high) == (-0.5, 0.5) and np.all(src.scale == -1)
    src = _source(*_module("quant_1bit"))
    assert (src.low, src.high) == (-0.5, 0.0)
    src = _source(*_module("bn_sign"))
    assert set(np.unique(src.scale)) == {-1.0, 0.0, 1.0}  # gamma < 0, == 0, > 0


@pytest.mark.parametrize("build,reason", [
    (lambda bb, x: bb.emit(relax.op.clip(bb.emit(relax.op.round(x)), -4.0, 4.0)),  # 9 levels: more than 3 bits
     "it takes many values (from -4 to 4), not two (nor up to 8 levels, computed by bit planes)"),
    (lambda bb, x: bb.emit(relax.op.where(bb.emit(relax.op.greater(x, _c(0.0))), x, bb.emit(relax.op.negative(x)))),
     "it is a float tensor computed by a Where of greater(x, 0), x and neg(x)"),
    (lambda bb, x: bb.emit(relax.op.add(bb.emit(relax.op.multiply(x, x)), x)),  # x^2 + x: falls, then rises
     "an Add of mul(x, x) with x is not monotone in x"),
    (lambda bb, x: bb.emit(relax.op.astype(bb.emit(relax.op.logical_and(bb.emit(relax.op.greater(x, _c(-1.0))),
                                                                        bb.emit(relax.op.less(x, _c(1.0))))),
                                           "float32")), "it switches twice: at -1 and at 1"),
    (lambda bb, x: bb.emit(relax.op.sign(bb.emit(relax.op.nn.relu(x)))), None),  # {0, 1}: binarized
    (lambda bb, x: bb.emit(relax.op.multiply(bb.emit(relax.op.sign(x)), _c(PER_CHANNEL + 1))),
     "scale must be one per tensor"),
    (lambda bb, x: bb.emit(relax.op.nn.relu(x)), "it is a float tensor computed by a Relu of x, x = the model input 'x': it takes many values (from 0 to"),
    (lambda bb, x: x, "model input 'x'"),
])
def test_refusals_say_why(build, reason):
    FORMS["_case"] = build
    try:
        mod, a = _module("_case")
    finally:
        del FORMS["_case"]
    src = binary_source(Graph(mod["main"]), a)
    if reason is None:
        assert isinstance(src, BinaryTensor) and (src.low, src.high) == (0.0, 1.0), src
        return
    assert isinstance(src, str) and reason in src, src


def test_float_order_keys_and_bisection():
    values = np.array([-np.float32(3e38), -1.5, -0.0, 0.0, 1e-45, 2.0, 3e38], np.float32)
    keys = to_key(values)
    assert np.all(np.diff(keys[[0, 1, 2, 4, 5, 6]]) > 0) and keys[2] == keys[3]
    np.testing.assert_array_equal(from_key(keys)[[0, 1, 4, 5, 6]], values[[0, 1, 4, 5, 6]])
    t = first_true(lambda k: from_key(k) >= np.float32(0.3), to_key(-1.0), to_key(1.0))
    assert from_key(t) == np.float32(0.3)


def test_negated_test_is_the_complement():
    x = np.concatenate([RNG.normal(size=200), [0.0, -0.0, 0.25, np.nextafter(0.25, 1)]]).astype(np.float32)
    scale = np.array([1, -1, 0, 0, 1], np.float32)[:, None]
    thr = np.array([0.25, -0.25, 0, 1, -0.0], np.float32)[:, None]
    s2, t2 = negate_test(scale, thr)
    np.testing.assert_array_equal(x * s2 >= t2, ~(x * scale >= thr))


def test_staircase_is_a_level_tensor_with_exact_thresholds():
    """clip(round(x), -1, 1): three levels, thermometer planes switching exactly at -0.5 and 0.5 (ties to even:
    round(-0.5) = -0, round(0.5) = 0), so x >= -0.5 and x > 0.5."""
    from tvm_bnn.passes.binary_values import LevelTensor

    FORMS["_case"] = lambda bb, x: bb.emit(relax.op.clip(bb.emit(relax.op.round(x)), -1.0, 1.0))
    try:
        mod, a = _module("_case")
    finally:
        del FORMS["_case"]
    src = binary_source(Graph(mod["main"]), a)
    assert isinstance(src, LevelTensor) and (src.lo, src.step, src.levels, src.bits) == (-1.0, 1.0, 3, 2)
    planes = src.planes()
    assert [(p.low, p.high) for p in planes] == [(-1.0, 0.0), (0.0, 1.0)]
    np.testing.assert_array_equal(planes[0].threshold, np.float32(-0.5))
    np.testing.assert_array_equal(planes[1].threshold, next_up(np.float32(0.5)))
    assert np.all(planes[0].scale == 1) and np.all(planes[1].scale == 1)


@pytest.mark.parametrize("pad_level", [None, 0, 1, 2, 3])
def test_four_levels_are_two_parity_planes_that_sum_to_each_level(pad_level):
    """4 levels take 2 planes in the binary code (the thermometer would take 3): plane b's bit is the XOR of the
    thermometer steps where bit b of the level changes; the planes' values sum to every level, and a padding value
    that is a level pads each plane with its bit of that level."""
    from tvm_bnn.passes.binary_values import BinaryTensor, LevelTensor, ParityPlane

    lo, step = -0.75, 0.5
    x = np.linspace(-2, 2, 41, dtype=np.float32)[None]
    thresholds = [np.full((1, 1), t, np.float32) for t in (-1.0, 0.0, 1.0)]
    pad = None if pad_level is None else ([(0, 0), (0, 0), (1, 1), (1, 1)], lo + step * pad_level)
    src = LevelTensor(None, [np.ones((1, 1), np.float32)] * 3, thresholds, lo, step, pad=pad)
    planes = src.planes()
    assert len(planes) == 2 and all(isinstance(p, ParityPlane) for p in planes)
    level = sum((x >= t).astype(int) for t in thresholds)
    total = 0.0
    for p in planes:
        assert all(isinstance(t, BinaryTensor) for t in p.tests)
        bit = np.logical_xor.reduce([x * t.scale >= t.threshold for t in p.tests])
        total = total + np.where(bit, p.high, p.low)
    np.testing.assert_array_equal(total, lo + step * level)
    if pad_level is not None:
        assert sum(p.pad[1] for p in planes) == lo + step * pad_level
        assert all(p.pad[1] in (p.low, p.high) for p in planes)


@pytest.mark.parametrize("mode,indices,expected", [
    ("clip", [-1, 0, W + 2], [0, 0, W - 1]),  # clamped, as TVM's take computes
    ("wrap", [-1, 0, W + 2], [W - 1, 0, 2]),
    ("fast", [W - 1, 0, 2], [W - 1, 0, 2]),
    ("fast", [-1, 0, 2], None),  # out of range in fast mode: undefined in TVM, not taken for a gather of bits
])
def test_gather_of_bits_follows_takes_index_mode(mode, indices, expected):
    """A ``take`` with constant indices gathers the bits the way TVM's take gathers the floats, per its mode."""
    from tvm_bnn.passes.binarizers import Gather

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((N, C, H, W), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            sign = bb.emit(relax.op.where(bb.emit(relax.op.greater_equal(x, _c(0.0))), _c(1.0), _c(-1.0)))
            a = bb.emit(relax.op.take(sign, relax.const(np.array(indices, np.int64)), axis=3, mode=mode))
            out = bb.emit_output(relax.op.nn.conv2d(a, _c(np.ones((2, C, 1, 1), np.float32))))
        bb.emit_func_output(out)
    src = binary_source(Graph(bb.get()["main"]), a)
    if expected is None:
        assert isinstance(src, str), src
    else:
        assert isinstance(src, BinaryTensor), src
        assert src.post == [Gather(3, tuple(expected))]
