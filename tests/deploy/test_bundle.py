"""The standalone C bundle of a whole model (tvm_bnn.deploy.bundle): same outputs as the x86 build and PyTorch on
the host (gcc, clang if installed) and on an emulated Cortex-M4; one static arena with liveness reuse; clear errors.

A missing toolchain skips the build/run tests, except under CI=true, where it fails them (clang is optional).
"""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import tvm_bnn
from tvm_bnn import nn as bnn
from tvm_bnn.core.pipeline import analyse
from tvm_bnn.deploy.bundle import BundleError, build_bundle
from tvm_bnn.errors import InputError, TvmBnnError
from tvm_bnn.targets import qemu

from ..conftest import assert_float_close, need, randomize_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from digits_demo import make_model  # noqa: E402


def host_compilers():
    need("gcc")
    return ["gcc"] + (["clang"] if shutil.which("clang") else [])


def check_plan(bundle):
    """No two arena blocks whose lifetimes overlap share a byte; every block is 16-byte aligned and in the arena."""
    blocks = bundle.plan
    for name, off, nbytes, first, last in blocks:
        assert off % 16 == 0 and off + nbytes <= bundle.arena_bytes, (name, off, nbytes)
    for i, (n1, o1, s1, f1, l1) in enumerate(blocks):
        for n2, o2, s2, f2, l2 in blocks[i + 1:]:
            if f1 <= l2 and f2 <= l1:
                assert o1 + s1 <= o2 or o2 + s2 <= o1, (n1, o1, s1, f1, l1, n2, o2, s2, f2, l2)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_batchnorm(make_model())
    x = torch.randn(1, 1, 8, 8)
    _, optimized, _ = analyse(model, (x,))
    bundle = build_bundle(optimized, tmp_path_factory.mktemp("digits") / "bundle", (1, 1, 8, 8), (1, 10))
    with torch.no_grad():
        expected_torch = model(x).numpy()
    expected_x86 = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)(x.numpy())
    return bundle, x.numpy(), expected_x86, expected_torch


def test_digits_bundle_files(digits):
    bundle = digits[0]
    assert sorted(p.name for p in bundle.out_dir.iterdir()) == ["CMakeLists.txt", "Makefile", "README.md", "model.c",
                                                                "model.h",
                                                                "weights.c"]
    header = bundle.sources["model.h"]
    assert "int tvm_bnn_model_run(const float *in, float *out);" in header
    assert "#define TVM_BNN_INPUT_SIZE 64" in header and "#define TVM_BNN_OUTPUT_SIZE 10" in header
    code = bundle.sources["model.c"] + bundle.sources["weights.c"]
    for banned in ("malloc", "TVMBackend", "TVMFFI", "DLTensor", '#include "tvm', "printf"):
        assert banned not in code, banned
    assert "static uint8_t tvm_bnn_arena[" in bundle.sources["model.c"]
    assert bundle.math_functions == ()  # the digits model needs no libm
    assert not any("reshape" in k for k in bundle.kernels)  # the flatten is a view of the max-pool's output
    assert bundle.weight_bytes > 0 and bundle.sources["weights.c"].count("const ") >= 14
    check_plan(bundle)


def test_digits_bundle_host(digits, tmp_path):
    bundle, x, expected_x86, expected_torch = digits
    for cc in host_compilers():
        got = bundle.run_host(x, cc=cc, workdir=tmp_path / cc)
        assert got.shape == (1, 10) and got.dtype == np.float32
        assert_float_close(got, expected_x86, rtol=1e-5)
        assert_float_close(got, expected_torch, rtol=1e-4)


def test_digits_bundle_cortex_m4(digits, tmp_path):
    need("arm-none-eabi-gcc", "qemu-system-arm")
    bundle, x, expected_x86, expected_torch = digits
    got, instructions = bundle.run_board(x, "cortex-m4", workdir=tmp_path)
    assert_float_close(got, expected_x86, rtol=1e-5)
    assert_float_close(got, expected_torch, rtol=1e-4)
    assert instructions > 0
    sizes = bundle.last_board_run.sizes
    assert sizes["bss"] >= bundle.arena_bytes
    print(f"\ndigits on cortex-m4: {instructions:.0f} instructions/inference, arena {bundle.arena_bytes} B "
          f"(no reuse {bundle.no_reuse_bytes} B), weights {bundle.weight_bytes} B, sizes {sizes}")


