"""schedules/cortexm.py: the M-profile form of our binary conv2d / dense kernels (byte-count accumulation, 32-bit
halves, channel blocks, 32-bit bit gathering) as the C bundle builds them, run on the emulated Cortex-M4 and on the
host, bit-exact against the numpy references of tvm_bnn/ops.

A missing toolchain skips these tests, except under CI=true, where it fails them (clang is optional everywhere).
"""
import json
import re

import numpy as np
import pytest
from tvm import te

from tvm_bnn.ops import binary_conv2d, binary_dense, bitpack, epilogue, ternary_conv2d
from tvm_bnn.passes.kernels import TE_BUILDERS
from tvm_bnn.schedules import cortexm
from tvm_bnn.targets.c_codegen import generate_c, harness_main

from .test_bare_metal_kernels import pm1, run_everywhere


def kernel_sources(op, params, inputs, block_size=None, check_bytesum=True, mve=False):
    """The kernel as the bundle makes it (TE of the op -> cortexm.build_kernel -> C) + a main running it once."""
    phs = [te.placeholder(a.shape, str(a.dtype), name=n) for n, a in inputs]
    func = te.create_prim_func(phs + [TE_BUILDERS[op](params)(*phs)])
    func = func.with_attr("tvm_bnn.op", op).with_attr("tvm_bnn.params", json.dumps(params))
    src = generate_c({"kernel": cortexm.build_kernel(func, op, params, block_size, mve=mve)})
    if check_bytesum and not mve:
        assert "tvm_bnn_bytesum(" in src.code  # the M-profile form, not the generic one
    kernel = src.kernels["kernel"]
    out = kernel.params[len(inputs)]
    assert not out.scratch and all(p.readonly for p in kernel.params[:len(inputs)])
    scratch = [f"s_{p.name}" if p.scratch else p.name for p in kernel.params]
    main = harness_main(src, [("kernel", scratch)], dict(inputs), [out.name])
    return {"kernels.c": src.code, "main.c": main}, out, src


def conv_params(c, kernel, strides, padding, dilation=(1, 1)):
    return dict(in_channels=c, kernel=list(kernel), strides=list(strides), padding=list(padding),
                dilation=list(dilation))


