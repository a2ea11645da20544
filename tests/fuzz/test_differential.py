"""Property-based differential testing (issue 6): random BNN architectures compiled by tvm_bnn vs PyTorch eager.

Every example is a random model (strategies.nets): independent branches of binary / float conv and dense layers,
BatchNorm (gamma < 0, == 0), pooling, residual adds, F.pad, each binarization form the passes recognise. It is
compiled, run, and every output compared:

* with PyTorch's own output (float32, the literal forms) when the model has no documented difference from the
  compiled semantics -- exactly for integer outputs (binary layers with +-1 weights), to float rounding otherwise;
* with the reference (float64, the compiled semantics: the tie rule sign(0) -> +1, exact two values) when it has
  one: a ``torch.sign``-based form that meets an exact 0 (PyTorch gives 0, README "Tie rule") or a straight-through
  form (PyTorch's +-1 is inexact, README "STE forms");

and the report is checked layer by layer: every layer meant to be binary is reported binarized, every other one is
reported float with the reason (input not binarized / weights not binary / zeros in the weights / an F.pad with one
of the activation's two values plus the conv's own zero padding: two padding values in one conv / an F.pad with a
value that is neither 0 nor one of the two).
Examples where a binarized value is within float rounding of its threshold (ambiguous by README's own terms) are
rejected. Forms: +-1, +-s (Brevitas), {0, 1}, {-1, 3}; x >= 0, x > 0, decreasing, per-channel thresholds; F.pad
with 0 or one of the two values; grouped convs (strategies.ACT_FORMS).
"""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, event, example, given, note, settings
from hypothesis.control import currently_in_test_context

import tvm_bnn

from ..conftest import assert_float_close, need
from .conftest import fuzz_examples
from .strategies import (BN, STE_FORMS, BinConv, BinDense, Branch, Elementwise, Fork, NetSpec, Pool, build,
                         coverage, evaluate, nets, open_bug)

REASON_KEYWORDS = {  # in order: the first that matches is a reason's category (the ONNX multiset comparison)
    # F.pad with a value that is neither 0 nor one of the activation's two values ("activation input is not
    # binarized: it is padded with 0.5, which is neither 0 nor one of its two values -1, 1")
    # a smooth function's rounding decides where the binarizer switches: refused ("where it switches depends on how
    # Tanh is rounded, which differs between libraries")
    "rounding": ("is rounded",),
    "bad_pad": ("neither 0 nor one of its",),  # "... of its two values -1, 1" / "... of its values -1, 0, 1" 
    # "activation input is (a float model input,) not binarized ..." / "where(...) is not of the form where(x >= 0,
    # 1, -1)" (a PReLU exports as a where)
    "float_input": ("not binarized", "is not of the form"),
    "float_weights": ("weights are not binary",),
    # F.pad with one of the activation's two values, then the conv's own zero padding
    "two_pads": ("two padding values",),
}


def _category(rec):
    if rec.binarized:
        return "binary"
    return next((k for k, words in REASON_KEYWORDS.items() if any(w in rec.reason for w in words)), rec.reason)


def check_report(report, layers, names=True):
    table = str(report)
    assert len(report) == len(layers), f"expected {len(layers)} conv2d/dense layers, report has:\n{table}"
    if not names:
        # ONNX: rows are in Relax program order, which need not be the module order; compare as multisets (the
        # names of ONNX rows are checked by test_regressions.py::test_onnx_report_names_match_their_layers)
        got = sorted(_category(r) for r in report)
        options = [(i.expect,) + ((i.alt,) if i.alt else ()) + i.maybe for i in layers]
        assert any(got == sorted(c) for c in itertools.product(*options)), f"expected {sorted(options)}\n{table}"
        return
    assert [r.name for r in report] == [info.name for info in layers], table
    for rec, info in zip(report, layers):
        if _category(rec) in info.maybe:  # may be constant to the analysis (strategies._maybe_constant)
            continue
        if info.expect == "binary":
            assert rec.binarized, f"layer {rec.name} should be binarized, reported float: {rec.reason!r}\n{table}"
            assert rec.reason == "", table
        else:
            assert not rec.binarized, f"layer {rec.name} ({info.expect}) should stay float\n{table}"
            keys = REASON_KEYWORDS[info.expect]
            assert any(k in rec.reason for k in keys), \
                f"layer {rec.name}: reason should say one of {keys}: {rec.reason!r}\n{table}"