@pytest.mark.parametrize("board", ["cortex-m0", "cortex-m7"])
def test_digits_bundle_other_boards(digits, tmp_path, board):
    """ARMv6-M with soft float (64-bit and float ops through libgcc) and the M7's double-precision FPU."""
    need("arm-none-eabi-gcc", "qemu-system-arm")
    bundle, x, expected_x86, _ = digits
    got, _ = bundle.run_board(x, board, workdir=tmp_path)
    assert_float_close(got, expected_x86, rtol=1e-5)


def test_lean_schedule_shrinks_the_arena(digits, tmp_path):
    """Inlining and per-consumer reductions: a far smaller arena than every stage materialised, same outputs."""
    need("gcc")
    bundle, x, expected_x86, _ = digits
    torch.manual_seed(0)
    model = randomize_batchnorm(make_model())
    _, optimized, _ = analyse(model, (torch.tensor(x),))
    fat = build_bundle(optimized, tmp_path / "fat", lean=False)
    assert bundle.arena_bytes * 3 < fat.arena_bytes, (bundle.arena_bytes, fat.arena_bytes)
    np.testing.assert_array_equal(fat.run_host(x, workdir=tmp_path / "gcc"),
                                  bundle.run_host(x, workdir=tmp_path / "gcc_lean"))


def test_bundle_makefile_builds_the_library(digits, tmp_path):
    need("arm-none-eabi-gcc", "make")
    src = digits[0].out_dir
    work = tmp_path / "b"
    shutil.copytree(src, work)
    proc = subprocess.run(["make", "-s", "CPU=cortex-m7", "FPU=fpv5-d16", "OPT=-O2 -Werror"], cwd=work,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (work / "libtvm_bnn_model.a").exists()


_TOOLCHAIN = """set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(CMAKE_C_FLAGS_INIT "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -ffreestanding")
"""
_FIRMWARE = """cmake_minimum_required(VERSION 3.15)
project(firmware C)
add_subdirectory(bundle tvm_bnn_model)
add_library(app STATIC app.c)
target_link_libraries(app PRIVATE tvm_bnn_model)
"""
_APP = """#include "model.h"
static float input[TVM_BNN_INPUT_SIZE], output[TVM_BNN_OUTPUT_SIZE];
int app_step(void) { return tvm_bnn_model_run(input, output); }
"""


def test_bundle_cmake_in_a_firmware_project(digits, tmp_path):
    """The README's recipe: a firmware's CMakeLists.txt add_subdirectory()s the bundle and links tvm_bnn_model; the
    CPU flags come from the firmware's toolchain file."""
    need("arm-none-eabi-gcc", "cmake")
    shutil.copytree(digits[0].out_dir, tmp_path / "bundle")
    (tmp_path / "CMakeLists.txt").write_text(_FIRMWARE)
    (tmp_path / "app.c").write_text(_APP)
    (tmp_path / "arm.cmake").write_text(_TOOLCHAIN)
    for cmd in (["cmake", "-S", ".", "-B", "build", "-DCMAKE_TOOLCHAIN_FILE=arm.cmake", "-DTVM_BNN_FLAGS=-Werror"],
                ["cmake", "--build", "build"]):
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    lib = tmp_path / "build" / "tvm_bnn_model" / "libtvm_bnn_model.a"
    symbols = subprocess.run(["arm-none-eabi-nm", str(lib)], capture_output=True, text=True).stdout
    assert " T tvm_bnn_model_run" in symbols, symbols
    header = subprocess.run(["arm-none-eabi-objdump", "-f", str(lib)], capture_output=True, text=True).stdout
    assert "elf32-littlearm" in header


def all_binary_model():
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        bnn.BinaryConv2d(3, 5, 3, padding=1, bias=False), torch.nn.BatchNorm2d(5),
        bnn.BinaryConv2d(5, 7, 3, padding=1, bias=False), torch.nn.BatchNorm2d(7), torch.nn.MaxPool2d(2),
        bnn.BinaryConv2d(7, 9, 3, padding=1, bias=False), torch.nn.BatchNorm2d(9), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), bnn.BinaryLinear(9 * 2 * 2, 11, bias=False))
    return randomize_batchnorm(model, rng_seed=5)


