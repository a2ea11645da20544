"""The byte-lane kernels (schedules/simd_bytes.py) are exact and emit the instructions they are for.

x86-avx2 runs natively (AVX2 on the test machine); NEON kernels run under qemu-user (aarch64, aarch64 with the dot
product extension, armv7) through tests/deploy/test_arm_linux.py's kernel harness. Odd shapes: channels not
multiples of 32/64, K with remainders, every border and padding case (zero, +1, -1 padding), strides, dilation,
counter groups split when the fan-in could overflow the narrow counters. No timings here.
"""
import json
import re

import numpy as np
import pytest
import tvm
from tvm import te

from tvm_bnn.ops import binary_conv2d, binary_dense, bitpack, epilogue, ternary_conv2d
from tvm_bnn.schedules import simd_bytes, x86
from tvm_bnn.targets import resolve_target

from .test_x86_kernels import exact_affine, pm1


def _func(op, inputs, build_out, params=None):
    phs = [te.placeholder(a.shape, str(a.dtype), name=n) for n, a in inputs]
    func = te.create_prim_func(phs + [build_out(*phs)]).with_attr("tvm_bnn.op", op)
    return func.with_attr("tvm_bnn.params", json.dumps(params)) if params is not None else func


def _schedule(target_name, op, func, knobs=None):
    target = resolve_target(target_name).target
    with target:
        scheduled = x86.schedule_kernel(func, op, 2, knobs=knobs)
    assert scheduled.attrs[simd_bytes.FORM_ATTR] == x86.simd_flavour(target).name  # the byte-lane form, not generic
    return target, scheduled


def _run_x86(op, inputs, build_out, params=None, knobs=None):
    target, scheduled = _schedule("x86-avx2", op, _func(op, inputs, build_out, params), knobs)
    ex = tvm.compile(tvm.IRModule({"main": scheduled}), target=target)
    dev = tvm.cpu()
    out = scheduled.params[-1]
    res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)), dev)
    ex(*[tvm.runtime.tensor(a, dev) for _, a in inputs], res)
    return res.numpy()


CONV = [
    # N, C, O, H, W, (KH, KW), strides, padding (t, l, b, r), dilation, pad value
    (1, 1, 1, 5, 5, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 0),
    (2, 63, 7, 6, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 0),
    (1, 65, 37, 7, 7, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    (1, 130, 9, 8, 10, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), -1),
    (1, 300, 66, 9, 8, (3, 3), (1, 2), (1, 0, 2, 1), (2, 2), 1),
    (2, 64, 33, 10, 10, (3, 2), (2, 1), (0, 2, 1, 0), (1, 2), -1),
    (1, 128, 16, 3, 3, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 0),  # no interior: every output on the border
    (1, 704, 12, 5, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 0),  # 33 words a row > 31: groups of 11 words (AVX2)
    (1, 20, 70, 4, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # C < 32: +1 padding word of 20 bits
]


def _conv_case(rng, n, c, o, h, w, kernel, strides, padding, dilation, pad_value):
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation, pad_value)
    x, wt = pm1(rng, (n, c, h, w)), pm1(rng, (o, c) + kernel)
    return geo, binary_conv2d.reference_dot(x, wt, geo), bitpack.reference_nchw(x), binary_conv2d.pack_weights(wt)


@pytest.mark.parametrize("case", CONV, ids=[f"conv{i}" for i in range(len(CONV))])
def test_avx2_conv_with_weights_laid_out_at_compile_time(rng, case):
    """The byte-lane conv reading ``conv_weight_tables``' nibble-plane blocks and padding table (what
    schedules/weight_layout.py binds as constants), built from the same TE a compiled model uses: exact."""
    geo, dot, xp, wp = _conv_case(rng, *case)
    o = wp.shape[0]
    scale, bias = exact_affine(rng, o)
    direction = rng.choice([-1, 0, 1], o).astype(np.int32)
    threshold = rng.integers(-5, 6, o).astype(np.int32)
    for op, extent, tail in [("binary_conv2d", None, [("scale", scale), ("bias", bias)]),
                             ("binary_conv2d_bits", binary_conv2d.bits_extent(o), [("d", direction), ("t", threshold)])]:
        table, adjust = simd_bytes.conv_weight_tables(wp, geo, xp.shape[1:3], simd_bytes.FLAVOURS["avx2"], extent)
        params = dict(geo.params(), out_channels=o, flavour="avx2",
                      prepared="weights_t" if adjust is None else "weights_t+pad_adjust")
        inputs = [("xp", xp), ("weights_t", table)] + ([] if adjust is None else [("pad_adjust", adjust)]) + tail
        got = _run_x86(op, inputs, lambda *a, op=op, params=params: simd_bytes.kernel_compute(
            op, params, a, simd_bytes.FLAVOURS["avx2"]), params)
        want = (epilogue.float_reference(dot, scale, bias, channel_axis=1) if op == "binary_conv2d" else
                epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction, threshold))
        np.testing.assert_array_equal(got, want, err_msg=op)


