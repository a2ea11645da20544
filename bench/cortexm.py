"""Bare-metal Cortex-M: instructions per inference and flash/RAM of the C bundle, binarized vs float, same run.

    python bench/cortexm.py [--board cortex-m4] [--kernels] [--codegen]

For the digits demo model (8x8) and a small binary CNN (3 binary 3x3 convs on a 32x32 input), the tvm_bnn bundle
against the same model built as float C by the same bundle generator without binarization (TVM's legalized float
ops), both run on the emulated board. Instructions come from QEMU's -icount with SysTick (deterministic).
``--kernels`` adds the instructions of each kernel call of the binarized bundle (the same firmware built with
model.c's per-call hooks, ``-DTVM_BNN_PROFILE_STEPS``: one counted region per call). ``--codegen`` compares the
bundle's kernels from TVM's C codegen (our M-profile schedules, the default) with TVM's LLVM codegen for the board's
thumb triple.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from digits_demo import make_model  # noqa: E402

import tvm_bnn  # noqa: E402
from tvm_bnn import nn as bnn  # noqa: E402
from tvm_bnn.deploy.bundle import build_bundle  # noqa: E402
from tvm_bnn.frontends import import_model  # noqa: E402
from tvm_bnn.passes import cleanup  # noqa: E402
from tvm_bnn.targets.qemu import FirmwareError  # noqa: E402
from tvm_bnn.zoo import randomize_batchnorm_  # noqa: E402


class SmallBinaryCNN(torch.nn.Module):
    """32x32x3 -> float stem 32 -> 3 binary 3x3 convs (64, 64 /2, 128 /2) with BN -> binary dense 10."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn0 = torch.nn.BatchNorm2d(32)
        self.c1 = bnn.BinaryConv2d(32, 64, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.c2 = bnn.BinaryConv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(64)
        self.c3 = bnn.BinaryConv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(128)
        self.fc = bnn.BinaryLinear(128 * 8 * 8, 10, bias=False)

    def forward(self, x):
        y = self.bn1(self.c1(self.bn0(self.stem(x))))
        y = F.max_pool2d(self.bn2(self.c2(y)), 2)
        y = F.max_pool2d(self.bn3(self.c3(y)), 2)
        return self.fc(y.flatten(1))


def measure(name, model, x, board, kernels=False):
    cm = tvm_bnn.compile(model, board, example_inputs=(x,))
    with torch.no_grad():
        ref = model(x).numpy()
    y = cm(x)
    err = float(np.abs(y - ref).max())
    s = cm.stats
    float_mod = cleanup()(import_model(model, (x,)).mod)
    fb = build_bundle(float_mod, tempfile.mkdtemp(prefix="tvm_bnn_float_"), overwrite=True)
    macs = cm.report.binary_macs
    try:
        yf, float_ins = fb.run_board(x.numpy(), board)
    except FirmwareError:  # the float model's weights or tensors exceed the board (the M55's 512 KB)
        print(f"{name} on {board} (|bundle - PyTorch| max {err:.1e}; the float build does not fit the board: "
              f"{fb.weight_bytes:,} B of weights, {fb.arena_bytes:,} B of arena)")
        print(f"  instructions/inference: binarized {s.instructions_per_inference:,}")
        print(f"  weight flash: binarized {s.flash_weight_bytes:,} B  float {fb.weight_bytes:,} B  "
              f"-> {fb.weight_bytes / s.flash_weight_bytes:.1f}x less")
        print(f"  RAM arena:    binarized {s.ram_arena_bytes:,} B  float {fb.arena_bytes:,} B")
        return
    fsizes = fb.last_board_run.sizes
    print(f"{name} on {board} (|bundle - PyTorch| max {err:.1e}; float build |diff| {np.abs(yf - ref).max():.1e})")
    print(f"  instructions/inference: binarized {s.instructions_per_inference:,}  float {int(float_ins):,}  "
          f"-> {float_ins / s.instructions_per_inference:.1f}x fewer")
    print(f"  weight flash: binarized {s.flash_weight_bytes:,} B  float {fb.weight_bytes:,} B  "
          f"-> {fb.weight_bytes / s.flash_weight_bytes:.1f}x less")
    print(f"  code flash:   binarized {s.flash_code_bytes:,} B  float {max(fsizes.get('text', 0) - fb.weight_bytes, 0):,} B")
    print(f"  RAM arena:    binarized {s.ram_arena_bytes:,} B (no reuse {s.ram_arena_bytes_without_reuse:,} B)  "
          f"float {fb.arena_bytes:,} B; binarized stack {s.ram_stack_bytes} B")
    print(f"  binary MACs {macs:,}: {macs / s.instructions_per_inference:.2f} binary MACs per instruction "
          f"(whole model, float stem included)")
    if kernels:
        _, per = cm.bundle.run_board(x.numpy(), board, per_call=True)
        total = sum(v for _, v in per)
        print("  per kernel call (binarized bundle):")
        for kname, v in per:
            print(f"    {kname:52s} {v:14,.0f}  {100 * v / total:5.1f}%")


LLVM_TRIPLES = {"cortex-m4": "thumbv7em-none-eabi", "cortex-m7": "thumbv7em-none-eabi", "cortex-m3": "thumbv7m-none-eabi",
                "cortex-m55": "thumbv8.1m.main-none-eabi", "cortex-m0": "thumbv6m-none-eabi"}


def compare_codegen(name, model, x, board):
    """The same bundle with its kernels from TVM's C codegen (our M-profile schedules, the default) and from TVM's
    LLVM codegen (mtriple thumbv7em-none-eabi, the generic scalar-popcount schedules): which measures better."""
    with torch.no_grad():
        ref = model(x).numpy()
    llvm = {"kind": "llvm", "mtriple": LLVM_TRIPLES[board], "mcpu": board, "num-cores": 1}
    if board != "cortex-m0" and board != "cortex-m3":
        llvm["mfloat-abi"] = "hard"
    rows = []
    for label, target in (("C codegen (default)", board), (f"LLVM {llvm['mtriple']}", llvm)):
        cm = tvm_bnn.compile(model, target, example_inputs=(x,), progress=False)
        err = float(np.abs(cm(x) - ref).max())
        rows.append((label, cm.stats, err))
    base = rows[0][1].instructions_per_inference
    print(f"{name} on {board}: kernels from TVM's C codegen vs its LLVM codegen")
    for label, st, err in rows:
        print(f"  {label:34s} {st.instructions_per_inference:14,} instructions ({st.instructions_per_inference / base:.2f}x)"
              f"  code {st.flash_code_bytes:,} B  arena {st.ram_arena_bytes:,} B  |diff| {err:.1e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--board", default="cortex-m4")
    parser.add_argument("--kernels", action="store_true", help="instructions of each kernel call too")
    parser.add_argument("--codegen", action="store_true", help="also compare TVM's C and LLVM codegen")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    models = [("digits model (8x8)", randomize_batchnorm_(make_model()).eval(), torch.randn(1, 1, 8, 8)),
              ("small binary CNN (32x32)", randomize_batchnorm_(SmallBinaryCNN()).eval(), torch.randn(1, 3, 32, 32))]
    for name, model, x in models:
        measure(name, model, x, args.board, args.kernels)
    if args.codegen:
        for name, model, x in models:
            compare_codegen(name, model, x, args.board)


if __name__ == "__main__":
    main()