def test_all_binary_model_exact(tmp_path):
    model = all_binary_model()
    x = torch.randn(1, 3, 8, 8)
    _, optimized, report = analyse(model, (x,))
    assert all(r.binarized for r in report), str(report)
    bundle = build_bundle(optimized, tmp_path / "bundle", (1, 3, 8, 8), (1, 11))
    check_plan(bundle)
    assert any("bits" in k for k in bundle.kernels) and any("maxpool" in k for k in bundle.kernels)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.all(expected == np.round(expected))  # an integer dot product
    for cc in host_compilers():
        np.testing.assert_array_equal(bundle.run_host(x.numpy(), cc=cc, workdir=tmp_path / cc), expected)
    for k in range(3):  # more inputs (host only: each input is a rebuild)
        xk = torch.randn(1, 3, 8, 8)
        with torch.no_grad():
            np.testing.assert_array_equal(bundle.run_host(xk.numpy(), workdir=tmp_path / f"x{k}"), model(xk).numpy())
    fat = build_bundle(optimized, tmp_path / "fat", lean=False)  # every stage materialised: same integers
    assert fat.arena_bytes >= bundle.arena_bytes
    np.testing.assert_array_equal(fat.run_host(x.numpy(), workdir=tmp_path / "fat_gcc"), expected)
    need("arm-none-eabi-gcc", "qemu-system-arm")
    got, _ = bundle.run_board(x.numpy(), "cortex-m4", workdir=tmp_path / "m4")
    np.testing.assert_array_equal(got, expected)


def test_arena_reuse(digits):
    bundle = digits[0]
    # the intermediates and scratch side by side vs the planned arena
    assert bundle.arena_bytes < bundle.no_reuse_bytes
    live_max = 0
    steps = {b[3] for b in bundle.plan}
    for s in steps:
        live_max = max(live_max, sum(b[2] for b in bundle.plan if b[3] <= s <= b[4]))
    assert live_max <= bundle.arena_bytes


