"""Each TE operator against its numpy reference, and the references against PyTorch."""
from dataclasses import replace

import numpy as np
import pytest
import torch
import tvm
from tvm import te

from tvm_bnn.ops import binary_conv2d, binary_dense, binary_maxpool, bitpack, epilogue, ternary_conv2d


def run_te(inputs, build_out, out_dtype=None):
    """Build a TE computation on placeholders shaped like ``inputs`` with LLVM and run it."""
    phs = [te.placeholder(a.shape, str(a.dtype), name=f"in{i}") for i, a in enumerate(inputs)]
    out = build_out(*phs)
    func = te.create_prim_func(phs + [out])
    ex = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    dev = tvm.cpu()
    res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)), dev)
    ex(*[tvm.runtime.tensor(a, dev) for a in inputs], res)
    return res.numpy()


def pm1(rng, shape):
    return np.where(rng.standard_normal(shape) >= 0, 1.0, -1.0).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 63, 64, 65, 130])
def test_bitpack_nchw_matches_reference(rng, channels):
    x = rng.standard_normal((2, channels, 3, 5)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0  # the tie: 0 packs as +1
    got = run_te([x], bitpack.compute_nchw)
    np.testing.assert_array_equal(got, bitpack.reference_nchw(x))
    assert got[0, 0, 0, 0] & 1 == 1
    back = bitpack.unpack_reference(got, channels)
    np.testing.assert_array_equal(back, np.transpose(np.where(x >= 0, 1, -1), (0, 2, 3, 1)))


def test_bitpack_planes_matches_reference(rng):
    x = np.round(rng.standard_normal((2, 70, 3, 4)) * 2).astype(np.float32) / 2
    scale = rng.choice(np.array([1.0, -1.0, 0.0], np.float32), (3, 70))
    threshold = rng.choice(np.array([-0.5, 0.0, 0.5], np.float32), (3, 70))
    got = run_te([x, scale, threshold], bitpack.compute_planes)
    np.testing.assert_array_equal(got, bitpack.reference_planes(x, scale, threshold))
    np.testing.assert_array_equal(got[..., 1], bitpack.reference_nchw(x, scale[1], threshold[1]))
    unit = run_te([x, threshold], lambda a, t: bitpack.compute_planes(a, None, t))  # scale None: all ones
    np.testing.assert_array_equal(unit, bitpack.reference_planes(x, np.ones_like(threshold), threshold))


def test_bitpack_rows_matches_reference(rng):
    x = rng.standard_normal((3, 200)).astype(np.float32)
    np.testing.assert_array_equal(run_te([x], bitpack.compute_rows), bitpack.reference_rows(x))


CONV_CASES = [
    # C, O, H, W, (KH, KW), strides, padding (t, l, b, r), dilation
    (3, 5, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (70, 33, 9, 8, (3, 2), (2, 1), (1, 0, 2, 1), (1, 2)),
    (1, 1, 5, 5, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    (129, 65, 6, 7, (5, 5), (2, 3), (2, 2, 2, 2), (1, 1)),
    (64, 7, 10, 10, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),
]


@pytest.mark.parametrize("c,o,h,w,kernel,strides,padding,dilation", CONV_CASES)
def test_binary_conv2d_reference_matches_torch(rng, c, o, h, w, kernel, strides, padding, dilation):
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation)
    x, wt = pm1(rng, (2, c, h, w)), pm1(rng, (o, c) + kernel)
    padded = torch.nn.functional.pad(torch.tensor(x), (padding[1], padding[3], padding[0], padding[2]))
    expected = torch.nn.functional.conv2d(padded, torch.tensor(wt), stride=strides, dilation=dilation).numpy()
    np.testing.assert_array_equal(binary_conv2d.reference_dot(x, wt, geo), expected)


@pytest.mark.parametrize("c,o,h,w,kernel,strides,padding,dilation", CONV_CASES)
def test_binary_conv2d_op_matches_reference(rng, c, o, h, w, kernel, strides, padding, dilation):
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation)
    x, wt = pm1(rng, (2, c, h, w)), pm1(rng, (o, c) + kernel)
    scale = rng.uniform(0.1, 2, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    dot = binary_conv2d.reference_dot(x, wt, geo)
    xp, wp = bitpack.reference_nchw(x), binary_conv2d.pack_weights(wt)
    got = run_te([xp, wp, scale, bias], lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo))
    np.testing.assert_array_equal(got, epilogue.float_reference(dot, scale, bias, channel_axis=1))
    direction = rng.choice([-1, 0, 1], o).astype(np.int32)
    threshold = rng.integers(-5, 6, o).astype(np.int32)
    bits = run_te([xp, wp, direction, threshold], lambda a, b, d, t: binary_conv2d.compute_bits(a, b, d, t, geo))
    np.testing.assert_array_equal(bits, epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction,
                                                                threshold))


