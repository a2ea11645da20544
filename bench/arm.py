"""ARM Linux (aarch64 and armv7): instructions per inference of the Bi-Real-Net-18-style model, binarized vs the TVM
float build, both architectures in the same run.

    python bench/arm.py [--size 224] [--target aarch64 armv7] [--breakdown 15]

Both builds are tvm_bnn bundles for the same ARM target (kernels compiled by TVM's LLVM codegen with NEON,
single-threaded): the binarized model, and the same model with no binarization (its convs and dense layers as TVM
float kernels with our float schedules: ``schedules/float_arm.py``, the same schedules the binarized build's float
stem and shortcuts get, so a faster float conv shortens both builds). Emulated wall time says nothing about a real
board, so both run on a bare-metal machine under QEMU with -icount (instructions are deterministic):
``qemu-system-aarch64 -M virt -cpu cortex-a72`` and ``qemu-system-arm -M virt -cpu cortex-a7``
(``targets/qemu.count_bare_metal``). Outputs are checked against PyTorch first (the binarized build under qemu-user,
as cm(x) runs it; the float build's output from the bare-metal run). A second float build with the
width-vectorised schedules ARM had before ``float_arm`` (``TVM_BNN_NEON_FLOAT=0``: the baseline of the first
measurements, 1,947.9 M instructions on aarch64) shows how far the binarized build moved apart from the float
build's own gain; the shared float stem bounds the ratio against the faster float build.

"Where the instructions go" groups the per-call counts (one counted region per kernel call) by what the kernel is;
``--breakdown N`` also lists the N biggest kernels of the binarized build.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

import tvm_bnn
from tvm_bnn import nn as bnn
from tvm_bnn.deploy.bundle import build_bundle
from tvm_bnn.frontends import import_model
from tvm_bnn.passes import cleanup
from tvm_bnn.targets import qemu, resolve_target
from tvm_bnn.zoo import bireal_net18, randomize_batchnorm_

CATEGORIES = ("float stem conv", "float 1x1 convs", "float 3x3 convs", "binary convs", "bit-packing",
              "float classifier", "pooling, adds, other")


def category(kernel: str, float_convs: list, seen: list) -> str:
    """What a kernel call is: ``float_convs`` (the kernel sizes of the model's float convs, in call order) names the
    float convs; ``seen`` counts the float conv calls so far."""
    if "binary_conv2d" in kernel or "binary_dense" in kernel:
        return "binary convs"
    if "bitpack" in kernel or "binary_maxpool" in kernel:
        return "bit-packing"
    if "conv2d" in kernel:
        i = len(seen)
        seen.append(kernel)
        k = float_convs[i] if i < len(float_convs) else None
        if i == 0:
            return "float stem conv"
        return "float 1x1 convs" if k == (1, 1) else "float 3x3 convs"
    if "matmul" in kernel or "dense" in kernel:
        return "float classifier"
    return "pooling, adds, other"


def grouped(calls, float_convs) -> dict:
    seen, out = [], {}
    for name, ins in calls:
        c = category(name, float_convs, seen)
        out[c] = out.get(c, 0.0) + ins
    return out


def measure(arch: str, model, x, ref) -> dict:
    spec = resolve_target(arch)
    t0 = time.perf_counter()
    cm = tvm_bnn.compile(model, arch, example_inputs=(x,), progress=False)
    t_compile = time.perf_counter() - t0
    err = float(np.abs(cm(x) - ref).max())  # the binarized build under qemu-user, as cm(x) runs it
    _, bin_ins = cm.bundle.count_instructions(x.numpy())
    _, bin_calls = cm.bundle.count_instructions(x.numpy(), per_call=True)

    t0 = time.perf_counter()
    float_mod = cleanup()(import_model(model, (x,)).mod)
    fb = build_bundle(float_mod, tempfile.mkdtemp(prefix=f"tvm_bnn_float_{arch}_"), overwrite=True, target=spec)
    t_float = time.perf_counter() - t0
    yf, float_ins = fb.count_instructions(x.numpy())
    _, float_calls = fb.count_instructions(x.numpy(), per_call=True)

    # The float build with the width-vectorised schedules ARM had before schedules/float_arm.py (the baseline of
    # the first measurements): how far the binarized build moved from there, the float build's own gain apart.
    os.environ["TVM_BNN_NEON_FLOAT"] = "0"
    try:
        wb = build_bundle(float_mod, tempfile.mkdtemp(prefix=f"tvm_bnn_floatw_{arch}_"), overwrite=True, target=spec)
    finally:
        del os.environ["TVM_BNN_NEON_FLOAT"]
    yw, width_ins = wb.count_instructions(x.numpy())

    convs = [r for r in cm.report if r.op == "conv2d"]
    return dict(cm=cm, fb=fb, err=err, float_err=float(max(np.abs(yf - ref).max(), np.abs(yw - ref).max())), bin=bin_ins,
                float=float_ins, width=width_ins,
                bin_calls=bin_calls, float_calls=float_calls, t_compile=t_compile, t_float=t_float,
                bin_groups=grouped(bin_calls, [tuple(r.weight_shape[2:]) for r in convs if not r.binarized]),
                float_groups=grouped(float_calls, [tuple(r.weight_shape[2:]) for r in convs]))


def lone_conv(arch: str, channels: int = 256, size: int = 28) -> tuple:
    """(binary MACs, instructions) of the binary conv kernel alone: a 3x3 ``channels`` -> ``channels`` conv, stride 1,
    zero padding 1, at ``size`` x ``size`` (the call's count from the per-call run; the bitpack before it apart)."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(bnn.BinaryConv2d(channels, channels, 3, padding=1, bias=False)).eval()
    x = torch.randn(1, channels, size, size)
    cm = tvm_bnn.compile(model, arch, example_inputs=(x,), progress=False)
    with torch.no_grad():
        np.testing.assert_allclose(cm(x), model(x).numpy(), rtol=1e-6, atol=1e-5)
    _, calls = cm.bundle.count_instructions(x.numpy(), per_call=True)
    ins = sum(n for name, n in calls if "binary_conv2d" in name)
    return cm.report.binary_macs, ins


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--target", nargs="+", default=["aarch64", "armv7"], choices=list(qemu.BARE_METAL_ARCHES))
    parser.add_argument("--breakdown", type=int, default=15, help="kernels of the binarized build to list (0: none)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = randomize_batchnorm_(bireal_net18()).eval()
    x = torch.randn(1, 3, args.size, args.size)
    with torch.no_grad():
        ref = model(x).numpy()

    res = {arch: measure(arch, model, x, ref) for arch in args.target}
    first = res[args.target[0]]
    cm, fb = first["cm"], first["fb"]
    cpus = {a: qemu.BARE_METAL_ARCHES[a].cpu for a in args.target}
    col = 30
    print(f"Bi-Real-Net-18 style {args.size}x{args.size}, batch 1 ({cm.report.num_binarized}/{len(cm.report)} "
          f"conv/dense layers binarized), one thread, instructions counted by QEMU -icount on bare-metal virt")
    print(f"  {'':36s}" + "".join(f"{a + ' (' + cpus[a] + ')':>{col}s}" for a in args.target))

    def row(label, fn):
        print(f"  {label:36s}" + "".join(f"{fn(res[a]):>{col}s}" for a in args.target))

    row("instructions, binarized", lambda r: f"{int(r['bin']):,}")
    row("instructions, TVM float build", lambda r: f"{int(r['float']):,}")
    row("float build / binarized", lambda r: f"{r['float'] / r['bin']:.1f}x")
    row("instructions, float, width-vectorised", lambda r: f"{int(r['width']):,}")
    row("  that float build / binarized", lambda r: f"{r['width'] / r['bin']:.1f}x")
    row("binary MACs per instruction", lambda r: f"{r['cm'].report.binary_macs / r['bin']:.2f}")
    row("|binarized - PyTorch| (qemu-user)", lambda r: f"{r['err']:.1e}")
    row("|float builds - PyTorch| (bare metal)", lambda r: f"{r['float_err']:.1e}")
    row("compile s: binarized, float bundle", lambda r: f"{r['t_compile']:.0f}, {r['t_float']:.0f}")
    print(f"  weights: binarized {cm.bundle.weight_bytes:,} B, float {fb.weight_bytes:,} B "
          f"({fb.weight_bytes / cm.bundle.weight_bytes:.1f}x less); arena: binarized {cm.bundle.arena_bytes:,} B, "
          f"float {fb.arena_bytes:,} B")
    print(f"  binary MACs per inference: {cm.report.binary_macs:,}")
    for a in args.target:
        macs, ins = lone_conv(a)
        print(f"  {a}: a lone binary 3x3 256->256 conv at 28x28: {macs:,} binary MACs in {int(ins):,} instructions, "
              f"{macs / ins:.1f} binary MACs per instruction")

    print("\n  where the instructions go (sum of the counted kernel calls; % of that build's total):")
    print(f"  {'':24s}" + "".join(f"{a + ' binarized':>24s}{a + ' float':>24s}" for a in args.target))
    for c in CATEGORIES:
        cells = []
        for a in args.target:
            r = res[a]
            for g, total in ((r["bin_groups"], r["bin"]), (r["float_groups"], r["float"])):
                v = g.get(c, 0.0)
                cells.append(f"{v:>16,.0f} {v / total:6.1%}" if v else f"{'-':>23s}")
        print(f"  {c:24s}" + "".join(f"{cell:>24s}" for cell in cells))

    for a in args.target if args.breakdown else ():
        calls = res[a]["bin_calls"]
        per_kernel = {}
        for name, ins in calls:
            n, total = per_kernel.get(name, (0, 0.0))
            per_kernel[name] = (n + 1, total + ins)
        print(f"\n  {a} binarized build, instructions per kernel (sum of calls {sum(i for _, i in calls):,.0f}):")
        for name, (n, total) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:args.breakdown]:
            print(f"    {name[:56]:56s} {n:3d} calls {total:14,.0f}  {total / res[a]['bin']:6.1%}")


if __name__ == "__main__":
    main()
