"""The NEON schedules of the float layers a BNN keeps (``schedules/float_arm.py``) on aarch64 and armv7: outputs
against PyTorch on odd shapes (strides, padding, dilation, batch, channel counts that are not a multiple of 4),
the code they compile to (vector FMAs), and their instruction counts on the bare-metal machines of both
architectures, whose counters are calibrated here too.

A missing toolchain skips these tests, except under CI=true, where it fails them.
"""
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tvm import s_tir

import tvm_bnn
from tvm_bnn.schedules import float_arm, generic
from tvm_bnn.targets import qemu, resolve_target

from ..conftest import assert_float_close, need, randomize_batchnorm

ARCHES = ["aarch64", "armv7"]


def need_arch(arch, bare_metal=False):
    a = qemu.linux_arch(arch)
    need(a.cc, a.qemu, *([qemu.BARE_METAL_ARCHES[arch].qemu] if bare_metal else []))


class FloatForms(torch.nn.Module):
    """Every float conv form of a BNN in one model: a 7x7 stride-2 stem, a 3x3 conv with BN, ReLU and a residual
    add, a strided 1x1 projection, a dilated conv with asymmetric padding, a 1x1 conv with 6 output channels (not
    a multiple of 4: the width-vectorised schedule), a conv whose output row is a prime number of pixels."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn0 = torch.nn.BatchNorm2d(16)
        self.c3 = torch.nn.Conv2d(16, 16, 3, padding=1, bias=True)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.proj = torch.nn.Conv2d(16, 24, 1, stride=2, bias=False)
        self.dil = torch.nn.Conv2d(24, 12, 3, dilation=2, bias=False)
        self.odd = torch.nn.Conv2d(12, 6, 1)
        self.last = torch.nn.Conv2d(6, 8, (2, 3), stride=(1, 2), padding=(0, 1))

    def forward(self, x):
        x = self.bn0(self.stem(x))
        x = x + torch.relu(self.bn1(self.c3(x)))
        x = self.proj(x)
        x = self.dil(F.pad(x, (2, 1, 0, 2)))
        return self.last(self.odd(x))


@pytest.fixture(scope="module")
def forms():
    torch.manual_seed(5)
    return randomize_batchnorm(FloatForms())


@pytest.mark.parametrize("arch", ARCHES)
def test_float_convs_match_pytorch_on_arm(forms, arch):
    need_arch(arch)
    x = torch.randn(2, 3, 19, 23)
    cm = tvm_bnn.compile(forms, arch, example_inputs=(x,), progress=False)
    with torch.no_grad():
        ref = forms(x).numpy()
    assert_float_close(cm(x), ref)  # FMA rounds once where PyTorch may round twice: float rounding, no more
    objdump = qemu.linux_arch(arch).cc.replace("gcc", "objdump")
    asm = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(cm.bundle.files["kernels.o"])],
                         capture_output=True, text=True).stdout
    # the channel-vectorised convs accumulate with vector FMAs (by element on AArch64)
    assert ("fmla\tv" in asm and ".s[" in asm) if arch == "aarch64" else "vfma.f32\tq" in asm


def _fused_convs(model, x):
    """The fused conv PrimFuncs of a float model, as the bundle schedules them."""
    import tvm

    from tvm_bnn.core.pipeline import fuse_pipeline
    from tvm_bnn.frontends import import_model
    from tvm_bnn.passes import cleanup

    mod = cleanup()(import_model(model, (x,)).mod)
    with tvm.target.Target({"kind": "c"}), tvm.transform.PassContext(opt_level=3):
        fused = fuse_pipeline()(mod)
    return [f for gv, f in fused.functions_items() if "conv2d" in gv.name_hint]


@pytest.mark.parametrize("arch", ARCHES)
def test_conv_schedule_dispatch(forms, arch):
    """Convs with a multiple of 4 output channels get the channel-vectorised schedule with an explicit FMA (armv7:
    the kernel taps outside the channels when there are enough of them), the 6-channel conv the x86 one."""
    spec = resolve_target(arch)
    neon = float_arm.neon_isa(spec.target)
    assert neon is (float_arm.NEON_A64 if arch == "aarch64" else float_arm.NEON_A32)
    assert float_arm.neon_isa(resolve_target("x86").target) is None
    assert not float_arm.has_fma(resolve_target({"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf",
                                                 "mcpu": "cortex-a9", "mattr": ["+neon"]}).target)
    convs = _fused_convs(forms, torch.randn(1, 3, 19, 23))
    assert len(convs) == 6
    for func in convs:
        with spec.target:
            scheduled = generic.schedule_generic(func, 4, spec.target).script()
        conv = s_tir.Schedule(func)
        out_channels = int(conv.get(conv.get_sblock("conv2d_nchw")).iter_vars[1].dom.extent)
        if out_channels % 4 == 0:
            assert "T.vectorized(T.int64(4))" in scheduled and "_global" in scheduled  # transposed weights
            assert "llvm.fma" in scheduled  # AArch64 and the Cortex-A7's VFPv4 have vector FMA
        else:
            assert "llvm.fma" not in scheduled and "_global" not in scheduled
    assert float_arm.conv_plan(float_arm.NEON_A64, 64, 112, 3, 49) == (16, 4, False)
    assert float_arm.conv_plan(float_arm.NEON_A64, 512, 7, 256, 1) == (16, 7, False)
    assert float_arm.conv_plan(float_arm.NEON_A32, 64, 112, 3, 49) == (8, 2, False)
    assert float_arm.conv_plan(float_arm.NEON_A32, 64, 56, 64, 9) == (8, 4, True)


@pytest.mark.parametrize("arch", ARCHES)
def test_bare_metal_counter_is_calibrated(arch, tmp_path):
    need_arch(arch, bare_metal=True)
    for n in (10_000, 100_000):
        measured, expected = qemu.calibrate_bare_metal(arch, n, workdir=tmp_path / str(n))
        assert abs(measured - expected) <= 16  # the virt counter ticks every 16 instructions


class StemAndShortcut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 7, 2, 3, bias=False)
        self.bn0 = torch.nn.BatchNorm2d(32)
        self.short = torch.nn.Conv2d(32, 64, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)

    def forward(self, x, y):
        return self.bn1(self.short(self.bn0(self.stem(x)))) + y


# Instructions per 4-lane FMA the two convs may take (1 is the bound): measured with the pinned TVM/LLVM, 1.48 (stem)
# and 2.41 (1x1) on aarch64, 2.39 and 3.58 on armv7, plus some room. The 1x1 conv reduces over only 32 channels,
# so its epilogue (BN, the residual add gathered and the output scattered over NCHW rows) is a third of it. The
# width-vectorised schedule these replaced took 2.35 (aarch64) and 6.7 (armv7) on the Bi-Real stem, 10-19 on its
# 7x7 and 14x14 shortcuts (scalar code).
MAX_INSTRUCTIONS_PER_FMA = {"aarch64": (1.7, 2.7), "armv7": (2.7, 4.0)}


@pytest.mark.parametrize("arch", ARCHES)
def test_float_stem_and_shortcut_near_the_fma_bound(arch, tmp_path):
    """The stem and a 1x1 shortcut counted on the bare-metal machine: instructions per 4-lane FMA of the conv (the
    bound is 1; the rest are loads, loop overhead, the padding pass, the weight copy and the fused BN epilogue)."""
    need_arch(arch, bare_metal=True)
    torch.manual_seed(0)
    model = randomize_batchnorm(StemAndShortcut())
    x, y = torch.randn(1, 3, 64, 64), torch.randn(1, 64, 32, 32)
    cm = tvm_bnn.compile(model, arch, example_inputs=(x, y), progress=False)
    out, calls = cm.bundle.count_instructions([x.numpy(), y.numpy()], workdir=tmp_path, per_call=True)
    with torch.no_grad():
        assert_float_close(out, model(x, y).numpy())
    convs = [ins for name, ins in calls if "conv2d" in name]
    assert len(convs) == 2, calls
    fmas = (32 * 32 * 32 * 3 * 49 / 4, 32 * 32 * 64 * 32 / 4)
    for ins, n, bound in zip(convs, fmas, MAX_INSTRUCTIONS_PER_FMA[arch]):
        assert ins / n <= bound, (arch, ins, n, ins / n)
