"""ARM Linux (aarch64): instructions per inference of the Bi-Real-Net-18-style model, binarized vs float, same run.

    python bench/arm.py [--size 224] [--target aarch64] [--breakdown 15]

Both builds are tvm_bnn bundles for the same aarch64 target (kernels compiled by TVM's LLVM codegen with NEON,
single-threaded): the binarized model, and the same model with no binarization (its convs and dense layers as
TVM float kernels with our vectorised float schedules). Emulated wall time says nothing about a real board, so both
run on a bare-metal AArch64 (qemu-system-aarch64 virt, Cortex-A72, -icount: instructions are deterministic).
Outputs are checked against PyTorch first (the binarized build under qemu-aarch64, as cm(x) runs it).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

import tvm_bnn
from tvm_bnn.deploy.bundle import build_bundle
from tvm_bnn.frontends import import_model
from tvm_bnn.passes import cleanup
from tvm_bnn.targets import resolve_target
from tvm_bnn.zoo import bireal_net18, randomize_batchnorm_


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--target", default="aarch64")
    parser.add_argument("--breakdown", type=int, default=15, help="kernels to list (0: none)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = randomize_batchnorm_(bireal_net18()).eval()
    x = torch.randn(1, 3, args.size, args.size)
    with torch.no_grad():
        ref = model(x).numpy()

    t0 = time.perf_counter()
    cm = tvm_bnn.compile(model, args.target, example_inputs=(x,), progress=False)
    t_compile = time.perf_counter() - t0
    y = cm(x)
    err = float(np.abs(y - ref).max())
    _, bin_ins = cm.bundle.count_instructions(x.numpy())

    t0 = time.perf_counter()
    float_mod = cleanup()(import_model(model, (x,)).mod)
    fb = build_bundle(float_mod, tempfile.mkdtemp(prefix="tvm_bnn_float_"), overwrite=True,
                      target=resolve_target(args.target))
    t_float = time.perf_counter() - t0
    yf, float_ins = fb.count_instructions(x.numpy())

    macs = cm.report.binary_macs
    print(f"Bi-Real-Net-18 style {args.size}x{args.size}, batch 1, {args.target} "
          f"({cm.report.num_binarized}/{len(cm.report)} layers binarized)")
    print(f"  outputs: |binarized - PyTorch| max {err:.2e} (qemu-user); |float build - PyTorch| max "
          f"{np.abs(yf - ref).max():.2e} (bare metal)")
    print(f"  instructions/inference: binarized {int(bin_ins):,}  float {int(float_ins):,}  "
          f"-> {float_ins / bin_ins:.1f}x fewer")
    print(f"  weights: binarized {cm.bundle.weight_bytes:,} B  float {fb.weight_bytes:,} B  "
          f"-> {fb.weight_bytes / cm.bundle.weight_bytes:.1f}x less")
    print(f"  arena: binarized {cm.bundle.arena_bytes:,} B  float {fb.arena_bytes:,} B")
    print(f"  binary MACs {macs:,}: {macs / bin_ins:.2f} per instruction (whole model, float stem included)")
    print(f"  compile: binarized {t_compile:.1f} s, float bundle {t_float:.1f} s")
    if args.breakdown:
        _, calls = cm.bundle.count_instructions(x.numpy(), per_call=True)
        per_kernel = {}
        for name, ins in calls:
            n, total = per_kernel.get(name, (0, 0.0))
            per_kernel[name] = (n + 1, total + ins)
        print(f"\n  binarized build, instructions per kernel (sum of calls {sum(i for _, i in calls):,.0f}):")
        for name, (n, total) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:args.breakdown]:
            print(f"    {name[:56]:56s} {n:3d} calls {total:14,.0f}  {total / bin_ins:6.1%}")


if __name__ == "__main__":
    main()