CONV_CASES = [
    # C, O, H, W, kernel, strides, padding (t, l, b, r), dilation
    (32, 8, 6, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # 32-bit halves, nibbles over a kernel row
    (3, 5, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (64, 6, 5, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # full words, one byte group of 9 words
    (65, 7, 7, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),  # 2 words per pixel: a byte group per kernel row
    (65, 65, 6, 5, (3, 2), (2, 1), (1, 0, 2, 1), (1, 1)),
    (330, 3, 4, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # 6 words per pixel: groups of 9 words of a row
    (40, 4, 7, 7, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),  # dilation
    (20, 6, 6, 7, (5, 1), (1, 1), (2, 0, 2, 0), (1, 1)),  # 32-bit halves, 5 rows of one word
    (3, 3, 5, 5, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),  # no padding: no pad_adjust
]


@pytest.mark.parametrize("c,o,h,w,kernel,strides,padding,dilation", CONV_CASES)
def test_conv2d_float_output(tmp_path, rng, c, o, h, w, kernel, strides, padding, dilation):
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation)
    x, wt = pm1(rng, (1, c, h, w)), pm1(rng, (o, c) + kernel)
    scale = rng.uniform(0.1, 2, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    expected = epilogue.float_reference(binary_conv2d.reference_dot(x, wt, geo), scale, bias, channel_axis=1)
    sources, out, _ = kernel_sources("binary_conv2d", conv_params(c, kernel, strides, padding, dilation), [
        ("xp", bitpack.reference_nchw(x)), ("wp", binary_conv2d.pack_weights(wt)), ("scale", scale), ("bias", bias)])
    run_everywhere(tmp_path, sources, out, expected)


@pytest.mark.parametrize("c,o,h,w,kernel,strides,padding,dilation", CONV_CASES)
def test_ternary_conv2d(tmp_path, rng, c, o, h, w, kernel, strides, padding, dilation):
    """Ternary filters as sign and mask words, ``(x ^ s) & m`` counted in the byte-count form; zero padding in
    the even cases, +1 padding (a constant bit: no correction) in the odd ones."""
    pad_value = 0 if c % 2 == 0 else 1
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation, pad_value)
    x = pm1(rng, (1, c, h, w))
    wt = rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), (o, c) + kernel, p=[0.35, 0.3, 0.35])
    scale = rng.uniform(0.1, 2, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    expected = epilogue.float_reference(ternary_conv2d.reference_dot(x, wt, geo), scale, bias, channel_axis=1)
    wp = ternary_conv2d.pack_weights(wt)
    params = dict(conv_params(c, kernel, strides, padding, dilation), pad_value=pad_value)
    sources, out, _ = kernel_sources("ternary_conv2d", params, [
        ("xp", bitpack.reference_nchw(x)), ("wp", wp), ("scale", scale), ("bias", bias),
        ("corr", ternary_conv2d.correction_table(wp, geo, (h, w)))])
    run_everywhere(tmp_path, sources, out, expected)


@pytest.mark.parametrize("shifts,pad_bits", [((0, 0), (1, -1)), ((0, 1), (0, 1)), ((0, 1, 2), (0, 1, -1))])
@pytest.mark.parametrize("c,o,h,w,kernel,strides,padding,dilation", [CONV_CASES[i] for i in (0, 2, 3, 6)])
def test_ternary_conv2d_stacked_planes(tmp_path, rng, shifts, pad_bits, c, o, h, w, kernel, strides, padding,
                                       dilation):
    """Activation planes stacked into one M-profile ternary kernel (the planes a spatial axis of the count, inside
    the channel block), each plane padded with its own value and counted 2^shift times: equals
    ``sum_p 2^shift_p * conv(plane_p)``; 32-bit halves (C=32), full words, two words per pixel, dilation."""
    from dataclasses import replace

    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation)
    xs = [pm1(rng, (1, c, h, w)) for _ in shifts]
    wt = rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), (o, c) + kernel, p=[0.35, 0.3, 0.35])
    dot = sum((1 << k) * ternary_conv2d.reference_dot(x, wt, replace(geo, pad_value=b))
              for x, k, b in zip(xs, shifts, pad_bits))
    scale = rng.uniform(0.1, 2, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    wp = ternary_conv2d.pack_weights(wt)
    params = dict(conv_params(c, kernel, strides, padding, dilation), pad_value=0, shifts=list(shifts),
                  pad_bits=list(pad_bits))
    sources, out, src = kernel_sources("ternary_conv2d", params, [
        ("xp", np.stack([bitpack.reference_nchw(x) for x in xs])), ("wp", wp), ("scale", scale), ("bias", bias),
        ("corr", ternary_conv2d.planes_correction(wp, geo, (h, w), shifts, pad_bits))])
    run_everywhere(tmp_path, sources, out, epilogue.float_reference(dot, scale, bias, channel_axis=1))


@pytest.mark.parametrize("c,o,h,w,kernel,strides,padding,dilation", CONV_CASES)
def test_conv2d_bits_output(tmp_path, rng, c, o, h, w, kernel, strides, padding, dilation):
    o = o + 60  # several channel blocks, both 32-bit halves of the output word, a partial second word
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation)
    x, wt = pm1(rng, (1, c, h, w)), pm1(rng, (o, c) + kernel)
    direction = rng.choice([-1, 0, 1], o).astype(np.int32)
    threshold = rng.integers(-5, 6, o).astype(np.int32)
    dot = binary_conv2d.reference_dot(x, wt, geo)
    expected = epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction, threshold)
    sources, out, _ = kernel_sources("binary_conv2d_bits", conv_params(c, kernel, strides, padding, dilation), [
        ("xp", bitpack.reference_nchw(x)), ("wp", binary_conv2d.pack_weights(wt)), ("direction", direction),
        ("threshold", threshold)])
    run_everywhere(tmp_path, sources, out, expected)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 32, 7), (3, 200, 10), (2, 130, 65), (1, 1100, 5), (1, 8192, 3)])
