"""Our TE kernels as plain C (TVM "c" codegen + tvm_bnn popcount lowering), run on an emulated Cortex-M board
(qemu-system-arm, semihosting) and on the host: bit-exact against the numpy references of tvm_bnn/ops.

A missing toolchain skips these tests, except under CI=true, where it fails them (clang is optional everywhere).
"""
import re

import numpy as np
import pytest
from tvm import te

from tvm_bnn.errors import ToolchainMissingError
from tvm_bnn.ops import binary_conv2d, binary_dense, binary_maxpool, bitpack, epilogue
from tvm_bnn.targets import qemu
from tvm_bnn.targets.c_codegen import PREAMBLE, generate_c, harness_main

from ..conftest import need




def pm1(rng, shape):
    return np.where(rng.standard_normal(shape) >= 0, 1.0, -1.0).astype(np.float32)


def kernel_sources(build_out, inputs):
    """(inputs: [(name, array)]) -> (C sources of one kernel + a main that runs it once and outputs its result,
    the output's CParam)."""
    phs = [te.placeholder(a.shape, str(a.dtype), name=n) for n, a in inputs]
    func = te.create_prim_func(phs + [build_out(*phs)])
    src = generate_c({"kernel": func})
    kernel = src.kernels["kernel"]
    out = kernel.params[len(inputs)]
    assert not out.scratch and not out.readonly
    assert all(p.readonly for p in kernel.params[:len(inputs)])  # inputs are const: weights can sit in flash
    main = harness_main(src, [("kernel", [p.name for p in kernel.params])], dict(inputs), [out.name])
    return {"kernels.c": src.code, "main.c": main}, out


def run_everywhere(tmp_path, sources, out, expected, board="cortex-m4", host=True):
    need("arm-none-eabi-gcc", "qemu-system-arm")
    run = qemu.run_on_board(sources, board, workdir=tmp_path / board)
    got = np.frombuffer(run.output, out.dtype).reshape(out.shape)
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    np.testing.assert_array_equal(got, expected)
    assert run.regions == 1 and run.instructions > 0
    if host:
        need("gcc")
        for cc in ("gcc", "clang"):
            if cc == "clang" and qemu.toolchain_status()["clang"] is None:
                continue
            res = qemu.run_on_host(sources, cc, workdir=tmp_path / cc)
            np.testing.assert_array_equal(np.frombuffer(res.output, out.dtype).reshape(out.shape), expected)
    return run


CONV_CASES = [
    # C, O, H, W, kernel, strides, padding (t, l, b, r)
    (3, 5, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1)),
    (65, 7, 7, 6, (3, 3), (2, 2), (1, 1, 1, 1)),
    (65, 65, 6, 5, (3, 2), (2, 1), (1, 0, 2, 1)),
    (3, 3, 5, 5, (1, 1), (1, 1), (0, 0, 0, 0)),
]


@pytest.mark.parametrize("c,o,h,w,kernel,strides,padding", CONV_CASES)
def test_binary_conv2d_float_output(tmp_path, rng, c, o, h, w, kernel, strides, padding):
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding)
    x, wt = pm1(rng, (1, c, h, w)), pm1(rng, (o, c) + kernel)
    scale = rng.uniform(0.1, 2, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    expected = epilogue.float_reference(binary_conv2d.reference_dot(x, wt, geo), scale, bias, channel_axis=1)
    sources, out = kernel_sources(lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo), [
        ("xp", bitpack.reference_nchw(x)), ("wp", binary_conv2d.pack_weights(wt)), ("scale", scale), ("bias", bias)])
    run_everywhere(tmp_path, sources, out, expected)


