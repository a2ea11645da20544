"""The x86 kernel schedules (every op, every x86 target, odd shapes) are exact: the numpy reference, bit for bit.

Each kernel is built alone from its TE, scheduled by ``schedules/x86.py`` for the target and compiled for it, and
run where the host has the target's CPU features (skipped with the reason otherwise: ``conftest.need_runnable``).
No timings here.
"""
import json

import numpy as np
import pytest
import tvm
from tvm import te

from tvm_bnn.ops import binary_conv2d, binary_dense, binary_maxpool, bitpack, epilogue, ternary_conv2d
from tvm_bnn.schedules import x86
from tvm_bnn.targets import resolve_target

from ..conftest import need_runnable

TARGETS = ["x86", "x86-avx2", "x86-popcnt"]


def _run(target_name, op, inputs, build_out, knobs=None, params=None):
    target = resolve_target(target_name).target
    phs = [te.placeholder(a.shape, str(a.dtype), name=f"in{i}") for i, a in enumerate(inputs)]
    out = build_out(*phs)
    func = te.create_prim_func(phs + [out]).with_attr("tvm_bnn.op", op)
    if params is not None:
        func = func.with_attr("tvm_bnn.params", json.dumps(params))
    with target:
        func = x86.schedule_kernel(func, op, 2, knobs=knobs)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target)
    need_runnable(target, "built, run skipped")
    dev = tvm.cpu()
    res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)), dev)
    ex(*[tvm.runtime.tensor(a, dev) for a in inputs], res)
    return res.numpy()


def exact_affine(rng, n):
    """scale = powers of two, bias = quarter integers: dot*scale+bias is exact with or without FMA contraction."""
    return (2.0 ** rng.integers(-3, 3, n)).astype(np.float32), (rng.integers(-40, 40, n) / 4).astype(np.float32)


def pm1(rng, shape):
    return np.where(rng.standard_normal(shape) >= 0, 1.0, -1.0).astype(np.float32)