def test_dense(tmp_path, rng, m, k, n):
    x, wt = pm1(rng, (m, k)), pm1(rng, (n, k))
    dot = binary_dense.reference_dot(x, wt)
    xp, wp = bitpack.reference_rows(x), bitpack.reference_rows(wt)
    scale = rng.uniform(0.1, 2, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    sources, out, _ = kernel_sources("binary_dense", {"k": k}, [("xp", xp), ("wp", wp), ("scale", scale),
                                                                ("bias", bias)])
    run_everywhere(tmp_path / "f", sources, out, epilogue.float_reference(dot, scale, bias, channel_axis=1))
    d, t = rng.choice([-1, 1], n).astype(np.int32), rng.integers(-3, 4, n).astype(np.int32)
    sources, out, _ = kernel_sources("binary_dense_bits", {"k": k}, [("xp", xp), ("wp", wp), ("direction", d),
                                                                     ("threshold", t)])
    run_everywhere(tmp_path / "b", sources, out, epilogue.bits_reference(dot, d, t))


@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_channel_blocks(tmp_path, rng, block_size):
    c, o = 64, 72
    geo = binary_conv2d.Conv2dGeometry(c, (3, 3), (1, 1), (1, 1, 1, 1))
    x, wt = pm1(rng, (1, c, 5, 4)), pm1(rng, (o, c, 3, 3))
    direction = rng.choice([-1, 1], o).astype(np.int32)
    threshold = rng.integers(-9, 10, o).astype(np.int32)
    dot = binary_conv2d.reference_dot(x, wt, geo)
    expected = epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction, threshold)
    sources, out, _ = kernel_sources("binary_conv2d_bits", conv_params(c, (3, 3), (1, 1), (1, 1, 1, 1)), [
        ("xp", bitpack.reference_nchw(x)), ("wp", binary_conv2d.pack_weights(wt)), ("direction", direction),
        ("threshold", threshold)], block_size=block_size)
    run_everywhere(tmp_path, sources, out, expected)


@pytest.mark.parametrize("c", [65, 20])
@pytest.mark.parametrize("board,defines", [("cortex-m0", ()), ("cortex-m7", ()), ("cortex-m3", ()),
                                           ("cortex-m4", ("TVM_BNN_POPCOUNT_BUILTIN",)),
                                           ("cortex-m4", ("TVM_BNN_POPCOUNT_PORTABLE",))])
def test_helper_variants_and_boards(tmp_path, rng, board, defines, c):
    """ARMv6-M (no Thumb-2: the portable C helpers), the other boards, the builtin and portable helper variants;
    full words (C=65: their halves' nibble counts 3 at a time, per kernel row) and 32-bit halves with the nibble
    stage (C=20)."""
    from tvm_bnn.targets import qemu

    from ..conftest import need

    o = 70
    geo = binary_conv2d.Conv2dGeometry(c, (3, 3), (2, 2), (1, 1, 1, 1))
    x, wt = pm1(rng, (1, c, 5, 5)), pm1(rng, (o, c, 3, 3))
    direction = rng.choice([-1, 1], o).astype(np.int32)
    threshold = rng.integers(-9, 10, o).astype(np.int32)
    dot = binary_conv2d.reference_dot(x, wt, geo)
    expected = epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction, threshold)
    sources, out, src = kernel_sources("binary_conv2d_bits", conv_params(c, (3, 3), (2, 2), (1, 1, 1, 1)), [
        ("xp", bitpack.reference_nchw(x)), ("wp", binary_conv2d.pack_weights(wt)), ("direction", direction),
        ("threshold", threshold)])
    kernel = src.code.split("TVM_BNN_POPCOUNT_DEFINED */")[1]
    assert "tvm_bnn_nibbles(" in kernel  # nibble stages: of 32-bit halves, or of 64-bit words' halves 3 at a time
    assert bool(re.search(r"tvm_bnn_nibbles\(\(\(uint32_t\)\(.*>> \(uint64_t\)32ULL", kernel)) == (c > 32)
    need("arm-none-eabi-gcc", "qemu-system-arm")
    run = qemu.run_on_board(sources, board, workdir=tmp_path / "board", defines=defines)
    np.testing.assert_array_equal(np.frombuffer(run.output, out.dtype).reshape(out.shape), expected)
    if defines:
        need("gcc")
        res = qemu.run_on_host(sources, "gcc", workdir=tmp_path / "gcc", defines=defines)
        np.testing.assert_array_equal(np.frombuffer(res.output, out.dtype).reshape(out.shape), expected)