def _outputs(y):
    if isinstance(y, (list, tuple)):
        return [np.asarray(v) for v in y]
    return [np.asarray(y)]


def compare(got, expected, exact, what):
    expected = np.asarray(expected, dtype=np.float32) if exact else np.asarray(expected)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    if exact:
        np.testing.assert_array_equal(got, expected, err_msg=what)
    else:
        try:
            assert_float_close(got, expected.astype(np.float32))
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from None


def compare_float_to_torch(got, torch_out, ref, what, rtol=1e-5):
    """A float output against PyTorch's, to float rounding: rtol 1e-5 (floor scaled to the output), widened by
    PyTorch's own float32 error measured against the float64 reference ``ref`` (a sum of hundreds of products that
    cancels: found by the long fuzz run, where PyTorch was 1.1e-5 from float64 and the compiled model 6e-6). The
    reference itself must be the same function: PyTorch within 1e-4 of it (harness self-check)."""
    t, r = np.asarray(torch_out, np.float64), np.asarray(ref, np.float64)
    assert got.shape == t.shape, (what, got.shape, t.shape)
    scale = max(1.0, float(np.max(np.abs(r)))) if r.size else 1.0
    np.testing.assert_allclose(t, r, rtol=1e-4, atol=1e-4 * scale, err_msg=f"harness self-check: {what}")
    own = np.abs(t - r)
    err = np.abs(got.astype(np.float64) - t)
    bad = err > rtol * scale + rtol * np.abs(t) + 2 * own
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} outside float rounding; worst at "
                           f"{np.unravel_index(np.argmax(err - 2 * own), err.shape)}: compiled "
                           f"{got.flat[np.argmax(err - 2 * own)]!r}, PyTorch {t.flat[np.argmax(err - 2 * own)]!r}, "
                           f"float64 {r.flat[np.argmax(err - 2 * own)]!r}")


def _note(text):
    if currently_in_test_context():
        note(text)


def to_onnx(built):
    """The model as ONNX (TorchScript exporter: torch.sign -> Sign, the STE forms -> Sign/Sub/Add, BN ...)."""
    import io

    import onnx

    f = io.BytesIO()
    torch.onnx.export(built.net, tuple(built.inputs), f, dynamo=False, opset_version=17)
    return onnx.load_from_string(f.getvalue())


def check_model(spec, target, frontend="torch", fits=None):
    """``fits(cm)``: False rejects the example (a model too large for the board)."""
    built = build(spec)
    assume(open_bug(spec, built) is None)  # a known, open bug (test_regressions.py): look for others
    ref = evaluate(built)
    assume(ref.near_ties == 0)
    if currently_in_test_context():
        for tag in coverage(spec, built):
            event(tag)
    _note(f"zeros at binarizations: {ref.zeros}, of them at torch.sign forms: {ref.tie_zeros}")
    model = to_onnx(built) if frontend == "onnx" else built.net
    cm = tvm_bnn.compile(model, target, example_inputs=tuple(built.inputs), progress=False)
    _note(str(cm.report))
    if fits is not None:
        assume(fits(cm))
    verify(built, ref, cm, onnx=frontend == "onnx")