CONV = [
    # N, C, O, H, W, (KH, KW), strides, padding (t, l, b, r), dilation
    (1, 1, 1, 5, 5, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    (2, 63, 7, 6, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (1, 65, 65, 7, 7, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    (3, 130, 9, 8, 10, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    (1, 300, 130, 9, 8, (3, 3), (1, 2), (1, 0, 2, 1), (2, 2)),
    (2, 64, 33, 10, 10, (3, 2), (2, 1), (0, 2, 1, 0), (1, 2)),
    (1, 256, 64, 6, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (1, 128, 16, 3, 3, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),  # no interior: every output on the border
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("n,c,o,h,w,kernel,strides,padding,dilation", CONV)
def test_binary_conv2d_kernels_exact(rng, target, n, c, o, h, w, kernel, strides, padding, dilation):
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation)
    x, wt = pm1(rng, (n, c, h, w)), pm1(rng, (o, c) + kernel)
    dot = binary_conv2d.reference_dot(x, wt, geo)
    xp, wp = bitpack.reference_nchw(x), binary_conv2d.pack_weights(wt)
    scale, bias = exact_affine(rng, o)
    got = _run(target, "binary_conv2d", [xp, wp, scale, bias],
               lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo))
    np.testing.assert_array_equal(got, epilogue.float_reference(dot, scale, bias, channel_axis=1))
    direction = rng.choice([-1, 0, 1], o).astype(np.int32)
    threshold = rng.integers(-5, 6, o).astype(np.int32)
    bits = _run(target, "binary_conv2d_bits", [xp, wp, direction, threshold],
                lambda a, b, d, t: binary_conv2d.compute_bits(a, b, d, t, geo))
    np.testing.assert_array_equal(bits, epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction,
                                                                threshold))


@pytest.mark.parametrize("target", ["x86", "x86-popcnt"])
@pytest.mark.parametrize("pad_value", [0, 1])
@pytest.mark.parametrize("n,c,o,h,w,kernel,strides,padding,dilation", CONV[1:6])
def test_binary_conv2d_with_weights_laid_out_at_compile_time(rng, target, pad_value, n, c, o, h, w, kernel,
                                                             strides, padding, dilation):
    """The kernel reading ``prepared_weights``' tables (schedules/weight_layout.py) equals the reference: the
    transposed filters (padded to whole words for the bits output) and the zero-padding correction per border
    class, computed once in numpy instead of in the kernel on every call."""
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation, pad_value)
    x, wt = pm1(rng, (n, c, h, w)), pm1(rng, (o, c) + kernel)
    dot = binary_conv2d.reference_dot(x, wt, geo)
    xp, wp = bitpack.reference_nchw(x), binary_conv2d.pack_weights(wt)
    scale, bias = exact_affine(rng, o)
    direction = rng.choice([-1, 0, 1], o).astype(np.int32)
    threshold = rng.integers(-5, 6, o).astype(np.int32)
    for op, extent, tail, compute in [
            ("binary_conv2d", None, [scale, bias], binary_conv2d.compute),
            ("binary_conv2d_bits", binary_conv2d.bits_extent(o), [direction, threshold], binary_conv2d.compute_bits)]:
        table, adjust = binary_conv2d.prepared_weights(wp, geo, (h, w), extent)
        assert table.shape == tuple(kernel) + (wp.shape[3], extent or o)
        assert (adjust is None) == (pad_value != 0 or not any(padding))
        tables = [table] + ([] if adjust is None else [adjust])

        def build(a, t, *rest, compute=compute, has_adjust=adjust is not None):
            adj, (u, v) = (rest[0], rest[1:]) if has_adjust else (None, rest)
            filters = te.placeholder(wp.shape, "uint64", name="filters")
            return compute(a, filters, u, v, geo, (t, adj))

        got = _run(target, op, [xp, *tables, *tail], build, params={"prepared": "weights_t"})
        want = (epilogue.float_reference(dot, scale, bias, channel_axis=1) if op == "binary_conv2d" else
                epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction, threshold))
        np.testing.assert_array_equal(got, want, err_msg=op)


def test_weight_layout_pass_lays_out_each_targets_weights():
    """Every x86 level's conv kernel reads tables laid out at compile time and lays out nothing per call: x86
    (vpopcntq) and x86-popcnt the channel-vectorised layout, x86-avx2 its byte-lane flavour's nibble planes; the
    portable C target keeps the packed filters (its kernels read them as they are)."""
    import torch
    import torch.nn.functional as F

    from tvm_bnn.core.pipeline import analyse, fuse_pipeline

    w = torch.sign(torch.randn(70, 5, 3, 3, generator=torch.Generator().manual_seed(0)))

    def model(x):
        return F.conv2d(torch.where(x >= 0, 1.0, -1.0), w, padding=1)

    class Net(torch.nn.Module):
        def forward(self, x):
            return model(x)

    analysed = analyse(Net(), (torch.randn(1, 5, 9, 7),))
    for name, flavour in [("x86", None), ("x86-popcnt", None), ("x86-avx2", "avx2"), ("c", "packed")]:
        spec = resolve_target(name)
        with spec.target:
            fused = fuse_pipeline(spec.target)(analysed.optimized)
        convs = [f for _, f in fused.functions_items()
                 if f.attrs is not None and str(f.attrs.get("tvm_bnn.op", "")).startswith("binary_conv2d")]
        assert len(convs) == 1
        params = json.loads(str(convs[0].attrs["tvm_bnn.params"]))
        prepared = flavour != "packed"
        assert (params.get("prepared") == "weights_t+pad_adjust") == prepared, name
        assert params.get("flavour") == (flavour if prepared else None), name
        assert x86._has_block(convs[0], "weights_t") != prepared, name
        assert x86._has_block(convs[0], "pad_adjust") != prepared, name


@pytest.mark.parametrize("target", ["x86", "x86-avx512", "x86-popcnt"])
@pytest.mark.parametrize("pad_value", [0, -1])
@pytest.mark.parametrize("n,c,o,h,w,kernel,strides,padding,dilation", CONV)
def test_ternary_conv2d_kernels_exact(rng, target, pad_value, n, c, o, h, w, kernel, strides, padding, dilation):
    """The ternary conv (sign and mask filters, output channels innermost: "HWIO") under the channel-vectorised
    schedule equals the plain conv with weights in {-1, 0, 1}."""
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation, pad_value)
    x = pm1(rng, (n, c, h, w))
    wt = rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), (o, c) + kernel)
    dot = ternary_conv2d.reference_dot(x, wt, geo)
    packed = ternary_conv2d.pack_weights(wt)
    corr = ternary_conv2d.correction_table(packed, geo, (h, w))
    scale, bias = exact_affine(rng, o)
    params = dict(geo.params(), layout="HWIO")
    got = _run(target, "ternary_conv2d", [bitpack.reference_nchw(x), ternary_conv2d.to_layout(packed, "HWIO"), scale,
                                          bias, corr],
               lambda a, b, s, t, k: ternary_conv2d.compute(a, b, s, t, k, geo, "HWIO"), params=params)
    np.testing.assert_array_equal(got, epilogue.float_reference(dot, scale, bias, channel_axis=1))