@pytest.mark.parametrize("c,o,h,w,kernel,strides,padding", CONV_CASES[:3])
def test_binary_conv2d_bits_output(tmp_path, rng, c, o, h, w, kernel, strides, padding):
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding)
    x, wt = pm1(rng, (1, c, h, w)), pm1(rng, (o, c) + kernel)
    direction = rng.choice([-1, 0, 1], o).astype(np.int32)
    threshold = rng.integers(-5, 6, o).astype(np.int32)
    dot = binary_conv2d.reference_dot(x, wt, geo)
    expected = epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction, threshold)
    sources, out = kernel_sources(lambda a, b, d, t: binary_conv2d.compute_bits(a, b, d, t, geo), [
        ("xp", bitpack.reference_nchw(x)), ("wp", binary_conv2d.pack_weights(wt)), ("direction", direction),
        ("threshold", threshold)])
    run_everywhere(tmp_path, sources, out, expected)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 200, 10), (2, 130, 65)])
def test_binary_dense(tmp_path, rng, m, k, n):
    x, wt = pm1(rng, (m, k)), pm1(rng, (n, k))
    dot = binary_dense.reference_dot(x, wt)
    xp, wp = bitpack.reference_rows(x), bitpack.reference_rows(wt)
    scale = rng.uniform(0.1, 2, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    sources, out = kernel_sources(lambda a, b, s, t: binary_dense.compute(a, b, s, t, k),
                                  [("xp", xp), ("wp", wp), ("scale", scale), ("bias", bias)])
    run_everywhere(tmp_path / "f", sources, out, epilogue.float_reference(dot, scale, bias, channel_axis=1))
    d, t = rng.choice([-1, 1], n).astype(np.int32), rng.integers(-3, 4, n).astype(np.int32)
    sources, out = kernel_sources(lambda a, b, dd, tt: binary_dense.compute_bits(a, b, dd, tt, k),
                                  [("xp", xp), ("wp", wp), ("direction", d), ("threshold", t)])
    run_everywhere(tmp_path / "b", sources, out, epilogue.bits_reference(dot, d, t))


@pytest.mark.parametrize("channels", [3, 64, 65])
def test_bitpack(tmp_path, rng, channels):
    x = rng.standard_normal((1, channels, 3, 4)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0  # the tie packs as +1
    x[0, -1, 1, 1] = -0.0
    sources, out = kernel_sources(bitpack.compute_nchw, [("x", x)])
    run_everywhere(tmp_path, sources, out, bitpack.reference_nchw(x))


@pytest.mark.parametrize("pool,strides,padding,ceil_mode", [
    ((3, 3), (2, 2), (1, 1, 1, 1), False), ((2, 2), (2, 2), (0, 0, 0, 0), True)])
def test_binary_maxpool(tmp_path, rng, pool, strides, padding, ceil_mode):
    geo = binary_maxpool.PoolGeometry(pool, strides, padding, (1, 1), ceil_mode)
    x = pm1(rng, (1, 70, 7, 9))
    sources, out = kernel_sources(lambda a: binary_maxpool.compute(a, geo), [("xp", bitpack.reference_nchw(x))])
    run_everywhere(tmp_path, sources, out, bitpack.reference_nchw(binary_maxpool.reference(x, geo)))


def test_chain_of_kernels_in_one_file(tmp_path, rng):
    """bitpack -> binary conv (bits out) -> binary maxpool, three kernels in one C file (the popcount helpers
    once), intermediates passed through the harness's static arrays."""
    c, o, h, w = 5, 70, 8, 8
    geo = binary_conv2d.Conv2dGeometry(c, (3, 3), (1, 1), (1, 1, 1, 1))
    pgeo = binary_maxpool.PoolGeometry((2, 2), (2, 2))
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    wt = pm1(rng, (o, c, 3, 3))
    direction = rng.choice([-1, 1], o).astype(np.int32)
    threshold = rng.integers(-4, 5, o).astype(np.int32)

    xf = te.placeholder(x.shape, "float32", name="x")
    pack = te.create_prim_func([xf, bitpack.compute_nchw(xf)])
    xp = te.placeholder((1, h, w, 1), "uint64", name="xp")
    wp = te.placeholder((o, 3, 3, 1), "uint64", name="wp")
    d = te.placeholder((o,), "int32", name="direction")
    t = te.placeholder((o,), "int32", name="threshold")
    conv = te.create_prim_func([xp, wp, d, t, binary_conv2d.compute_bits(xp, wp, d, t, geo)])
    yp = te.placeholder((1, h, w, 2), "uint64", name="yp")
    pool = te.create_prim_func([yp, binary_maxpool.compute(yp, pgeo)])
    src = generate_c({"pack": pack, "conv": conv, "pool": pool})
    assert src.code.count("uint64_t tvm_bnn_popcount64(") == 2  # SWAR and builtin branches, once each
    assert not re.search(r"TVMBackend|TVMFFI|TVM_DLL|tvm_ffi|DLTensor|malloc|#include \"", src.code)

    scratch = {name: [f"{name}_{p.name}" if p.scratch else None for p in k.params] for name, k in src.kernels.items()}
    calls = [("pack", ["x", "xbits"]),
             ("conv", ["xbits", "wp", "direction", "threshold", "ybits"] + [s for s in scratch["conv"] if s]),
             ("pool", ["ybits", "pooled"])]
    main = harness_main(src, calls, {"x": x, "wp": binary_conv2d.pack_weights(wt), "direction": direction,
                                     "threshold": threshold}, ["pooled"])
    out = src.kernels["pool"].params[1]
    dot = binary_conv2d.reference_dot(np.where(x >= 0, 1.0, -1.0), wt, geo)
    bits = epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction, threshold)
    y_pm1 = np.transpose(bitpack.unpack_reference(bits, o), (0, 3, 1, 2))
    expected = bitpack.reference_nchw(binary_maxpool.reference(y_pm1, pgeo))
    run_everywhere(tmp_path, {"kernels.c": src.code, "main.c": main}, out, expected)


@pytest.mark.parametrize("board", ["cortex-m0", "cortex-m3", "cortex-m7", "cortex-m55"])
def test_other_boards(tmp_path, rng, board):
    """Soft float and ARMv6-M (64-bit ops through libgcc) included: the same C is exact on every preset board."""
    geo = binary_conv2d.Conv2dGeometry(65, (3, 3), (2, 2), (1, 1, 1, 1))
    x, wt = pm1(rng, (1, 65, 5, 5)), pm1(rng, (4, 65, 3, 3))
    scale = rng.uniform(0.1, 2, 4).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    expected = epilogue.float_reference(binary_conv2d.reference_dot(x, wt, geo), scale, bias, channel_axis=1)
    sources, out = kernel_sources(lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo), [
        ("xp", bitpack.reference_nchw(x)), ("wp", binary_conv2d.pack_weights(wt)), ("scale", scale), ("bias", bias)])
    run_everywhere(tmp_path, sources, out, expected, board=board, host=False)