def verify(built, ref, cm, onnx=False):
    """The report and every output of the compiled model ``cm`` against PyTorch / the reference."""
    check_report(cm.report, built.layers, names=not onnx)
    got = _outputs(cm(*built.inputs))
    assert len(got) == len(ref.ref_out) == len(built.exact)
    ste = bool(built.forms & STE_FORMS)
    faithful = ref.tie_zeros == 0 and not ste  # PyTorch's result is the compiled semantics
    for i, (g, t, r, exact) in enumerate(zip(got, ref.torch_out, ref.ref_out, built.exact)):
        if faithful and exact:
            compare(g, t, exact, f"output {i} vs PyTorch")
            compare(t, r, exact, f"harness self-check: output {i}, PyTorch vs float64 reference")
        elif faithful:
            compare_float_to_torch(g, t, r, f"output {i} vs PyTorch")
        else:
            compare(g, r, exact, f"output {i} vs the reference (tie rule / exact STE +-1)")
            if ste and ref.zeros == 0:  # PyTorch's STE +-1 carries a rounding into the sums
                scale = max(1.0, float(np.max(np.abs(r)))) if r.size else 1.0
                np.testing.assert_allclose(g, t, rtol=1e-3, atol=1e-3 * scale, err_msg=f"output {i} vs PyTorch (STE)")


def _epilogue_example(op, act="sign"):
    """binary conv -> BN -> ``op`` -> binarize -> binary conv: the epilogue the threshold fusion evaluates (monotone,
    hidden sign with relu/sigmoid, or non-monotone with silu: left unfused)."""
    return NetSpec([Branch(2, (7, 9, 6), [
        BinConv(cout=19, kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding=(1, 1), act=act, bn=True, seed=11),
        Elementwise(op, seed=12),
        BinConv(cout=5, kernel=(3, 3), stride=(2, 1), dilation=(1, 2), padding=(1, 2), act=act, seed=13)],
        input_seed=14)])


def _values_example():
    """Brevitas +-0.75 padded with +0.75 (constant bits, no conv padding) -> a grouped conv binarized by sign(x - t)
    with per-channel t in {0, +-2, +-3, generic} on exact multiples of 0.75 (exact ties: sign(0) -> +1) -> a
    per-channel strict {0, 1} dense; and a {0, 1} conv after a max-pool, padded with 0 by F.pad and by the conv (its
    low value both times), then x >= t padded with -1 and zero-padded by the conv (refused: two padding values)."""
    return NetSpec([Branch(2, (6, 9, 7), [
        BinConv(cout=12, kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding=(0, 0), fpad=(1, 1, 2, 0),
                fpad_fill=1, act="brevitas", seed=31),
        BinConv(cout=9, kernel=(3, 3), stride=(1, 2), dilation=(1, 1), padding=(1, 1), act="sign_sub_t", groups=3,
                seed=32),
        BinDense(out=7, act="gt01_t", flatten_first=False, bn=True, seed=33)], input_seed=34),
        Branch(1, (4, 7, 10), [
            BinConv(cout=9, kernel=(2, 3), stride=(1, 1), dilation=(1, 2), padding=(1, 2), act="ge01",
                    pool=(2, 1, 1), fpad=(1, 0, 0, 1), fpad_fill=-1, tap=True, seed=35),
            BinConv(cout=6, kernel=(3, 1), stride=(2, 1), dilation=(1, 1), padding=(1, 0), act="where_ge_t",
                    fpad=(0, 2, 1, 0), fpad_fill=-1, groups=3, bn=True, seed=36)], input_seed=37, input_zeros=0.2)])