MVE_CASES = [  # output channels in blocks of 4: each block one Helium vector
    (32, 8, 6, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # 32-bit halves
    (3, 4, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (64, 12, 5, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (65, 8, 7, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),  # 2 words per pixel, stride 2
    (330, 4, 4, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # 18 words per row: byte counts widened within a row
    (40, 4, 7, 7, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),  # dilation: the taps of a row are not contiguous
    (20, 8, 6, 7, (5, 1), (1, 1), (2, 0, 2, 0), (1, 1)),
]


def _run_mve(tmp_path, sources, out, expected):
    """On the M55 (the Helium branch of tvm_bnn_popcount4) and on the M4 and the host (its portable branch)."""
    run_everywhere(tmp_path / "m55", sources, out, expected, board="cortex-m55", host=False)
    run_everywhere(tmp_path / "m4", sources, out, expected, board="cortex-m4")


@pytest.mark.parametrize("c,o,h,w,kernel,strides,padding,dilation", MVE_CASES)
def test_mve_conv2d(tmp_path, rng, c, o, h, w, kernel, strides, padding, dilation):
    """Binary (float output), ternary and bits-output convs with the 4-channel blocks as MVE calls: exact."""
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation)
    params = conv_params(c, kernel, strides, padding, dilation)
    x, wt = pm1(rng, (1, c, h, w)), pm1(rng, (o, c) + kernel)
    xp = bitpack.reference_nchw(x)
    scale = rng.uniform(0.1, 2, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    sources, out, src = kernel_sources("binary_conv2d", params, [
        ("xp", xp), ("wp", binary_conv2d.pack_weights(wt)), ("scale", scale), ("bias", bias)], mve=True)
    assert "tvm_bnn_popcount4(" in src.code.split("TVM_BNN_POPCOUNT_DEFINED */")[1]
    _run_mve(tmp_path / "f", sources, out,
             epilogue.float_reference(binary_conv2d.reference_dot(x, wt, geo), scale, bias, channel_axis=1))

    wt3 = rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), (o, c) + kernel, p=[0.35, 0.3, 0.35])
    wp3 = ternary_conv2d.pack_weights(wt3)
    sources, out, src = kernel_sources("ternary_conv2d", dict(params, pad_value=0), [
        ("xp", xp), ("wp", wp3), ("scale", scale), ("bias", bias),
        ("corr", ternary_conv2d.correction_table(wp3, geo, (h, w)))], mve=True)
    assert "tvm_bnn_popcount4(" in src.code.split("TVM_BNN_POPCOUNT_DEFINED */")[1]
    _run_mve(tmp_path / "t", sources, out,
             epilogue.float_reference(ternary_conv2d.reference_dot(x, wt3, geo), scale, bias, channel_axis=1))

    o64 = 64  # a bits output: whole words of channels
    wt64 = pm1(rng, (o64, c) + kernel)
    direction = rng.choice([-1, 0, 1], o64).astype(np.int32)
    threshold = rng.integers(-5, 6, o64).astype(np.int32)
    dot = binary_conv2d.reference_dot(x, wt64, geo)
    sources, out, src = kernel_sources("binary_conv2d_bits", params, [
        ("xp", xp), ("wp", binary_conv2d.pack_weights(wt64)), ("direction", direction), ("threshold", threshold)],
        mve=True)
    assert "tvm_bnn_popcount4(" in src.code.split("TVM_BNN_POPCOUNT_DEFINED */")[1]
    _run_mve(tmp_path / "b", sources, out,
             epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction, threshold))


@pytest.mark.parametrize("m,k,n,vector", [(1, 32, 8, False), (3, 200, 12, True), (1, 1100, 4, True),
                                          (2, 130, 10, False)])
def test_mve_dense(tmp_path, rng, m, k, n, vector):
    """Dense rows in blocks of 4 as MVE calls (1100 inputs: 18 words, the byte counts widened within the row);
    a single word per row (32 inputs) and 10 outputs (blocks of 2) keep the scalar form."""
    x, wt = pm1(rng, (m, k)), pm1(rng, (n, k))
    scale = rng.uniform(0.1, 2, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    sources, out, src = kernel_sources("binary_dense", {"k": k}, [
        ("xp", bitpack.reference_rows(x)), ("wp", bitpack.reference_rows(wt)), ("scale", scale), ("bias", bias)],
        mve=True)
    assert ("tvm_bnn_popcount4(" in src.code.split("TVM_BNN_POPCOUNT_DEFINED */")[1]) == vector
    _run_mve(tmp_path, sources, out,
             epilogue.float_reference(binary_dense.reference_dot(x, wt), scale, bias, channel_axis=1))


def test_mve_call_is_checked_not_assumed():
    """A marked loop nest that is not a 4-lane popcount sum of affine addresses keeps its loops (and loses the mark)."""
    from tvm import tirx

    from tvm_bnn.schedules import cortexm_mve

    acc = tirx.decl_buffer((4,), "uint32", name="acc")
    x = tirx.decl_buffer((16,), "uint64", name="x")
    w = tirx.decl_buffer((4, 16), "uint64", name="w")
    r, lane = tirx.Var("r", "int32"), tirx.Var("lane", "int32")

    def nest(x_index):
        count = tirx.Cast("uint32", tirx.call_pure_extern("uint64", "tvm_bnn_popcount64",
                                                          x[x_index] ^ w[lane, r]))
        store = tirx.BufferStore(acc, acc[lane] + count, [lane])
        inner = tirx.For(lane, 0, 4, tirx.ForKind.SERIAL, store)
        return tirx.For(r, 0, 3, tirx.ForKind.SERIAL, inner, annotations={cortexm_mve.ANNOTATION: 1})

    call = cortexm_mve.popcount4_call(nest(r * 2))
    assert call is not None and "tvm_bnn_popcount4" in str(call)
    assert cortexm_mve.popcount4_call(nest(r * r)) is None  # not affine
    assert cortexm_mve.popcount4_call(nest(r + lane)) is None  # the input word differs per lane


def test_accumulators_stay_in_the_kernel_and_arena_is_unchanged(rng):
    """The register-block accumulators are locals of the C function; the arena scratch (pad, popw, pad_adjust) is
    what the generic lean schedule needs, no more."""
    from tvm_bnn.schedules.lean import inline_intermediates

    params = conv_params(64, (3, 3), (1, 1), (1, 1, 1, 1))
    phs = [te.placeholder((1, 8, 8, 1), "uint64", name="xp"), te.placeholder((64, 3, 3, 1), "uint64", name="wp"),
           te.placeholder((64,), "int32", name="d"), te.placeholder((64,), "int32", name="t")]
    func = te.create_prim_func(phs + [TE_BUILDERS["binary_conv2d_bits"](params)(*phs)])
    func = func.with_attr("tvm_bnn.op", "binary_conv2d_bits").with_attr("tvm_bnn.params", json.dumps(params))
    fast = generate_c({"k": cortexm.schedule_kernel(func)}).kernels["k"]
    lean = generate_c({"k": inline_intermediates(func)}).kernels["k"]
    assert fast.scratch_bytes <= lean.scratch_bytes
    assert [p.name for p in fast.params if not p.scratch] == [p.name for p in lean.params if not p.scratch]


def test_non_binary_kernels_get_the_lean_schedule():
    from tvm_bnn.schedules.lean import inline_intermediates

    a = te.placeholder((4, 5), "float32", name="a")
    b = te.compute((4, 5), lambda i, j: a[i, j] * 2.0, name="b")
    c = te.compute((4, 5), lambda i, j: b[i, j] + 1.0, name="c")
    func = te.create_prim_func([a, c])
    assert cortexm.schedule_kernel(func).script() == inline_intermediates(func).script()


@pytest.mark.parametrize("channels,shape", [(3, (1, 3, 3, 4)), (32, (1, 32, 2, 3)), (64, (1, 64, 2, 2)),
                                            (65, (1, 65, 3, 2)), (130, (2, 130, 1, 2))])
def test_bitpack_nchw(tmp_path, rng, channels, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 0, 0] = 0.0  # the tie packs as +1
    x[0, -1, 0, 1] = -0.0
    sources, out, _ = kernel_sources("bitpack_nchw", {}, [("x", x)], check_bytesum=False)
    run_everywhere(tmp_path, sources, out, bitpack.reference_nchw(x))


@pytest.mark.parametrize("planes", [2, 3])
@pytest.mark.parametrize("channels,shape", [(3, (1, 3, 3, 4)), (32, (1, 32, 2, 3)), (65, (2, 65, 3, 2))])
def test_bitpack_planes(tmp_path, rng, planes, channels, shape):
    """A few-level activation's planes packed in one pass: plane p is bitpack_nchw with its own (scale, threshold):
    thresholds on the values themselves (ties), a decreasing test (scale -1) and a constant bit (scale 0)."""
    x = np.round(rng.standard_normal(shape) * 2).astype(np.float32) / 2
    scale = rng.choice(np.array([1.0, 1.0, -1.0, 0.0], np.float32), (planes, channels))
    threshold = rng.choice(np.array([-1.0, -0.5, 0.0, 0.5, 1.0], np.float32), (planes, channels))
    sources, out, _ = kernel_sources("bitpack_planes", {}, [("x", x), ("scale", scale), ("threshold", threshold)],
                                     check_bytesum=False)
    run_everywhere(tmp_path / "scaled", sources, out, bitpack.reference_planes(x, scale, threshold))
    sources, out, src = kernel_sources("bitpack_planes", {"unit_scale": True}, [("x", x), ("threshold", threshold)],
                                       check_bytesum=False)
    assert "] * " not in src.code.split("TVM_BNN_POPCOUNT_DEFINED */")[1]  # x * scale: no multiply of an element
    run_everywhere(tmp_path / "unit", sources, out, bitpack.reference_planes(x, None, threshold))


@pytest.mark.parametrize("m,k", [(1, 1), (2, 64), (3, 100), (1, 8192)])
def test_bitpack_rows(tmp_path, rng, m, k):
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0, 0] = -0.0
    sources, out, _ = kernel_sources("bitpack_rows", {}, [("x", x)], check_bytesum=False)
    run_everywhere(tmp_path, sources, out, bitpack.reference_rows(x))


@pytest.mark.parametrize("board,defines", [("cortex-m4", ()), ("cortex-m4", ("TVM_BNN_POPCOUNT_PORTABLE",)),
                                           ("cortex-m4", ("TVM_BNN_POPCOUNT_BUILTIN",)), ("cortex-m0", ()),
                                           ("cortex-m3", ()), ("cortex-m7", ()), ("cortex-m55", ())])
def test_byte_count_helpers_exact(tmp_path, rng, board, defines):
    """Sums of 15 words' byte counts (31 halves') then tvm_bnn_bytesum, and 3 halves' nibbles folded, against numpy
    on edge-case (all ones: the largest byte counts) and random words; the same sums accumulated with
    tvm_bnn_bytes_add / tvm_bnn_bytes_total (USADA8 on the cores with the DSP extension, the byte vectors elsewhere)."""
    from tvm_bnn.targets import qemu
    from tvm_bnn.targets.c_codegen import PREAMBLE

    from ..conftest import need

    words = np.concatenate([np.full(15, 2**64 - 1, np.uint64), np.full(15, 0xF0F0F0F0F0F0F0F0, np.uint64),
                            rng.integers(0, 2**63, 15 * 6, dtype=np.uint64) * 2 + 1]).reshape(-1, 15)
    halves = words.view(np.uint32).reshape(-1, 30)[:, :30]
    ones = np.vectorize(lambda v: bin(int(v)).count("1"))
    expected = np.stack([ones(words).sum(1), ones(halves).sum(1), ones(halves[:, :3]).sum(1)], 1).astype(np.uint32)
    expected = np.concatenate([expected, expected], 1)
    main = PREAMBLE + '#include "tvm_bnn_bm.h"\nstatic const uint64_t w[%d] = {%s};\n' % (
        words.size, ", ".join(f"0x{int(v):x}ull" for v in words.reshape(-1))) + r"""
static uint32_t r[%d];
int main(void) {
  for (int i = 0; i < %d; ++i) {
    const uint64_t *p = w + 15 * i;
    const uint32_t *q = (const uint32_t *)p;
    uint32_t a = 0, b = 0, c = 0, d = 0;
    for (int j = 0; j < 15; ++j) a += tvm_bnn_popcount64_bytes(p[j]);
    for (int j = 0; j < 30; ++j) b += tvm_bnn_popcount32_bytes(q[j]);
    for (int j = 0; j < 15; ++j) c = tvm_bnn_bytes_add(c, tvm_bnn_popcount64_bytes(p[j]));
    for (int j = 0; j < 30; ++j) d = tvm_bnn_bytes_add(d, tvm_bnn_popcount32_bytes(q[j]));
    uint32_t nibbles = tvm_bnn_fold_nibbles(tvm_bnn_nibbles(q[0]) + tvm_bnn_nibbles(q[1]) + tvm_bnn_nibbles(q[2]));
    r[6 * i] = tvm_bnn_bytesum(a);
    r[6 * i + 1] = tvm_bnn_bytesum(b);
    r[6 * i + 2] = tvm_bnn_bytesum(nibbles);
    r[6 * i + 3] = tvm_bnn_bytes_total(c);
    r[6 * i + 4] = tvm_bnn_bytes_total(d);
    r[6 * i + 5] = tvm_bnn_bytes_total(tvm_bnn_bytes_add(0, nibbles));
  }
  tvm_bnn_bm_output(r, sizeof(r));
  return 0;
}
""" % (expected.size, len(words))
    need("arm-none-eabi-gcc", "qemu-system-arm")
    run = qemu.run_on_board({"main.c": main}, board, workdir=tmp_path / "b", defines=defines,
                            extra_cflags=("-fno-strict-aliasing",))
    np.testing.assert_array_equal(np.frombuffer(run.output, np.uint32).reshape(expected.shape), expected)


FLOAT_CONVS = [
    # C, O, H, W, kernel, stride, padding, dilation, batch, BatchNorm + ReLU after it, the FPU block helper expected
    (3, 32, 12, 10, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "4x2_3x3_s1"),  # the stem; its epilogue reads the block
    (3, 32, 12, 12, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "4x4_3x3_s1"),  # no epilogue: stored straight out
    (1, 5, 9, 7, (3, 3), (2, 2), (1, 1), (1, 1), 2, True, "1x4_3x3_s2"),  # 5 channels: blocks of 1, batch 2
    (2, 3, 6, 11, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "3x1_3x3_s1"),  # blocks of one pixel (11 is prime)
    (1, 5, 9, 7, (3, 3), (2, 2), (1, 1), (1, 1), 1, False, "1x4_3x3_s2"),  # one channel, stored straight out
    (4, 6, 8, 9, (5, 5), (1, 1), (2, 2), (2, 2), 1, True, None),  # dilation: a row's taps are not consecutive
    (2, 12, 7, 6, (3, 1), (2, 1), (1, 0), (1, 1), 1, True, "4x3_3x1_s1"),  # an asymmetric kernel and stride
    (3, 8, 15, 15, (5, 5), (2, 2), (2, 2), (1, 1), 1, False, "4x4_5x5_s2"),  # 31 of the 32 S registers
    (3, 8, 16, 16, (7, 7), (2, 2), (3, 3), (1, 1), 1, False, None),  # 33: does not fit, the loops stay
]


def kernel_code(code: str) -> str:
    """The kernels of a bundle's model.c, without the helper definitions before them."""
    return code[code.index("\nvoid tvm_bnn_"):]


@pytest.mark.parametrize("target,tools", [("c", ("gcc",)), ("cortex-m4", ("arm-none-eabi-gcc", "qemu-system-arm"))])
@pytest.mark.parametrize("c,o,h,w,kernel,stride,padding,dilation,batch,epilogue,helper", FLOAT_CONVS)
def test_float_conv_register_blocked_is_bit_exact(monkeypatch, target, tools, c, o, h, w, kernel, stride, padding,
                                                   dilation, batch, epilogue, helper):
    """The float conv (and its folded BatchNorm and ReLU) register-blocked with VMLA, as the FPU block helper where
    the block fits it (weights laid out at compile time), gives exactly the bits of the plain memory-lean schedule
    (same products, same order, no fused multiply-add), and PyTorch's to rounding."""
    import torch

    import tvm_bnn

    from ..conftest import assert_float_close, need, randomize_batchnorm

    need(*tools)
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(c, o, kernel, stride, padding, dilation, bias=epilogue)]
    if epilogue:
        layers += [torch.nn.BatchNorm2d(o), torch.nn.ReLU()]
    model = randomize_batchnorm(torch.nn.Sequential(*layers)).eval()
    x = torch.randn(batch, c, h, w)
    blocked = tvm_bnn.compile(model, target, example_inputs=(x,), progress=False)
    code = kernel_code(blocked.bundle.sources["model.c"])
    unrolled = re.compile(r"\[\d+\] = tvm_bnn_mla\(")  # the register-blocked loops, unrolled
    if helper is None:
        assert unrolled.search(code) and "tvm_bnn_fconv_" not in code
    else:
        assert f"tvm_bnn_fconv_{helper}((&(" in code and not unrolled.search(code)
        bo = int(helper.split("x")[0])
        size = o * c * kernel[0] * kernel[1]  # the weights, laid out [O / bo, C, KH, KW, bo], and only so
        defined = re.findall(rf"const float (tvm_bnn_w\w+)\[{size}\] __attr", blocked.bundle.sources["weights.c"])
        assert len(defined) == 1 and defined[0].endswith(f"_{o // bo}_{c}_{kernel[0]}_{kernel[1]}_{bo}"), defined
    got = blocked(x)

    def unavailable(func, block=None, const_params=()):
        raise ValueError("the plain schedule, for comparison")

    monkeypatch.setattr(cortexm, "schedule_float_conv", unavailable)
    with pytest.warns(UserWarning, match="memory-lean"):
        plain = tvm_bnn.compile(model, target, example_inputs=(x,), progress=False)
    plain_code = kernel_code(plain.bundle.sources["model.c"])
    assert not unrolled.search(plain_code) and "tvm_bnn_fconv_" not in plain_code
    np.testing.assert_array_equal(got, plain(x))
    with torch.no_grad():
        assert_float_close(got, model(x).numpy())