@pytest.mark.parametrize("target", ["x86", "x86-avx512", "x86-popcnt"])
@pytest.mark.parametrize("shifts,pad_bits", [((0, 0), (1, -1)), ((0, 1, 2), (0, 1, -1))])
@pytest.mark.parametrize("n,c,o,h,w,kernel,strides,padding,dilation", CONV[1:5])
def test_ternary_conv2d_planes_kernels_exact(rng, target, shifts, pad_bits, n, c, o, h, w, kernel, strides, padding,
                                             dilation):
    """Stacked activation planes, each padded with its own value, counted 2^shift times: the channel-vectorised
    ternary kernel equals ``sum_p 2^shift_p * conv(plane_p)``."""
    from dataclasses import replace

    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation)
    xs = [pm1(rng, (n, c, h, w)) for _ in shifts]
    wt = rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), (o, c) + kernel)
    dot = sum((1 << k) * ternary_conv2d.reference_dot(x, wt, replace(geo, pad_value=b))
              for x, k, b in zip(xs, shifts, pad_bits))
    packed = ternary_conv2d.pack_weights(wt)
    corr = ternary_conv2d.planes_correction(packed, geo, (h, w), shifts, pad_bits)
    scale, bias = exact_affine(rng, o)
    params = dict(geo.params(), layout="HWIO", shifts=list(shifts), pad_bits=list(pad_bits))
    stacked = np.stack([bitpack.reference_nchw(x) for x in xs])
    got = _run(target, "ternary_conv2d", [stacked, ternary_conv2d.to_layout(packed, "HWIO"), scale, bias, corr],
               lambda a, b, s, t, k: ternary_conv2d.compute(a, b, s, t, k, geo, "HWIO", shifts), params=params)
    np.testing.assert_array_equal(got, epilogue.float_reference(dot, scale, bias, channel_axis=1))