def _pad_example():
    """where(x >= 0, ones_like, -ones_like) padded with -1, then zero-padded by the conv: refused (two padding
    values, stays float: exact integers); a decreasing -sign(x) of them (ties: -sign(0) -> -1) before a max-pool
    (the test flips: packed after the pool); a grouped {-1, 3} conv with zero padding (mid *
    the valid taps per pixel); where(x < 0, 1, -1) padded with +1; Brevitas with a random scale -> BN -> x > 0; {0, 1}
    padded with 0.75 (neither value: refused, stays float) -> a grouped zero-padded {-1, 3} conv; replicate pads
    (a gather of the bits) of {0, 1} and of per-channel sign(x - t), zero-padded by the conv too."""
    return NetSpec([Branch(1, (5, 9, 9), [
        BinConv(cout=6, kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding=(1, 1), fpad=(0, 1, 1, 0),
                fpad_fill=-1, act="where_ones", seed=41),
        BinConv(cout=10, kernel=(2, 3), stride=(1, 1), dilation=(1, 1), padding=(0, 1), act="neg_sign",
                pool=(2, 2, 1), seed=42),
        BinConv(cout=8, kernel=(3, 3), stride=(1, 1), dilation=(2, 1), padding=(1, 1), act="where_m1_3", groups=2,
                bn=True, seed=43),
        BinConv(cout=4, kernel=(1, 1), stride=(1, 1), dilation=(1, 1), padding=(0, 0), fpad=(1, 0, 0, 1),
                fpad_fill=1, act="where_lt", wform="stored_alpha", seed=44)], input_seed=45),
        Branch(2, (40,), [BinDense(out=33, act="brevitas_rand", seed=46), BN(47),
                          BinDense(out=5, act="where_gt", seed=48)], input_seed=49),
        Branch(2, (3, 5, 6), [
            BinConv(cout=4, kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding=(0, 1), fpad=(1, 0, 2, 1),
                    fpad_fill=2, act="ge01", seed=50),
            BinConv(cout=6, kernel=(1, 3), stride=(1, 1), dilation=(1, 1), padding=(0, 1), act="where_m1_3",
                    groups=2, seed=51)], input_seed=52, input_zeros=0.2),
        Branch(1, (4, 6, 7), [
            BinConv(cout=7, kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding=(1, 1), fpad=(2, 1, 0, 1),
                    fpad_fill=3, act="ge01", seed=53),
            BinConv(cout=5, kernel=(3, 2), stride=(2, 1), dilation=(1, 1), padding=(0, 1), fpad=(1, 1, 1, 2),
                    fpad_fill=3, act="sign_sub_t", bn=True, seed=54)], input_seed=55)])


# explicit examples run on top of the generated ones: forms the generator draws rarely
@example(spec=_values_example())
@example(spec=_pad_example())
@example(spec=_epilogue_example("relu", act="gt01_t"))
@example(spec=_epilogue_example("silu"))
@example(spec=_epilogue_example("relu", act="where_ge"))
@example(spec=_epilogue_example("sigmoid", act="ste_add"))
@example(spec=NetSpec([Branch(1, (33, 11, 13), [
    Fork(cout=65, kernel=3, act="hardtanh_sign", wform="xnor_mean", seed=21),
    Pool("max", 3, 2, 1, ceil_mode=True),
    BinDense(out=10, act="reactnet_ste", wform="stored_alpha", bn=True, seed=22, matmul=True)], input_seed=23),
    Branch(3, (65,), [BN(24), BinDense(out=129, act="tvm_bnn.nn", wform="xnor", seed=25)], input_seed=26)]))
@given(spec=nets())
@settings(max_examples=fuzz_examples("x86"))
def test_differential_x86(spec):
    check_model(spec, "x86")


@example(spec=_values_example())
@example(spec=_pad_example())
@given(spec=nets(max_layers=3))
@settings(max_examples=fuzz_examples("onnx"))
def test_differential_onnx_x86(spec):
    """The same models through ONNX (Sign, Where, the STE forms as Sub/Add, BatchNormalization ...)."""
    pytest.importorskip("onnx")
    check_model(spec, "x86", frontend="onnx")


@example(spec=_values_example())
@example(spec=_pad_example())
@given(spec=nets(max_branches=1, max_layers=3, max_batch=2))
@settings(max_examples=fuzz_examples("c"))
def test_differential_c(spec):
    check_model(spec, "c")


@pytest.fixture(scope="module")
def aarch64_tools():
    from tvm_bnn.targets import qemu

    arch = qemu.linux_arch("aarch64")
    need(arch.cc, arch.qemu)


# the emulated targets check their tools in a module fixture (skip, or fail under CI=true, before any example), so
# that the test itself is hypothesis' and --hypothesis-show-statistics counts its examples
@example(spec=_values_example())
@example(spec=_pad_example())
@given(spec=nets(max_branches=1, max_layers=3, max_batch=2))
@settings(max_examples=fuzz_examples("aarch64"))
def test_differential_aarch64(aarch64_tools, spec):
    check_model(spec, "aarch64")