@pytest.mark.parametrize("target,tools", [("c", ("gcc",)), ("cortex-m4", ("arm-none-eabi-gcc", "qemu-system-arm"))])
def test_float_conv_of_weights_computed_at_run_time(target, tools):
    """Weights that are a model input are not laid out (there is no constant to lay out): the block keeps its loops,
    reading them as they come, and the result is PyTorch's."""
    import torch
    import torch.nn.functional as F

    import tvm_bnn

    from ..conftest import assert_float_close, need

    need(*tools)

    class ConvOfInputs(torch.nn.Module):
        def forward(self, x, w):
            return F.conv2d(x, w, padding=1)

    torch.manual_seed(1)
    x, w = torch.randn(1, 3, 9, 8), torch.randn(8, 3, 3, 3)
    cm = tvm_bnn.compile(ConvOfInputs(), target, example_inputs=(x, w), progress=False)
    code = kernel_code(cm.bundle.sources["model.c"])
    assert re.search(r"\[\d+\] = tvm_bnn_mla\(", code) and "tvm_bnn_fconv_" not in code
    assert_float_close(cm(x, w), F.conv2d(x, w, padding=1).numpy())


@pytest.mark.parametrize("board", ["cortex-m0", "cortex-m3", "cortex-m7", "cortex-m55"])
def test_float_conv_blocks_give_the_same_bits_on_every_board(board):
    """The FPU block helper (M7, M55: VLDM/VMLA; M0, M3: its C branch on soft float) computes the bits the host's
    C build computes (the same IEEE operations in the same order), for a stem with its epilogue and a 5x5/2 conv
    stored straight out."""
    import torch

    import tvm_bnn

    from ..conftest import assert_float_close, need, randomize_batchnorm

    need("gcc", "arm-none-eabi-gcc", "qemu-system-arm")
    torch.manual_seed(2)
    model = randomize_batchnorm(torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 1, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 5, 2, 2, bias=False))).eval()
    x = torch.randn(1, 3, 13, 16)
    on_board = tvm_bnn.compile(model, board, example_inputs=(x,), progress=False)
    code = kernel_code(on_board.bundle.sources["model.c"])
    assert "tvm_bnn_fconv_4x4_3x3_s1((&(" in code and "tvm_bnn_fconv_4x4_5x5_s2((&(" in code
    host = tvm_bnn.compile(model, "c", example_inputs=(x,), progress=False)
    got = on_board(x)
    np.testing.assert_array_equal(got, host(x))
    with torch.no_grad():
        assert_float_close(got, model(x).numpy())