def test_instruction_count_formula(tmp_path):
    """SysTick under -icount shift=7: a loop of exactly 2n+1 instructions measures as 2n+1 (within one)."""
    need("arm-none-eabi-gcc", "qemu-system-arm")
    measured, expected = qemu.calibrate("cortex-m4", 100_000, workdir=tmp_path)
    assert abs(measured - expected) <= 1.0, (measured, expected)


def test_popcount_helpers_exact_on_board(tmp_path, rng):
    """Both helper variants (SWAR default, __builtin_popcount) against numpy on edge-case and random words."""
    words = np.concatenate([np.array([0, 1, 2**63, 2**64 - 1, 0x5555555555555555, 0xAAAAAAAAAAAAAAAA,
                                      0xFFFFFFFF, 0xFFFFFFFF00000000], np.uint64),
                            rng.integers(0, 2**63, 56, dtype=np.uint64) * 2 + rng.integers(0, 2, 56, dtype=np.uint64)])
    expected = np.array([bin(int(v)).count("1") for v in words], np.uint32)
    main = PREAMBLE + '#include "tvm_bnn_bm.h"\nstatic const uint64_t w[64] = {' + ", ".join(
        f"0x{int(v):x}ull" for v in words) + "};\nstatic uint32_t r[128];\nint main(void) {\n" \
        "  for (int i = 0; i < 64; ++i) {\n    r[2 * i] = (uint32_t)tvm_bnn_popcount64(w[i]);\n" \
        "    r[2 * i + 1] = tvm_bnn_popcount32((uint32_t)w[i]) + tvm_bnn_popcount16((uint16_t)(w[i] >> 32))\n" \
        "        + tvm_bnn_popcount8((uint8_t)(w[i] >> 48)) + tvm_bnn_popcount8((uint8_t)(w[i] >> 56));\n  }\n" \
        "  tvm_bnn_bm_output(r, sizeof(r));\n  return 0;\n}\n"
    need("arm-none-eabi-gcc", "qemu-system-arm")
    for variant, defines in [("swar", ()), ("builtin", ("TVM_BNN_POPCOUNT_BUILTIN",))]:
        run = qemu.run_on_board({"main.c": main}, "cortex-m4", workdir=tmp_path / variant, defines=defines)
        got = np.frombuffer(run.output, np.uint32).reshape(64, 2)
        np.testing.assert_array_equal(got[:, 0], expected, err_msg=variant)
        np.testing.assert_array_equal(got[:, 1], expected, err_msg=variant)


