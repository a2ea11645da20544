"""ARM Linux targets (aarch64, armv7 NEON): kernels compiled by TVM's LLVM codegen into plain-C-ABI objects and run
under qemu-user, whole models against PyTorch, the cross-compiled runtime library, and the bare-metal AArch64
instruction counter.

A missing toolchain skips these tests, except under CI=true, where it fails them.
"""
import os
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tvm import te

import tvm_bnn
from tvm_bnn import nn as bnn
from tvm_bnn.errors import UnknownTargetError
from tvm_bnn.ops import binary_conv2d, binary_dense, binary_maxpool, bitpack, epilogue
from tvm_bnn.schedules.apply import default_schedule
from tvm_bnn.targets import qemu, resolve_target
from tvm_bnn.targets.c_codegen import harness_main
from tvm_bnn.targets.llvm_object import generate_object

from ..conftest import assert_float_close, need, randomize_batchnorm

ARCHES = ["aarch64", "armv7"]
ELF_MACHINE = {"aarch64": 0xB7, "armv7": 0x28}


def need_arch(arch):
    need(qemu.linux_arch(arch).cc, qemu.linux_arch(arch).qemu)


def pm1(rng, shape):
    return np.where(rng.standard_normal(shape) >= 0, 1.0, -1.0).astype(np.float32)


def run_kernel(tmp_path, arch, build_out, inputs, op):
    """One TE kernel, scheduled by our default schedule for the ARM target (NEON), compiled to an object, run once
    under qemu-user; returns its output."""
    need_arch(arch)
    spec = resolve_target(arch)
    phs = [te.placeholder(a.shape, str(a.dtype), name=n) for n, a in inputs]
    func = te.create_prim_func(phs + [build_out(*phs)]).with_attr("tvm_bnn.op", op)
    with spec.target:
        scheduled = default_schedule(func, spec)
    src = generate_object({"kernel": scheduled}, spec.target)
    kernel = src.kernels["kernel"]
    assert all(p.readonly for p in kernel.params[:len(inputs)])
    out = kernel.params[len(inputs)]
    assert not out.readonly
    main = harness_main(src, [("kernel", [p.name for p in kernel.params])], dict(inputs), [out.name])
    run = qemu.run_linux_user({"main.c": main}, arch, {"kernels.o": src.object_bytes}, workdir=tmp_path / arch)
    return np.frombuffer(run.output, out.dtype).reshape(out.shape)