@pytest.mark.parametrize("case", CONV, ids=[f"conv{i}" for i in range(len(CONV))])
def test_avx2_conv_exact(rng, case):
    geo, dot, xp, wp = _conv_case(rng, *case)
    o = wp.shape[0]
    scale, bias = exact_affine(rng, o)
    got = _run_x86("binary_conv2d", [("xp", xp), ("wp", wp), ("scale", scale), ("bias", bias)],
                   lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo), geo.params())
    np.testing.assert_array_equal(got, epilogue.float_reference(dot, scale, bias, channel_axis=1))
    direction = rng.choice([-1, 0, 1], o).astype(np.int32)
    threshold = rng.integers(-5, 6, o).astype(np.int32)
    # no tvm_bnn.params (a benchmark's bare TE): the geometry is read off the generic TE and verified
    bits = _run_x86("binary_conv2d_bits", [("xp", xp), ("wp", wp), ("d", direction), ("t", threshold)],
                    lambda a, b, d, t: binary_conv2d.compute_bits(a, b, d, t, geo))
    np.testing.assert_array_equal(bits, epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction,
                                                                threshold))


def _ternary_case(rng, n, c, o, h, w, kernel, strides, padding, dilation, pad_value):
    """A ternary conv (weights in {-1, 0, 1}, about a third zeros) of +-1 activations, its exact dot (numpy), the
    packed input, the stacked sign / mask filters and their correction table."""
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation, pad_value)
    x, wt = pm1(rng, (n, c, h, w)), rng.choice([-1.0, 0.0, 1.0], (o, c) + kernel).astype(np.float32)
    filters = ternary_conv2d.pack_weights(wt)
    return geo, ternary_conv2d.reference_dot(x, wt, geo), bitpack.reference_nchw(x), filters, \
        ternary_conv2d.correction_table(filters, geo, (h, w))


def _ternary_inputs(geo, xp, filters, corr, fl, rng, residual=False):
    o = filters.shape[1]
    scale, bias = exact_affine(rng, o)
    params = dict(geo.params(), layout="OHWI", flavour=fl.name, out_channels=o, residual=residual)
    inputs = [("xp", xp), ("filters", simd_bytes.ternary_weight_tables(filters, fl)), ("scale", scale),
              ("bias", bias), ("corr", corr)]
    return inputs, params, scale, bias


@pytest.mark.parametrize("case", CONV, ids=[f"conv{i}" for i in range(len(CONV))])
def test_avx2_ternary_conv_exact(rng, case):
    """The byte-lane ternary conv (``(x ^ sign) & mask`` in nibble planes) against numpy, every padding value and
    border case of the binary conv's table; with a residual added in its epilogue on the first two shapes."""
    geo, dot, xp, filters, corr = _ternary_case(rng, *case)
    fl = simd_bytes.FLAVOURS["avx2"]
    residual = case[1] < 100
    inputs, params, scale, bias = _ternary_inputs(geo, xp, filters, corr, fl, rng, residual)
    want = epilogue.float_reference(dot, scale, bias, channel_axis=1)
    if residual:
        acc = (rng.integers(-64, 64, want.shape) / 8).astype(np.float32)
        inputs.append(("acc", acc))
        want = (want + acc).astype(np.float32)
    got = _run_x86("ternary_conv2d", inputs, lambda *a: simd_bytes.kernel_compute("ternary_conv2d", params, a, fl),
                   params)
    np.testing.assert_array_equal(got, want)


DENSE = [(1, 1, 1), (3, 63, 10), (4, 65, 65), (5, 300, 7), (3, 2100, 9), (2, 64 * 62 + 5, 66), (7, 4096, 24)]