def test_missing_toolchain_names_the_package(monkeypatch):
    monkeypatch.setattr(qemu.shutil, "which", lambda tool: None)
    with pytest.raises(ToolchainMissingError, match="apt-get install gcc-arm-none-eabi"):
        qemu.build_firmware({"main.c": "int main(void) { return 0; }\n"})
    with pytest.raises(ToolchainMissingError, match="qemu-system-arm"):
        qemu.run_firmware("/nonexistent/fw.elf")


def test_firmware_failures_are_reported(tmp_path):
    """A non-zero return, a fault and a hang each raise FirmwareError (the hang through the outer timeout)."""
    need("arm-none-eabi-gcc", "qemu-system-arm")
    with pytest.raises(qemu.FirmwareError, match="exited with 5"):
        qemu.run_on_board({"main.c": "int main(void) { return 5; }\n"}, workdir=tmp_path / "rc")
    with pytest.raises(qemu.FirmwareError, match="fault"):
        qemu.run_on_board({"main.c": "int main(void) { return *(volatile int *)0xF0000000u; }\n"},
                          workdir=tmp_path / "fault")
    with pytest.raises(qemu.FirmwareError, match="timed out"):
        qemu.run_on_board({"main.c": "int main(void) { for (;;) {} }\n"}, workdir=tmp_path / "hang", timeout=1)


@pytest.mark.parametrize("board", ["cortex-m55", "cortex-m7"])
def test_startup_survives_vectorised_copies(tmp_path, board):
    """At -O3 gcc vectorises loops into MVE/FPU instructions, the startup's .data copy among them: the reset handler
    enables the FPU before copying (and does not vectorise), so a firmware (an exported bundle built with OPT=-O3)
    starts and its initialised data is right."""
    need("arm-none-eabi-gcc", "qemu-system-arm")
    src = ('#include <stdint.h>\n#include "tvm_bnn_bm.h"\n'
           "static uint32_t data[64] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3};\nstatic float f[64];\n"
           "int main(void) { for (int i = 0; i < 64; ++i) f[i] = (float)data[i] * 1.5f;\n"
           "  uint32_t s = 0; for (int i = 0; i < 64; ++i) s += (uint32_t)(f[i] * 2.0f);\n"
           "  tvm_bnn_bm_output(&s, 4); return 0; }\n")
    run = qemu.run_on_board({"main.c": src}, board, workdir=tmp_path, opt="-O3")
    assert int.from_bytes(run.output, "little") == 3 * (3 + 1 + 4 + 1 + 5 + 9 + 2 + 6 + 5 + 3 + 5 + 8 + 9 + 7 + 9 + 3)