def test_ternary_pairs_become_ternary_kernels_where_the_target_has_them():
    """A ternary layer (two weight planes of equal scale) on a 3-level activation (two planes) is one ternary kernel
    over both planes on the x86 levels whose binary conv vectorises over output channels (vpopcntq, scalar popcnt),
    one per activation plane in the byte-lane form on AVX2 and NEON (schedules/simd_bytes.ternary_dot); the AVX-512
    kernel counts ``(x ^ s) & m`` with vpternlogq and vpopcntq."""
    import torch
    import torch.nn.functional as F

    from tvm_bnn.core.pipeline import analyse, fuse_pipeline

    w = torch.randn(70, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    w = torch.where(w.abs() < 0.5, 0.0, torch.sign(w))

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.conv2d(torch.clamp(torch.round(x), -1, 1), w, padding=1)  # 3 levels: two activation planes

    analysed = analyse(Net(), (torch.randn(1, 5, 9, 7),))
    for name, count in [("x86-avx512", 1), ("x86-popcnt", 1), ("x86-avx2", 2), ("aarch64", 2), ("armv7", 2)]:
        spec = resolve_target(name)
        with spec.target:
            fused = fuse_pipeline(spec.target)(analysed.optimized)
        calls = []
        for block in fused["main"].body.blocks:
            for binding in block.bindings:
                v = binding.value
                if isinstance(v, tvm.relax.Call) and getattr(v.op, "name", "") == "relax.call_tir":
                    attrs = fused[v.args[0]].attrs
                    if attrs is not None and "conv2d" in str(attrs.get("tvm_bnn.op", "")):
                        calls.append(str(attrs["tvm_bnn.op"]))
        assert calls == ["ternary_conv2d"] * count, (name, calls)

    geo = binary_conv2d.Conv2dGeometry(70, (3, 3), (1, 1), (1, 1, 1, 1))
    phs = [te.placeholder((1, 9, 7, 2), "uint64"), te.placeholder((2, 3, 3, 2, 70), "uint64"),
           te.placeholder((70,), "float32"), te.placeholder((70,), "float32"), te.placeholder((3, 3, 70), "int32")]
    func = te.create_prim_func(phs + [ternary_conv2d.compute(*phs, geo, "HWIO")]).with_attr(
        "tvm_bnn.op", "ternary_conv2d").with_attr("tvm_bnn.params", json.dumps(dict(geo.params(), layout="HWIO")))
    target = resolve_target("x86-avx512").target
    with target:
        scheduled = x86.schedule_kernel(func, "ternary_conv2d", 2)
    asm = tvm.compile(tvm.IRModule({"main": scheduled}), target=target).mod.inspect_source("asm")
    assert "vpternlogq" in asm and "vpopcntq" in asm


DENSE = [(1, 1, 1), (3, 63, 10), (4, 65, 65), (2, 130, 130), (5, 300, 7), (8, 1024, 64)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("m,k,n", DENSE)
def test_binary_dense_kernels_exact(rng, target, m, k, n):
    x, wt = pm1(rng, (m, k)), pm1(rng, (n, k))
    dot = binary_dense.reference_dot(x, wt)
    xp, wp = bitpack.reference_rows(x), bitpack.reference_rows(wt)
    scale, bias = exact_affine(rng, n)
    got = _run(target, "binary_dense", [xp, wp, scale, bias], lambda a, b, s, t: binary_dense.compute(a, b, s, t, k))
    np.testing.assert_array_equal(got, epilogue.float_reference(dot, scale, bias, channel_axis=1))
    direction = rng.choice([-1, 0, 1], n).astype(np.int32)
    threshold = rng.integers(-5, 6, n).astype(np.int32)
    bits = _run(target, "binary_dense_bits", [xp, wp, direction, threshold],
                lambda a, b, d, t: binary_dense.compute_bits(a, b, d, t, k))
    np.testing.assert_array_equal(bits, epilogue.bits_reference(dot, direction, threshold))


@pytest.mark.parametrize("knobs", [x86.Knobs(1, 1, 1, False), x86.Knobs(3, 8, 2, True), x86.Knobs(7, 16, 8, True),
                                   x86.Knobs(2, 64, 4, False)])
def test_explicit_knobs_exact(rng, knobs):
    geo = binary_conv2d.Conv2dGeometry(130, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    x, wt = pm1(rng, (1, 130, 7, 14)), pm1(rng, (70, 130, 3, 3))
    dot = binary_conv2d.reference_dot(x, wt, geo)
    xp, wp = bitpack.reference_nchw(x), binary_conv2d.pack_weights(wt)
    d, t = rng.choice([-1, 1], 70).astype(np.int32), rng.integers(-5, 6, 70).astype(np.int32)
    bits = _run("x86", "binary_conv2d_bits", [xp, wp, d, t],
                lambda a, b, dd, tt: binary_conv2d.compute_bits(a, b, dd, tt, geo), knobs=knobs)
    np.testing.assert_array_equal(bits, epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), d, t))
    xd, wd = pm1(rng, (6, 320)), pm1(rng, (70, 320))
    s, b = np.ones(70, np.float32), np.zeros(70, np.float32)
    got = _run("x86", "binary_dense", [bitpack.reference_rows(xd), bitpack.reference_rows(wd), s, b],
               lambda a, bb, ss, tt: binary_dense.compute(a, bb, ss, tt, 320), knobs=knobs)
    np.testing.assert_array_equal(got, binary_dense.reference_dot(xd, wd).astype(np.float32))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("n,c,h,w", [(1, 1, 5, 5), (2, 63, 7, 9), (3, 65, 4, 6), (1, 130, 3, 17), (1, 300, 2, 2),
                                     (1, 70, 3, 56), (2, 129, 2, 12)])
def test_bitpack_kernels_exact(rng, target, n, c, h, w):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0
    np.testing.assert_array_equal(_run(target, "bitpack_nchw", [x], bitpack.compute_nchw), bitpack.reference_nchw(x))
    rows = rng.standard_normal((n * 3, c)).astype(np.float32)
    np.testing.assert_array_equal(_run(target, "bitpack_rows", [rows], bitpack.compute_rows),
                                  bitpack.reference_rows(rows))


def test_bitpack_vectors_are_whole_registers():
    """Rows of 56 / 28 / 12 words: vectors of 8 / 4 / 4 uint64, not 14 or 7 (no whole number of registers)."""
    assert [x86.bitpack_lanes(w, 16) for w in (224, 56, 28, 12, 14, 6)] == [16, 8, 4, 4, 2, 2]
    assert [x86.bitpack_lanes(w, 16) for w in (7, 13, 9, 1)] == [7, 13, 9, 1]  # odd widths: the largest divisor
    assert x86.bitpack_lanes(64, 8) == 8
    assert all(w % x86.bitpack_lanes(w, 16) == 0 for w in range(1, 300))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("c,pool,strides,padding,ceil_mode", [
    (1, (2, 2), (2, 2), (0, 0, 0, 0), False), (65, (3, 3), (2, 2), (1, 1, 1, 1), False),
    (130, (3, 2), (2, 1), (1, 0, 1, 0), True), (300, (2, 2), (2, 2), (0, 0, 0, 0), True)])
def test_binary_maxpool_kernels_exact(rng, target, c, pool, strides, padding, ceil_mode):
    geo = binary_maxpool.PoolGeometry(pool, strides, padding, (1, 1), ceil_mode)
    x = pm1(rng, (2, c, 7, 9))
    got = _run(target, "binary_maxpool", [bitpack.reference_nchw(x)], lambda a: binary_maxpool.compute(a, geo))
    np.testing.assert_array_equal(got, bitpack.reference_nchw(binary_maxpool.reference(x, geo)))


@pytest.mark.parametrize("vectorize", ["channels", "words"])
@pytest.mark.parametrize("target", ["x86", "x86-popcnt"])
def test_both_conv_layouts_exact(rng, monkeypatch, vectorize, target):
    monkeypatch.setattr(binary_conv2d, "VECTORIZE", vectorize)
    geo = binary_conv2d.Conv2dGeometry(200, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    x, wt = pm1(rng, (1, 200, 6, 7)), pm1(rng, (72, 200, 3, 3))
    dot = binary_conv2d.reference_dot(x, wt, geo)
    xp, wp = bitpack.reference_nchw(x), binary_conv2d.pack_weights(wt)
    d, t = rng.choice([-1, 1], 72).astype(np.int32), rng.integers(-5, 6, 72).astype(np.int32)
    bits = _run(target, "binary_conv2d_bits", [xp, wp, d, t],
                lambda a, b, dd, tt: binary_conv2d.compute_bits(a, b, dd, tt, geo))
    np.testing.assert_array_equal(bits, epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), d, t))
    s, b = exact_affine(rng, 72)
    got = _run(target, "binary_conv2d", [xp, wp, s, b], lambda a, bb, ss, tt: binary_conv2d.compute(a, bb, ss, tt, geo))
    np.testing.assert_array_equal(got, epilogue.float_reference(dot, s, b, channel_axis=1))