@pytest.mark.parametrize("m,k,n", DENSE)
def test_avx2_dense_exact(rng, m, k, n):
    x, wt = pm1(rng, (m, k)), pm1(rng, (n, k))
    dot = binary_dense.reference_dot(x, wt)
    xp, wp = bitpack.reference_rows(x), bitpack.reference_rows(wt)
    scale, bias = exact_affine(rng, n)
    got = _run_x86("binary_dense", [("xp", xp), ("wp", wp), ("scale", scale), ("bias", bias)],
                   lambda a, b, s, t: binary_dense.compute(a, b, s, t, k), {"k": k})
    np.testing.assert_array_equal(got, epilogue.float_reference(dot, scale, bias, channel_axis=1))
    direction = rng.choice([-1, 0, 1], n).astype(np.int32)
    threshold = rng.integers(-5, 6, n).astype(np.int32)
    bits = _run_x86("binary_dense_bits", [("xp", xp), ("wp", wp), ("d", direction), ("t", threshold)],
                    lambda a, b, d, t: binary_dense.compute_bits(a, b, d, t, k))
    np.testing.assert_array_equal(bits, epilogue.bits_reference(dot, direction, threshold))


def test_knobs_and_groups(rng):
    """Other register blocks (bench --knobs), and the group plans: one group, one per kernel row, split rows."""
    geo, dot, xp, wp = _conv_case(rng, 1, 200, 24, 6, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 0)
    scale, bias = exact_affine(rng, 24)
    for knobs in (x86.Knobs(1, 16, 4), x86.Knobs(7, 4, 4), x86.Knobs(3, 8, 2), x86.Knobs(2, 3, 1)):
        got = _run_x86("binary_conv2d", [("xp", xp), ("wp", wp), ("scale", scale), ("bias", bias)],
                       lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo), geo.params(), knobs)
        np.testing.assert_array_equal(got, epilogue.float_reference(dot, scale, bias, channel_axis=1))
    avx2 = simd_bytes.FLAVOURS["avx2"]
    assert avx2.group_limit == 31 and simd_bytes.FLAVOURS["aarch64"].group_limit == 4095
    assert simd_bytes._groups((3, 3, 3), 31) == ("all",)
    assert simd_bytes._groups((3, 3, 4), 31) == ("rows",)
    assert simd_bytes._groups((3, 3, 11), 31) == ("split", 11)
    assert simd_bytes._groups((64,), 31) == ("split", 16)


def test_design_space_samples_are_exact(rng):
    """MetaSchedule's space over the byte-lane kernels (x86.design_space on tuning_form's PrimFunc): sampled register
    blocks build and stay exact."""
    from tvm import s_tir

    geo, dot, xp, wp = _conv_case(rng, 1, 130, 40, 6, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 0)
    scale, bias = exact_affine(rng, 40)
    inputs = [("xp", xp), ("wp", wp), ("scale", scale), ("bias", bias)]
    func = _func("binary_conv2d", inputs, lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo), geo.params())
    target = resolve_target("x86-avx2").target
    form = x86.tuning_form(func, target)
    assert form.attrs[simd_bytes.FORM_ATTR] == "avx2"
    assert x86.tuning_form(func, resolve_target("x86-avx512").target).same_as(func)
    dev = tvm.cpu()
    for seed in (1, 2, 3):
        sch = s_tir.Schedule(form, seed=seed)
        x86.design_space(sch, target=target, num_cores=2)
        ex = tvm.compile(tvm.IRModule({"main": sch.mod["main"]}), target=target)
        res = tvm.runtime.tensor(np.zeros((1, 40, 6, 6), np.float32), dev)
        ex(*[tvm.runtime.tensor(a, dev) for _, a in inputs], res)
        np.testing.assert_array_equal(res.numpy(), epilogue.float_reference(dot, scale, bias, channel_axis=1))


def _asm(target_name, op, inputs, build_out, params):
    target, scheduled = _schedule(target_name, op, _func(op, inputs, build_out, params))
    return tvm.compile(tvm.IRModule({"main": scheduled}), target=target).mod.inspect_source("asm")


def _bench_conv(rng):
    geo = binary_conv2d.Conv2dGeometry(256, (3, 3), (1, 1), (1, 1, 1, 1))
    inputs = [("xp", np.zeros((1, 14, 14, 4), np.uint64)), ("wp", np.zeros((64, 3, 3, 4), np.uint64)),
              ("scale", np.ones(64, np.float32)), ("bias", np.zeros(64, np.float32))]
    return inputs, (lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo)), geo.params()