@pytest.mark.parametrize("pad_value", [0, 1, -1])
@pytest.mark.parametrize("c,o,h,w,kernel,strides,padding,dilation", CONV_CASES)
def test_ternary_conv2d_op_matches_reference(rng, c, o, h, w, kernel, strides, padding, dilation, pad_value):
    """Ternary filters (sign and mask planes) against the plain conv, under zero and constant-bit padding."""
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation, pad_value)
    x = pm1(rng, (2, c, h, w))
    wt = rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), (o, c) + kernel, p=[0.3, 0.4, 0.3])
    wt[0] = 0.0  # a filter of zeros only
    padded = torch.nn.functional.pad(torch.tensor(x), (padding[1], padding[3], padding[0], padding[2]),
                                     value=float(pad_value))
    expected = torch.nn.functional.conv2d(padded, torch.tensor(wt), stride=strides, dilation=dilation).numpy()
    np.testing.assert_array_equal(ternary_conv2d.reference_dot(x, wt, geo), expected)
    scale = rng.uniform(0.1, 2, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    wp = ternary_conv2d.pack_weights(wt * 0.25)
    # the same filter from the two +-1 planes whose mean it is (w1 = sign with 0 -> +1, w2 = sign with 0 -> -1)
    w1, w2 = (binary_conv2d.pack_weights(np.where(wt == 0, z, wt)) for z in (1.0, -1.0))
    np.testing.assert_array_equal(ternary_conv2d.from_plane_pair(w1, w2, c), wp)
    corr = ternary_conv2d.correction_table(wp, geo, (h, w))
    got = run_te([bitpack.reference_nchw(x), wp, scale, bias, corr],
                 lambda a, b, s, t, k: ternary_conv2d.compute(a, b, s, t, k, geo))
    np.testing.assert_array_equal(got, epilogue.float_reference(expected.astype(np.int64), scale, bias,
                                                                channel_axis=1))


@pytest.mark.parametrize("shifts,pad_bits", [((0, 0), (1, -1)), ((0, 1), (-1, -1)), ((0, 1, 2), (0, 1, -1))])
@pytest.mark.parametrize("c,o,h,w,kernel,strides,padding,dilation", CONV_CASES[:4])
def test_ternary_conv2d_planes_match_reference(rng, c, o, h, w, kernel, strides, padding, dilation, shifts,
                                               pad_bits):
    """Activation planes stacked, each padded with its own value: ``sum_p 2^shift_p * conv(plane_p)``."""
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding, dilation)
    xs = [pm1(rng, (2, c, h, w)) for _ in shifts]
    wt = rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), (o, c) + kernel)
    want = sum((1 << k) * ternary_conv2d.reference_dot(x, wt, replace(geo, pad_value=b))
               for x, k, b in zip(xs, shifts, pad_bits))
    wp = ternary_conv2d.pack_weights(wt)
    corr = ternary_conv2d.planes_correction(wp, geo, (h, w), shifts, pad_bits)
    scale, bias = np.ones(o, np.float32), np.zeros(o, np.float32)
    stacked = np.stack([bitpack.reference_nchw(x) for x in xs])
    for layout in ternary_conv2d.LAYOUTS:
        got = run_te([stacked, ternary_conv2d.to_layout(wp, layout), scale, bias, corr],
                     lambda a, b, s, t, k: ternary_conv2d.compute(a, b, s, t, k, geo, layout, shifts))
        np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=layout)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 200, 10), (4, 64, 65), (2, 1000, 130)])
def test_binary_dense_op_matches_reference(rng, m, k, n):
    x, wt = pm1(rng, (m, k)), pm1(rng, (n, k))
    dot = binary_dense.reference_dot(x, wt)
    np.testing.assert_array_equal(dot, (torch.tensor(x) @ torch.tensor(wt).T).numpy())
    scale, bias = np.ones(n, np.float32), np.zeros(n, np.float32)
    xp, wp = bitpack.reference_rows(x), bitpack.reference_rows(wt)
    got = run_te([xp, wp, scale, bias], lambda a, b, s, t: binary_dense.compute(a, b, s, t, k))
    np.testing.assert_array_equal(got, dot.astype(np.float32))
    d, t = np.ones(n, np.int32), np.zeros(n, np.int32)
    bits = run_te([xp, wp, d, t], lambda a, b, dd, tt: binary_dense.compute_bits(a, b, dd, tt, k))
    np.testing.assert_array_equal(bits, bitpack.reference_rows(dot.astype(np.float32)))


@pytest.mark.parametrize("pool,strides,padding,ceil_mode", [
    ((2, 2), (2, 2), (0, 0, 0, 0), False), ((3, 3), (2, 2), (1, 1, 1, 1), False), ((3, 2), (2, 1), (1, 0, 1, 0), True),
    ((2, 2), (2, 2), (0, 0, 0, 0), True)])
def test_binary_maxpool_is_or_of_bits(rng, pool, strides, padding, ceil_mode):
    geo = binary_maxpool.PoolGeometry(pool, strides, padding, (1, 1), ceil_mode)
    x = pm1(rng, (2, 70, 7, 9))
    expected = torch.nn.functional.max_pool2d(torch.tensor(x), pool, strides, (padding[0], padding[1]),
                                              ceil_mode=ceil_mode).numpy()
    np.testing.assert_array_equal(binary_maxpool.reference(x, geo), expected)
    got = run_te([bitpack.reference_nchw(x)], lambda a: binary_maxpool.compute(a, geo))
    np.testing.assert_array_equal(got, bitpack.reference_nchw(expected))
