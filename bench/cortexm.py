"""Bare-metal Cortex-M: instructions per inference and flash/RAM of the C bundle, binarized vs float, same run.

    python bench/cortexm.py [--board cortex-m4] [--kernels]

For the digits demo model (8x8) and a small binary CNN (3 binary 3x3 convs on a 32x32 input), the tvm_bnn bundle
against the same model built as float C by the same bundle generator without binarization (TVM's legalized float
ops), both run on the emulated board. Instructions come from QEMU's -icount with SysTick (deterministic).
``--kernels`` adds the instructions of each kernel call of the binarized bundle (the same firmware with SysTick
reads around every call in ``tvm_bnn_model_run``).
"""
from __future__ import annotations

import argparse
import os
import re
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


def binary_macs(report) -> int:
    total = 0
    for r in report:
        if r.binarized:
            per_out = int(np.prod(r.weight_shape[1:]))
            total += per_out * int(np.prod(r.output_shape))
    return total


def kernel_instructions(bundle, x, board):
    """[(kernel, instructions)] of each kernel call of ``bundle`` on input ``x``, in call order."""
    from tvm_bnn.deploy.bundle import CFLAGS_EXTRA
    from tvm_bnn.targets import qemu

    lines, names, inside = [], [], False
    for line in bundle.sources["model.c"].split("\n"):
        inside = inside or line.startswith("int tvm_bnn_model_run")
        m = re.match(r"^(\s+)(\w+)\(.*\);$", line) if inside else None
        if m and m.group(2) in bundle.kernels:
            k = len(names)
            names.append(m.group(2))
            lines += [f"{m.group(1)}tvm_bnn_kt[{k}][0] = tvm_bnn_bm_ticks();", line,
                      f"{m.group(1)}tvm_bnn_kt[{k}][1] = tvm_bnn_bm_ticks();"]
        else:
            lines.append(line)
    model_c = "\n".join(lines).replace('#include "model.h"', '#include "model.h"\n#include "tvm_bnn_bm.h"\n'
                                       f"uint64_t tvm_bnn_kt[{len(names)}][2];", 1)
    main = bundle._main(x).replace("  return rc;", f"  {{ extern uint64_t tvm_bnn_kt[{len(names)}][2]; "
                                   "tvm_bnn_bm_output(tvm_bnn_kt, sizeof(tvm_bnn_kt)); }\n  return rc;")
    srcs = dict(bundle.sources, **{"model.c": model_c, "test_main.c": main})
    run = qemu.run_on_board(srcs, board, workdir=tempfile.mkdtemp(prefix="tvm_bnn_kernels_"),
                            extra_cflags=CFLAGS_EXTRA)
    nout = int(np.prod(bundle.output_shape)) * np.dtype(bundle.output_dtype).itemsize
    ticks = np.frombuffer(run.output[nout:], np.uint64).reshape(len(names), 2).astype(np.int64)
    scale = 1e9 / run.board.clock_hz / 2 ** qemu.ICOUNT_SHIFT
    return [(n, float(t1 - t0) * scale) for n, (t0, t1) in zip(names, ticks)]


def measure(name, model, x, board, kernels=False):
    cm = tvm_bnn.compile(model, board, example_inputs=(x,))
    with torch.no_grad():
        ref = model(x).numpy()
    y = cm(x)
    err = float(np.abs(y - ref).max())
    s = cm.stats
    float_mod = cleanup()(import_model(model, (x,)).mod)
    fb = build_bundle(float_mod, tempfile.mkdtemp(prefix="tvm_bnn_float_"), overwrite=True)
    yf, float_ins = fb.run_board(x.numpy(), board)
    fsizes = fb.last_board_run.sizes
    macs = binary_macs(cm.report)
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
        per = kernel_instructions(cm.bundle, x.numpy(), board)
        total = sum(v for _, v in per)
        print("  per kernel call (binarized bundle):")
        for kname, v in per:
            print(f"    {kname:52s} {v:14,.0f}  {100 * v / total:5.1f}%")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--board", default="cortex-m4")
    parser.add_argument("--kernels", action="store_true", help="instructions of each kernel call too")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    measure("digits model (8x8)", randomize_batchnorm_(make_model()).eval(), torch.randn(1, 1, 8, 8), args.board,
            args.kernels)
    measure("small binary CNN (32x32)", randomize_batchnorm_(SmallBinaryCNN()).eval(), torch.randn(1, 3, 32, 32),
            args.board, args.kernels)


if __name__ == "__main__":
    main()