CONV_CASES = [
    # C, O, H, W, kernel, strides, padding (t, l, b, r)
    (3, 5, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1)),
    (70, 33, 9, 7, (3, 3), (2, 2), (1, 1, 1, 1)),
    (65, 66, 6, 5, (3, 2), (2, 1), (1, 0, 2, 1)),
    (130, 16, 5, 5, (1, 1), (1, 1), (0, 0, 0, 0)),
]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("c,o,h,w,kernel,strides,padding", CONV_CASES)
def test_binary_conv2d_neon_exact(tmp_path, rng, arch, c, o, h, w, kernel, strides, padding):
    geo = binary_conv2d.Conv2dGeometry(c, kernel, strides, padding)
    x, wt = pm1(rng, (2, c, h, w)), pm1(rng, (o, c) + kernel)
    xp, wp = bitpack.reference_nchw(x), binary_conv2d.pack_weights(wt)
    dot = binary_conv2d.reference_dot(x, wt, geo)
    scale = rng.uniform(0.1, 2, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    got = run_kernel(tmp_path / "f", arch, lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo),
                     [("xp", xp), ("wp", wp), ("scale", scale), ("bias", bias)], "binary_conv2d")
    # the integer dot is exact; LLVM may fuse the float epilogue's multiply-add on ARM (one rounding, not two)
    np.testing.assert_allclose(got, epilogue.float_reference(dot, scale, bias, channel_axis=1), rtol=1e-6, atol=1e-5)
    direction = rng.choice([-1, 0, 1], o).astype(np.int32)
    threshold = rng.integers(-5, 6, o).astype(np.int32)
    got = run_kernel(tmp_path / "b", arch, lambda a, b, d, t: binary_conv2d.compute_bits(a, b, d, t, geo),
                     [("xp", xp), ("wp", wp), ("direction", direction), ("threshold", threshold)],
                     "binary_conv2d_bits")
    np.testing.assert_array_equal(got, epilogue.bits_reference(np.transpose(dot, (0, 2, 3, 1)), direction, threshold))


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 200, 10), (5, 1000, 67)])
def test_binary_dense_neon_exact(tmp_path, rng, arch, m, k, n):
    x, wt = pm1(rng, (m, k)), pm1(rng, (n, k))
    xp, wp = bitpack.reference_rows(x), bitpack.reference_rows(wt)
    scale = rng.uniform(0.1, 2, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    got = run_kernel(tmp_path, arch, lambda a, b, s, t: binary_dense.compute(a, b, s, t, k),
                     [("xp", xp), ("wp", wp), ("scale", scale), ("bias", bias)], "binary_dense")
    expected = epilogue.float_reference(binary_dense.reference_dot(x, wt), scale, bias, channel_axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)  # fused multiply-add: see above
    got = run_kernel(tmp_path / "bits", arch, lambda a, b, s, t: binary_dense.compute_bits(a, b, s, t, k),
                     [("xp", xp), ("wp", wp), ("direction", np.sign(scale).astype(np.int32)),
                      ("threshold", np.round(bias).astype(np.int32))], "binary_dense_bits")
    np.testing.assert_array_equal(got, epilogue.bits_reference(binary_dense.reference_dot(x, wt),
                                                               np.sign(scale).astype(np.int32),
                                                               np.round(bias).astype(np.int32)))


@pytest.mark.parametrize("arch", ARCHES)
def test_bitpack_and_maxpool_neon_exact(tmp_path, rng, arch):
    x = rng.standard_normal((2, 67, 5, 7)).astype(np.float32)
    x[0, 0, 0, 0], x[1, 66, 4, 6] = 0.0, -0.0  # ties pack as +1
    got = run_kernel(tmp_path / "p", arch, bitpack.compute_nchw, [("x", x)], "bitpack_nchw")
    np.testing.assert_array_equal(got, bitpack.reference_nchw(x))
    packed = bitpack.reference_nchw(x)
    geo = binary_maxpool.PoolGeometry((3, 3), (2, 2), (1, 1, 1, 1))
    got = run_kernel(tmp_path / "m", arch, lambda a: binary_maxpool.compute(a, geo), [("xp", packed)],
                     "binary_maxpool")
    pm = np.where(x >= 0, 1.0, -1.0).astype(np.float32)
    np.testing.assert_array_equal(got, bitpack.reference_nchw(binary_maxpool.reference(pm, geo)))


class SpineNet(torch.nn.Module):
    """The spine's forms in one model: float stem, BN with negative and zero gamma (threshold fusion), max-pool on
    binary activations, a residual add, stride 2 with odd channels, a binary dense classifier."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 33, 3, padding=1)
        self.bn0 = torch.nn.BatchNorm2d(33)
        self.c1 = bnn.BinaryConv2d(33, 33, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(33)
        self.c2 = bnn.BinaryConv2d(33, 70, 3, stride=2, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(70)
        self.fc = bnn.BinaryLinear(70 * 3 * 3, 11)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        x = x + self.bn1(self.c1(x))
        x = F.max_pool2d(x, 2)
        x = self.bn2(self.c2(x))
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def spine():
    torch.manual_seed(3)
    model = randomize_batchnorm(SpineNet()).eval()
    with torch.no_grad():
        model.bn1.weight[:4] = torch.tensor([-1.0, 0.0, -0.5, 0.0])
    return model


@pytest.mark.parametrize("arch", ARCHES)
def test_compiled_model_matches_pytorch_under_qemu_user(spine, arch):
    need_arch(arch)
    x = torch.randn(2, 3, 13, 13)
    cm = tvm_bnn.compile(spine, arch, example_inputs=(x,), progress=False)
    assert cm.report.num_binarized == 3
    y = cm(x)
    with torch.no_grad():
        ref = spine(x).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)
    assert "cnt" in subprocess.run([qemu.linux_arch(arch).cc.replace("gcc", "objdump"), "-d",
                                    str(cm.bundle.files["kernels.o"])], capture_output=True, text=True).stdout


@pytest.mark.parametrize("arch", ARCHES)
def test_export_runtime_library_and_bundle(spine, arch, tmp_path):
    need_arch(arch)
    x = torch.randn(1, 3, 13, 13)
    cm = tvm_bnn.compile(spine, arch, example_inputs=(x,), progress=False)
    so = cm.export(str(tmp_path / "model.so"))
    header = open(so, "rb").read(20)
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == ELF_MACHINE[arch]
    assert os.path.exists(so + ".tvm_bnn.json")
    with pytest.raises(FileExistsError):
        cm.export(so)
    out = cm.export(str(tmp_path / "bundle"))
    assert {"model.h", "model.c", "kernels.o", "weights.S", "weights.bin", "Makefile"} <= set(os.listdir(out))
    proc = subprocess.run(["make", "-C", out], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(os.path.join(out, "libtvm_bnn_model.a"))


def test_aarch64_instruction_count_is_calibrated_and_outputs_match(spine, tmp_path):
    need_arch("aarch64")
    need("qemu-system-aarch64")
    n = 100_000
    loop = ('#include "tvm_bnn_bm.h"\nint main(void) {\n  tvm_bnn_bm_begin();\n'
            '  __asm__ volatile("ldr x0, =%0\\n1:\\n\\tsubs x0, x0, #1\\n\\tb.ne 1b" :: "i"(' + str(n) +
            ') : "x0", "cc");\n  tvm_bnn_bm_end();\n  return 0;\n}\n')
    run = qemu.count_aarch64({"main.c": loop}, workdir=tmp_path / "cal")
    assert abs(run.instructions - (2 * n + 1)) <= 32  # the counter ticks every 16 instructions
    x = torch.randn(1, 3, 13, 13)
    cm = tvm_bnn.compile(spine, "aarch64", example_inputs=(x,), progress=False)
    y, instructions = cm.bundle.count_instructions(x.numpy())
    np.testing.assert_array_equal(y, cm(x))
    assert instructions > 10_000
    y2, calls = cm.bundle.count_instructions(x.numpy(), per_call=True)  # one counted region per kernel call
    np.testing.assert_array_equal(y2, y)
    assert [k for k, _ in calls] == cm.bundle.kernels and all(n > 0 for _, n in calls)
    total = sum(n for _, n in calls)
    # the run function's own glue is not in a call; the per-call run is another binary (profiling hooks), whose
    # calls start at other phases of the 16-instruction tick: each call's count may be one tick off
    assert instructions - 64 * len(calls) <= total <= instructions + 16 * len(calls)


def test_arm_target_errors():
    with pytest.raises(UnknownTargetError, match="mcpu"):
        resolve_target({"kind": "llvm", "mtriple": "thumbv7em-none-eabi", "mcpu": "cortex-a9"})
    spec = resolve_target({"kind": "llvm", "mtriple": "thumbv7em-none-eabi", "mcpu": "cortex-m4"})
    assert (spec.family, spec.board) == ("c", "cortex-m4")  # the Cortex-M bundle, kernels by LLVM
    spec = resolve_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    assert (spec.family, spec.board) == ("arm", "aarch64")


def test_tuning_for_a_board_needs_rpc_and_cross_compiles(spine, tmp_path):
    """Tuning an ARM target measures on the board (rpc=...); MetaSchedule's builder links each candidate with the
    board's cross compiler. (No aarch64 TVM runtime exists on this machine to serve RPC: the link is checked here,
    the RPC path itself by tests/test_tuning.py on x86.)"""
    import tvm

    from tvm_bnn.errors import TvmBnnError
    from tvm_bnn.tuning import export_for_board

    need_arch("aarch64")
    x = torch.randn(1, 3, 13, 13)
    with pytest.raises(TvmBnnError, match="rpc="):
        tvm_bnn.tune(spine, "aarch64", example_inputs=(x,), trials=1, work_dir=str(tmp_path / "t"), progress=False)
    a = te.placeholder((64,), "uint64", name="a")
    func = te.create_prim_func([a, te.compute((64,), lambda i: tvm.tirx.popcount(a[i]), name="p")])
    lib = tvm.compile(tvm.IRModule({"main": func}), target=resolve_target("aarch64").target)
    path = export_for_board(lib, qemu.linux_arch("aarch64").cc)
    header = open(path, "rb").read(20)
    assert int.from_bytes(header[18:20], "little") == ELF_MACHINE["aarch64"]


def test_cli_compiles_for_aarch64(tmp_path, spine):
    from tvm_bnn import cli

    need_arch("aarch64")
    path = tmp_path / "spine.onnx"
    torch.onnx.export(spine, (torch.randn(1, 3, 13, 13),), str(path), dynamo=False)
    assert cli.main(["compile", str(path), "--target", "aarch64", "-o", str(tmp_path / "m.so")]) == 0
    assert int.from_bytes((tmp_path / "m.so").read_bytes()[18:20], "little") == ELF_MACHINE["aarch64"]
    assert cli.main(["compile", str(path), "--target", "aarch64", "-o", str(tmp_path / "fw")]) == 0
    assert (tmp_path / "fw" / "kernels.o").exists()


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("cin,cout,kernel,stride,dilation,pad,batch", [
    (5, 7, 3, 2, 1, (1, 1, 1, 1), 2),
    (33, 17, 5, 1, 2, (2, 1, 0, 3), 1),
    (70, 9, 7, 3, 1, (3, 3, 3, 3), 1),
    (65, 130, (3, 2), (2, 1), 1, (1, 0, 2, 1), 3),
])
def test_spine_conv_forms_on_arm(arch, cin, cout, kernel, stride, dilation, pad, batch):
    from .test_compile_cortexm import ConvForm

    need_arch(arch)
    torch.manual_seed(cin)
    model = randomize_batchnorm(ConvForm(cin, cout, kernel, stride, dilation, pad))
    x = torch.randn(batch, 3, 11, 10)
    cm = tvm_bnn.compile(model, arch, example_inputs=(x,), progress=False)
    assert [r.binarized for r in cm.report if r.name.endswith("conv")] == [True]
    with torch.no_grad():
        assert_float_close(cm(x), model(x).numpy())


@pytest.mark.parametrize("codegen", ["c", "llvm"])
def test_kernel_names_are_checked(codegen):
    from tvm_bnn.targets.c_codegen import CCodegenError, generate_c

    a = te.placeholder((4,), "uint64", name="a")
    func = te.create_prim_func([a, te.compute((4,), lambda i: a[i] ^ a[i], name="x")])
    make = generate_c if codegen == "c" else (lambda k: generate_object(k, resolve_target("aarch64").target))
    with pytest.raises(CCodegenError, match="no kernels"):
        make({})
    with pytest.raises(CCodegenError, match="duplicate kernel name 'k'"):
        make([("k", func), ("k", func)])
    with pytest.raises(CCodegenError, match="not a C identifier"):
        make({"1k": func})


def test_bundle_cmake_builds_a_program(tmp_path):
    """The exported aarch64 bundle as a CMake library (model.c, weights.S with its .incbin, kernels.o, libm) in a
    program's project: built with a cross toolchain file and run under qemu-user, it gives the model's output."""
    need_arch("aarch64")
    need("cmake")
    torch.manual_seed(0)
    model = randomize_batchnorm(torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), bnn.BinaryConv2d(8, 13, 3, padding=1),
        torch.nn.BatchNorm2d(13), torch.nn.Flatten(), bnn.BinaryLinear(13 * 6 * 5, 10))).eval()
    x = torch.randn(1, 3, 6, 5)
    cm = tvm_bnn.compile(model, "aarch64", example_inputs=(x,), progress=False)
    cm.export(str(tmp_path / "bundle"))
    (tmp_path / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.15)\nproject(app C)\nadd_subdirectory(bundle tvm_bnn_model)\n"
        "add_executable(app app.c)\ntarget_link_libraries(app PRIVATE tvm_bnn_model)\n")
    values = ", ".join(f"{v:.9g}f" for v in x.numpy().reshape(-1))
    (tmp_path / "app.c").write_text(
        '#include <stdio.h>\n#include "model.h"\n'
        f"static const float in[TVM_BNN_INPUT_SIZE] = {{{values}}};\nstatic float out[TVM_BNN_OUTPUT_SIZE];\n"
        'int main(void) { tvm_bnn_model_run(in, out);\n'
        '  for (int i = 0; i < TVM_BNN_OUTPUT_SIZE; ++i) printf("%.9g\\n", out[i]); return 0; }\n')
    cc = qemu.linux_arch("aarch64").cc
    (tmp_path / "tc.cmake").write_text(
        f"set(CMAKE_SYSTEM_NAME Linux)\nset(CMAKE_SYSTEM_PROCESSOR aarch64)\nset(CMAKE_C_COMPILER {cc})\n"
        f"set(CMAKE_ASM_COMPILER {cc})\nset(CMAKE_EXE_LINKER_FLAGS_INIT -static)\n")
    for cmd in (["cmake", "-S", ".", "-B", "build", "-DCMAKE_TOOLCHAIN_FILE=tc.cmake"],
                ["cmake", "--build", "build"], [qemu.linux_arch("aarch64").qemu, "build/app"]):
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    got = np.array([float(v) for v in proc.stdout.split()], np.float32).reshape(1, 10)
    assert_float_close(got, cm(x))


@pytest.mark.parametrize("arch", ["aarch64", "armv7"])
def test_instruction_count_of_a_model_that_rounds(arch, tmp_path):
    """A few-level activation (``torch.round``) left float before a ternary layer: on armv7 (no VRINT) its kernel
    calls libm's nearbyintf, which the bare-metal count links from the cross toolchain (it failed to link before);
    the counted run computes what ``cm(x)`` does under qemu-user. The ternary layer is one kernel per plane."""
    need_arch(arch)
    need("qemu-system-aarch64" if arch == "aarch64" else "qemu-system-arm")
    torch.manual_seed(0)
    w = torch.randn(9, 37, 3, 3)
    w = torch.where(w.abs() < 0.5, 0.0, torch.sign(w))

    class Net(torch.nn.Module):
        def forward(self, x):
            q = torch.clamp(torch.round(x * 1.3), -1, 1)  # 3 levels: two planes
            return F.conv2d(q, w, padding=1) + torch.round(x[:, :9] * 2.7)  # a float round left in the model

    x = torch.randn(1, 37, 7, 9)
    cm = tvm_bnn.compile(Net(), arch, example_inputs=(x,), progress=False)
    y, instructions = cm.bundle.count_instructions(x.numpy(), workdir=tmp_path)
    np.testing.assert_array_equal(y, cm(x))
    with torch.no_grad():
        np.testing.assert_array_equal(y, Net()(x).numpy())
    assert instructions > 1000
    ops = [str(f.attrs["tvm_bnn.op"]) for _, f in cm.scheduled.functions_items()
           if getattr(f, "attrs", None) is not None and "tvm_bnn.op" in f.attrs]
    assert ops.count("ternary_conv2d") == 2 and "binary_conv2d" not in ops, ops