def _dense(k=4096, n=64):
    inputs = [("xp", np.zeros((8, k // 64), np.uint64)), ("wp", np.zeros((n, k // 64), np.uint64)),
              ("scale", np.ones(n, np.float32)), ("bias", np.zeros(n, np.float32))]
    return inputs, (lambda a, b, s, t: binary_dense.compute(a, b, s, t, k)), {"k": k}


def test_avx2_asm_is_nibble_tables_and_psadbw(rng):
    """AVX2: the counts are vpshufb table lookups of nibble planes summed in byte lanes, widened by vpsadbw; no
    vpopcntq (AVX-512) and no scalar popcnt in the kernels."""
    for inputs, build, params in (_bench_conv(rng), _dense()):
        op = "binary_conv2d" if "in_channels" in params else "binary_dense"
        asm = _asm("x86-avx2", op, inputs, build, params)
        assert "vpshufb" in asm and "vpsadbw" in asm and "vpopcntq" not in asm
        hot = max(_loops(asm), key=lambda body: body.count("vpshufb"))
        assert "vpsadbw" not in hot and "popcnt" not in hot and "vpsrlw" not in hot  # no widening, no shifts


def _loops(asm: str) -> list:
    """Bodies of the innermost backward-branch loops of an assembly listing."""
    lines = asm.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.?L\w+):", line))}
    bodies = []
    for i, line in enumerate(lines):
        m = re.match(r"^\s+(?:j\w+|b\.\w+|b|bne|cbnz)\s+(\.?L\w+)\s*$", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            body = "\n".join(lines[labels[m.group(1)]:i + 1])
            if "ret" not in body and "call" not in body:
                bodies.append(body)
    return bodies


@pytest.mark.parametrize("target,needles,absent", [
    ("aarch64", ["cnt\tv", "uadalp\tv"], ["uaddlp\tv"]),  # hot loop: eor, cnt, uadalp; no per-word widening
    ("aarch64-dotprod", ["cnt\tv", "udot\tv"], ["uadalp\tv", "uaddlp\tv"]),
    ("armv7", ["vcnt.8", "vpadal.u8"], ["vpaddl"]),
])
def test_neon_asm(rng, target, needles, absent):
    for inputs, build, params in (_bench_conv(rng), _dense()):
        op = "binary_conv2d" if "in_channels" in params else "binary_dense"
        asm = _asm(target, op, inputs, build, params)
        hot = max(_loops(asm), key=lambda body: body.count(needles[0]))
        for needle in needles:
            assert needle in hot, (target, op, needle)
        for needle in absent:
            assert needle not in hot, (target, op, needle)


NEON_CONV = [
    (2, 3, 5, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 70, 33, 9, 7, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), -1),
    (1, 65, 66, 6, 5, (3, 2), (2, 1), (1, 0, 2, 1), (2, 1), 0),
    (1, 33, 7, 8, 8, (5, 5), (1, 1), (2, 2, 2, 2), (2, 2), 1),
]


@pytest.mark.parametrize("arch", ["aarch64", "aarch64-dotprod", "armv7"])
def test_neon_kernels_exact(tmp_path, rng, arch):
    """Under qemu-user (whose default CPU has the dot product extension): conv float/bits, ternary conv and dense
    float/bits outputs equal the numpy reference (the float epilogue up to a fused multiply-add)."""
    from ..deploy.test_arm_linux import need_arch
    from tvm_bnn.schedules.apply import default_schedule
    from tvm_bnn.targets import qemu
    from tvm_bnn.targets.c_codegen import harness_main
    from tvm_bnn.targets.llvm_object import generate_object

    emulated = "armv7" if arch == "armv7" else "aarch64"

    def run_kernel(path, _arch, build_out, inputs, op, params=None):  # tests/deploy/test_arm_linux.py's, any ARM
        need_arch(emulated)
        spec = resolve_target(arch)
        with spec.target:
            scheduled = default_schedule(_func(op, inputs, build_out, params), spec)
        assert scheduled.attrs[simd_bytes.FORM_ATTR] == x86.simd_flavour(spec.target).name
        src = generate_object({"kernel": scheduled}, spec.target)
        kernel = src.kernels["kernel"]
        out = kernel.params[len(inputs)]
        main = harness_main(src, [("kernel", [p.name for p in kernel.params])], dict(inputs), [out.name])
        run = qemu.run_linux_user({"main.c": main}, emulated, {"kernels.o": src.object_bytes}, workdir=path)
        return np.frombuffer(run.output, out.dtype).reshape(out.shape)

    for i, case in enumerate(NEON_CONV):
        geo, dot, xp, wp = _conv_case(rng, *case)
        o = wp.shape[0]
        scale, bias = exact_affine(rng, o)  # exact with or without FMA contraction
        got = run_kernel(tmp_path / f"c{i}", arch, lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo),
                         [("xp", xp), ("wp", wp), ("scale", scale), ("bias", bias)], "binary_conv2d")
        np.testing.assert_array_equal(got, epilogue.float_reference(dot, scale, bias, channel_axis=1))
        direction = rng.choice([-1, 0, 1], o).astype(np.int32)
        threshold = rng.integers(-5, 6, o).astype(np.int32)
        bits = run_kernel(tmp_path / f"b{i}", arch, lambda a, b, d, t: binary_conv2d.compute_bits(a, b, d, t, geo),
                          [("xp", xp), ("wp", wp), ("d", direction), ("t", threshold)], "binary_conv2d_bits")
        np.testing.assert_array_equal(bits, epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction,
                                                                    threshold))
    fl = x86.simd_flavour(resolve_target(arch).target)
    for i, case in enumerate(NEON_CONV):  # the ternary conv in this flavour's byte counters
        geo, dot, xp, filters, corr = _ternary_case(rng, *case)
        inputs, params, scale, bias = _ternary_inputs(geo, xp, filters, corr, fl, rng)
        got = run_kernel(tmp_path / f"t{i}", arch, lambda *a, params=params: simd_bytes.kernel_compute(
            "ternary_conv2d", params, a, fl), inputs, "ternary_conv2d", params)
        np.testing.assert_array_equal(got, epilogue.float_reference(dot, scale, bias, channel_axis=1))
    # dense: K with a remainder, and K = 4100 words, more than u16 counters may take (4095): two groups
    for j, (m, k, n) in enumerate([(3, 130, 9), (2, 64 * 4100, 3)]):
        x, wt = pm1(rng, (m, k)), pm1(rng, (n, k))
        dot = binary_dense.reference_dot(x, wt)
        xp, wp = bitpack.reference_rows(x), bitpack.reference_rows(wt)
        scale, bias = exact_affine(rng, n)
        got = run_kernel(tmp_path / f"d{j}", arch, lambda a, b, s, t: binary_dense.compute(a, b, s, t, k),
                         [("xp", xp), ("wp", wp), ("scale", scale), ("bias", bias)], "binary_dense")
        np.testing.assert_array_equal(got, epilogue.float_reference(dot, scale, bias, channel_axis=1))
        direction = rng.choice([-1, 0, 1], n).astype(np.int32)
        threshold = rng.integers(-5, 6, n).astype(np.int32)
        bits = run_kernel(tmp_path / f"e{j}", arch, lambda a, b, d, t: binary_dense.compute_bits(a, b, d, t, k),
                          [("xp", xp), ("wp", wp), ("d", direction), ("t", threshold)], "binary_dense_bits")
        np.testing.assert_array_equal(bits, epilogue.bits_reference(dot, direction, threshold))