@pytest.mark.parametrize("op", ["binary_conv2d_bits", "binary_dense"])
def test_design_space_samples_are_exact(rng, op):
    """Every sampled point of the MetaSchedule design space computes the same thing (a few seeds)."""
    from tvm import s_tir

    target = resolve_target("x86").target
    if op == "binary_conv2d_bits":
        geo = binary_conv2d.Conv2dGeometry(130, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
        x, wt = pm1(rng, (1, 130, 5, 12)), pm1(rng, (70, 130, 3, 3))
        dot = np.transpose(binary_conv2d.reference_dot(x, wt, geo), (0, 2, 3, 1))
        inputs = [bitpack.reference_nchw(x), binary_conv2d.pack_weights(wt),
                  rng.choice([-1, 1], 70).astype(np.int32), rng.integers(-5, 6, 70).astype(np.int32)]
        expected = epilogue.bits_reference(dot, inputs[2], inputs[3])
        make = lambda a, b, d, t: binary_conv2d.compute_bits(a, b, d, t, geo)  # noqa: E731
    else:
        x, wt = pm1(rng, (6, 320)), pm1(rng, (48, 320))
        inputs = [bitpack.reference_rows(x), bitpack.reference_rows(wt), np.ones(48, np.float32),
                  np.zeros(48, np.float32)]
        expected = binary_dense.reference_dot(x, wt).astype(np.float32)
        make = lambda a, b, s, t: binary_dense.compute(a, b, s, t, 320)  # noqa: E731
    phs = [te.placeholder(a.shape, str(a.dtype)) for a in inputs]
    func = te.create_prim_func(phs + [make(*phs)]).with_attr("tvm_bnn.op", op)
    dev = tvm.cpu()
    for seed in (1, 2, 3):
        sch = s_tir.Schedule(func, seed=seed)
        x86.design_space(sch, target=target)
        ex = tvm.compile(tvm.IRModule({"main": sch.mod["main"]}), target=target)
        out = tvm.runtime.tensor(np.zeros(expected.shape, expected.dtype), dev)
        ex(*[tvm.runtime.tensor(a, dev) for a in inputs], out)
        np.testing.assert_array_equal(out.numpy(), expected)


def test_scheduled_kernels_are_left_alone():
    """A PrimFunc that is already scheduled (e.g. from a tuning database) passes through unchanged."""
    geo = binary_conv2d.Conv2dGeometry(130, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    phs = [te.placeholder((1, 6, 6, 3), "uint64"), te.placeholder((70, 3, 3, 3), "uint64"),
           te.placeholder((70,), "int32"), te.placeholder((70,), "int32")]
    func = x86.schedule_kernel(te.create_prim_func(phs + [binary_conv2d.compute_bits(*phs, geo)]),
                               "binary_conv2d_bits", 2)
    assert x86.schedule_kernel(func, "binary_conv2d_bits", 2).same_as(func)
    phs = [te.placeholder((4, 5), "uint64"), te.placeholder((70, 5), "uint64"),
           te.placeholder((70,), "float32"), te.placeholder((70,), "float32")]
    func = x86.schedule_kernel(te.create_prim_func(phs + [binary_dense.compute(*phs, 300)]), "binary_dense", 2)
    assert x86.schedule_kernel(func, "binary_dense", 2).same_as(func)