@pytest.fixture(scope="module")
def cortexm_tools():
    need("arm-none-eabi-gcc", "qemu-system-arm")


@example(spec=_values_example())
@example(spec=_pad_example())
@given(spec=nets(max_branches=1, max_layers=3, max_batch=2))
@settings(max_examples=fuzz_examples("cortexm"))
def test_differential_cortexm(cortexm_tools, spec):
    """Firmware for an emulated Cortex-M4 board (arm-none-eabi-gcc, qemu-system-arm mps2-an386, 4 MB flash and
    RAM): each call of the compiled model builds a firmware holding the input and runs it. A model whose float
    weights take more than 3/4 of the board's flash is not one for this board (the link fails: "region `FLASH'
    overflowed"): rejected."""
    _check_on_board(spec, "cortex-m4")


@example(spec=_pad_example())
@given(spec=nets(max_branches=1, max_layers=3, max_batch=2))
@settings(max_examples=fuzz_examples("cortexm55"))
def test_differential_cortexm55(cortexm_tools, spec):
    """The same on the emulated Cortex-M55 (qemu-system-arm mps3-an547, 512 KB flash and RAM), whose binary kernels
    count 4 output channels per Helium vector (schedules/cortexm_mve.py)."""
    _check_on_board(spec, "cortex-m55")


def _check_on_board(spec, board):
    from tvm_bnn.targets import qemu

    net = build(spec).net
    float_bytes = 4 * sum(t.numel() for t in itertools.chain(net.parameters(), net.buffers()))
    ram = qemu.board(board).ram_kb * 1024
    assume(float_bytes <= qemu.board(board).flash_kb * 1024 * 3 // 4)

    def fits(cm):  # the arena, the firmware's input and output copies, 64 KB for the stack and the rest
        b = cm.bundle
        io = sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in b.inputs + b.outputs)
        return b.arena_bytes + 2 * io + (64 << 10) <= ram

    check_model(spec, board, fits=fits)


torch.set_num_threads(1)  # the machine is shared; TVM_NUM_THREADS is set by tests/conftest.py


# ---- the checks can fail: a compiled model that is wrong by one weight sign / one layer's report is caught ----

def _mutation_spec(act):
    return NetSpec([Branch(2, (5, 7, 6), [
        BinConv(cout=9, kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding=(1, 1), act=act, wform="sign", bn=True,
                seed=1),
        BinConv(cout=4, kernel=(3, 2), stride=(2, 1), dilation=(1, 1), padding=(1, 0), act=act, wform="sign",
                seed=2)], input_seed=3)])


@pytest.mark.parametrize("act", ["where_ge", "sign", "ste_add", "brevitas", "ge01", "where_m1_3", "neg_sign",
                                 "sign_sub_t"])
def test_harness_detects_a_wrong_weight_sign(act):
    built = build(_mutation_spec(act))
    cm = tvm_bnn.compile(built.net, "x86", example_inputs=tuple(built.inputs), progress=False)
    verify(built, evaluate(built), cm)  # the right model passes
    with torch.no_grad():
        built.net.branches[0][1].w[0, 0, 0, 0] *= -1  # PyTorch's model now differs from the compiled one
    with pytest.raises(AssertionError):
        verify(built, evaluate(built), cm)


def test_harness_detects_a_wrong_report():
    built = build(_mutation_spec("where_ge"))
    cm = tvm_bnn.compile(built.net, "x86", example_inputs=tuple(built.inputs), progress=False)
    check_report(cm.report, built.layers)
    cm.report[1].binarized, cm.report[1].reason = False, "some reason"  # silently float
    with pytest.raises(AssertionError, match="should be binarized"):
        check_report(cm.report, built.layers)
    built.layers[1].expect = "two_pads"  # float, but for another reason than the one expected
    with pytest.raises(AssertionError, match="reason should say"):
        check_report(cm.report, built.layers)
