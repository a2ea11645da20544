"""The deployed ARM artefacts run: ``cm.export("model.so")`` loaded with ``tvm_bnn.load`` inside the emulated aarch64
board (Debian's arm64 CPython + TVM's aarch64 runtime wheel under qemu-aarch64, ``scripts/aarch64_rpc_board.sh
run``), and the exported bundle built by its own Makefile with the cross gcc and run under qemu-user; both
against the bundle that ``cm(x)`` runs and PyTorch.

The board has TVM's runtime only, so ``tvm_bnn`` there is ``tvm_bnn/deploy/runtime_loader.py`` (the load path
without the compiler); it is checked against ``tvm_bnn.load`` on the host first. The board is built once by
``scripts/aarch64_rpc_board.sh setup``; without it the board test skips, except under CI=true, where it fails.
"""
import os
import subprocess

import numpy as np
import pytest
import torch

import tvm_bnn
from tvm_bnn import nn as bnn
from tvm_bnn.deploy import runtime_loader
from tvm_bnn.targets import qemu

from ..conftest import assert_float_close, need, randomize_batchnorm
from .test_arm_rpc_tuning import BOARD_SCRIPT, require_board


class SmallBiReal(torch.nn.Module):
    """A Bi-Real block on a float 7x7 stride-2 stem: a binary 3x3 conv with a float 1x1 projection shortcut, a
    float classifier; odd spatial sizes."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn0 = torch.nn.BatchNorm2d(16)
        self.conv = bnn.BinaryConv2d(16, 24, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(24)
        self.short = torch.nn.Conv2d(16, 24, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(24)
        self.fc = torch.nn.Linear(24 * 9 * 9, 10)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        x = self.bn1(self.conv(x)) + self.bn2(self.short(x))
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(11)
    model = randomize_batchnorm(SmallBiReal())
    x = torch.randn(1, 3, 17, 17)
    with torch.no_grad():
        ref = model(x).numpy()
    return model, x, ref


def test_runtime_loader_matches_tvm_bnn_load_on_host(small, tmp_path):
    model, x, ref = small
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    with pytest.raises(runtime_loader.TvmBnnError, match="portable"):  # x86's default export: levels to choose
        runtime_loader.load(cm.export(str(tmp_path / "portable.so")))
    path = cm.export(str(tmp_path / "model.so"), portable=False)
    host, minimal = tvm_bnn.load(path), runtime_loader.load(path)
    assert minimal.inputs == host.inputs and minimal.num_outputs == host.num_outputs == 1
    assert minimal.target_name == "x86" and len(minimal.report) == len(host.report) == 4
    np.testing.assert_array_equal(minimal(x), host(x))  # the same library, the same VM
    np.testing.assert_array_equal(minimal(x.numpy().astype(np.float64)), host(x))  # a same-kind cast is taken
    assert_float_close(host(x), ref)
    with pytest.raises(runtime_loader.InputError, match="shape"):
        minimal(x[:, :, 1:])
    with pytest.raises(runtime_loader.InputError, match="1 input"):
        minimal(x, x)
    with pytest.raises(runtime_loader.InputError, match="complex64 cannot"):
        minimal(np.zeros(x.shape, np.complex64))
    os.remove(path + runtime_loader.META_SUFFIX)
    with pytest.raises(runtime_loader.TvmBnnError, match="metadata"):
        runtime_loader.load(path)


BOARD_MAIN = """import sys
import numpy as np
import tvm_bnn

model = tvm_bnn.load(sys.argv[1])
assert model.target_name == "aarch64", model.target_name
np.save(sys.argv[3], model(np.load(sys.argv[2])))
print("tvm_bnn from", tvm_bnn.__file__)
"""


def test_exported_library_runs_on_the_emulated_board(small, tmp_path):
    """The cross-compiled .so on the board, with TVM's thread pool (2 threads), against the bundle and PyTorch."""
    require_board()
    model, x, ref = small
    cm = tvm_bnn.compile(model, "aarch64", example_inputs=(x,), progress=False)
    assert cm.report.num_binarized == 1
    bundle_out = cm(x)  # the standalone build, under qemu-aarch64
    so = cm.export(str(tmp_path / "model.so"))
    np.save(tmp_path / "x.npy", x.numpy())
    (tmp_path / "board_main.py").write_text(BOARD_MAIN)
    proc = subprocess.run(["bash", str(BOARD_SCRIPT), "run", "board_main.py", so, "x.npy", "y.npy"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TVM_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "/loader/" in proc.stdout, proc.stdout  # the runtime-only tvm_bnn that `run` puts on the board
    board_out = np.load(tmp_path / "y.npy")
    # the same kernels, scheduled alike, in the runtime library and in the bundle
    np.testing.assert_allclose(board_out, bundle_out, rtol=1e-6, atol=1e-6 * float(np.abs(ref).max()))
    assert_float_close(board_out, ref)


MAKEFILE_MAIN = r"""/* Runs the exported bundle once: argv[1] (float32 input, C order) -> argv[2] (float32 output). */
#include <stdio.h>
#include "model.h"

static float input[TVM_BNN_INPUT_SIZE], output[TVM_BNN_OUTPUT_SIZE];

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  FILE *f = fopen(argv[1], "rb");
  if (!f || fread(input, sizeof(float), TVM_BNN_INPUT_SIZE, f) != TVM_BNN_INPUT_SIZE) return 3;
  fclose(f);
  int rc = tvm_bnn_model_run(input, output);
  f = fopen(argv[2], "wb");
  if (!f || fwrite(output, sizeof(float), TVM_BNN_OUTPUT_SIZE, f) != TVM_BNN_OUTPUT_SIZE) return 4;
  fclose(f);
  return rc;
}
"""


@pytest.mark.parametrize("arch", ["aarch64", "armv7"])
def test_exported_bundle_builds_with_its_makefile_and_runs(small, arch, tmp_path):
    a = qemu.linux_arch(arch)
    need(a.cc, a.qemu, "make")
    model, x, ref = small
    cm = tvm_bnn.compile(model, arch, example_inputs=(x,), progress=False)
    out = cm.export(str(tmp_path / "bundle"))
    proc = subprocess.run(["make", "-C", out], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "main.c").write_text(MAKEFILE_MAIN)
    exe = tmp_path / "model"
    proc = subprocess.run([a.cc, *a.cflags, "-O2", "-static", f"-I{out}", str(tmp_path / "main.c"),
                           os.path.join(out, "libtvm_bnn_model.a"), "-lm", "-o", str(exe)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    x.numpy().astype("<f4").tofile(tmp_path / "x.bin")
    proc = subprocess.run([qemu.require_tool(a.qemu), str(exe), "x.bin", "y.bin"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    y = np.fromfile(tmp_path / "y.bin", "<f4").reshape(ref.shape)
    np.testing.assert_array_equal(y, cm(x))  # the same model.c and kernels.o as cm(x) links
    assert_float_close(y, ref)