def test_avx512_keeps_vpopcntq():
    target = resolve_target("x86-avx512").target
    assert x86.simd_flavour(target) is None
    assert x86.simd_flavour(resolve_target("x86-popcnt").target) is None
    assert x86.simd_flavour(resolve_target("x86-avx2").target).name == "avx2"
    assert x86.simd_flavour(resolve_target("aarch64").target).name == "aarch64"
    assert x86.simd_flavour(resolve_target("aarch64-dotprod").target).name == "dotprod"
    assert x86.simd_flavour(resolve_target("armv7").target).name == "armv7"


def _parallel_extents(func) -> list:
    return [int(n) for n in re.findall(r"T\.parallel\((\d+)\)", func.script())]


@pytest.mark.parametrize("target_name, lanes", [("x86-avx2", 4), ("x86-avx512", 8)])
@pytest.mark.parametrize("o, h, w, rows", [(64, 12, 10, True), (16, 3, 5, False)])
def test_conv_tasks_are_output_rows_when_there_are_enough(target_name, lanes, o, h, w, rows):
    """With at least 4 tasks per core the conv's parallel loop runs over (channel block, output row) and each task
    walks its row's tiles serially (no div/mod of a fused tile index per tile); else the tiles are fused in too."""
    geo = binary_conv2d.Conv2dGeometry(64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    inputs = [("xp", np.zeros((1, h, w, 1), np.uint64)), ("wp", np.zeros((o, 3, 3, 1), np.uint64)),
              ("s", np.ones(o, np.float32)), ("b", np.zeros(o, np.float32))]
    func = _func("binary_conv2d", inputs, lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo))
    with resolve_target(target_name).target:
        scheduled = x86.schedule_kernel(func, "binary_conv2d", 2, knobs=x86.Knobs(1, 16, lanes))
    tasks = (o // 16) * h * (1 if rows else w)  # 1-pixel tiles of 16 channels
    assert tasks in _parallel_extents(scheduled), _parallel_extents(scheduled)