def _module(params, body_fn):
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body_fn(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def test_errors(tmp_path, digits):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    mod = _module([x], lambda bb, v: bb.emit(relax.op.add(v, v)))
    with pytest.raises(BundleError, match="not empty.*overwrite=True"):
        build_bundle(mod, occupied, (1, 4), (1, 4))
    assert (occupied / "keep.txt").exists()
    bundle = build_bundle(mod, occupied, (1, 4), (1, 4), overwrite=True)  # replaces it
    assert not (occupied / "keep.txt").exists() and bundle.arena_bytes == 0

    with pytest.raises(BundleError, match="input_shape"):
        build_bundle(mod, tmp_path / "shape", (1, 5), (1, 4))
    n = tvm.tirx.Var("n", "int64")
    dyn = relax.Var("x", relax.TensorType((n, 4), "float32"))
    with pytest.raises(BundleError, match="dynamic shape"):
        build_bundle(_module([dyn], lambda bb, v: bb.emit(relax.op.add(v, v))), tmp_path / "dyn")
    ext = _module([x], lambda bb, v: bb.emit(relax.call_dps_packed(
        "my_extern", relax.Tuple([v]), relax.TensorType((1, 4), "float32"))))
    with pytest.raises(BundleError, match="only call_tir"):
        build_bundle(ext, tmp_path / "ext")
    assert issubclass(BundleError, TvmBnnError)
    with pytest.raises(BundleError, match="input 0: shape"):
        digits[0].run_host(np.zeros((1, 1, 4, 4), np.float32))


def test_several_inputs_and_outputs(tmp_path, rng):
    """Two inputs, three outputs: one computed in place, one that is an input passed through (copied), one that
    is the first output again (copied): the C signature, the sizes in model.h and the values (host gcc)."""
    a = relax.Var("a", relax.TensorType((2, 3), "float32"))
    b = relax.Var("b", relax.TensorType((3,), "int32"))

    def body(bb, u, v):
        s = bb.emit(relax.op.multiply(u, u))
        return relax.Tuple([s, v, s])

    bundle = build_bundle(_module([a, b], body), tmp_path / "multi")
    header = bundle.sources["model.h"]
    assert "int tvm_bnn_model_run(const float *in0, const int32_t *in1, float *out0, int32_t *out1, float *out2);" \
        in header
    assert "#define TVM_BNN_INPUT1_SIZE 3" in header and "#define TVM_BNN_OUTPUT0_SIZE 6" in header
    assert "TVM_BNN_INPUT_SIZE" not in header  # only defined for one input
    x = rng.standard_normal((2, 3)).astype(np.float32)
    y = rng.integers(-9, 9, 3).astype(np.int32)
    got = bundle.run_host([x, y])
    assert isinstance(got, tuple) and len(got) == 3
    np.testing.assert_array_equal(got[0], x * x)
    np.testing.assert_array_equal(got[1], y)
    np.testing.assert_array_equal(got[2], x * x)
    with pytest.raises(BundleError, match="2 input"):
        bundle.run_host(x)


@pytest.mark.parametrize("target,tools", [("c", ("gcc",)), ("cortex-m4", ("arm-none-eabi-gcc", "qemu-system-arm")),
                                          ("aarch64", ("aarch64-linux-gnu-gcc", "qemu-aarch64"))])
def test_compiled_model_with_two_inputs_and_outputs(tmp_path, target, tools):
    need(*tools)
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = bnn.BinaryConv2d(5, 7, 3, padding=1)
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, image, features):
            return self.conv(image).mean(dim=(2, 3)), self.fc(features)

    torch.manual_seed(0)
    model = TwoHeads().eval()
    x, f = torch.randn(1, 5, 6, 6), torch.randn(2, 4)
    cm = tvm_bnn.compile(model, target, example_inputs=(x, f))
    assert cm.num_outputs == 2 and cm.report.num_binarized == 1
    y0, y1 = cm(x, f)
    with torch.no_grad():
        r0, r1 = model(x, f)
    assert_float_close(y0, r0.numpy())
    assert_float_close(y1, r1.numpy())
    with pytest.raises(InputError, match="2 input"):
        cm(x)


def test_float_only_bundle(tmp_path):
    """A float-only module (multiply + reshape, fused into one kernel) writes ``out`` directly."""
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    mod = _module([x], lambda bb, v: bb.emit(relax.op.reshape(bb.emit(relax.op.multiply(v, v)), (6,))))
    bundle = build_bundle(mod, tmp_path / "b", (2, 3), (6,))
    assert len(bundle.kernels) == 1 and bundle.arena_bytes <= 32
    xv = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    for cc in host_compilers():
        np.testing.assert_array_equal(bundle.run_host(xv, cc=cc, workdir=tmp_path / cc), (xv * xv).reshape(6))


def test_float_digits_model_bundle(tmp_path):
    """The same digits model without our binarization passes (float convs on ±1 values): a plain float C bundle."""
    from tvm_bnn.frontends import import_model
    from tvm_bnn.passes.cleanup import cleanup

    need("gcc")
    torch.manual_seed(0)
    model = randomize_batchnorm(make_model())
    x = torch.randn(1, 1, 8, 8)
    with tvm.transform.PassContext(opt_level=3):
        mod = cleanup()(import_model(model, (x,)).mod)
    bundle = build_bundle(mod, tmp_path / "float", (1, 1, 8, 8), (1, 10))
    kernels_c = bundle.sources["model.c"].split("#endif /* TVM_BNN_POPCOUNT_DEFINED */")[1]
    assert "tvm_bnn_popcount" not in kernels_c  # no binary kernel in the float build
    with torch.no_grad():
        expected = model(x).numpy()
    assert_float_close(bundle.run_host(x.numpy(), workdir=tmp_path / "gcc"), expected, rtol=1e-4)
