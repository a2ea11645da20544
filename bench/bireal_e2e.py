"""End to end: a Bi-Real-Net-18-style BNN at 224x224, batch 1, 2 threads.

The compiled model (tvm_bnn, target x86; untuned, and tuned when --tuning-db is given) against the same network
in PyTorch fp32 eager, onnxruntime fp32 and TVM's own fp32 build (relax default pipeline, no binarization), all
measured in this run; figures are ratios (baseline time / compiled time). Also prints compile time, exactness
against PyTorch, and the per-kernel breakdown of the compiled model. The first lines name the machine (CPU model,
LLVM CPU, x86 ISA level) and the variant the compiled model runs (target, CPU, level, popcount).

``--level avx2`` measures as a machine of that level (``TVM_BNN_X86_LEVEL``, only lower than the host's): "x86" is
that level's generic CPU and the results are marked forced (a bigger host's caches and clocks). ``--target
x86-portable`` times the portable build (the level this host gets).

    python bench/bireal_e2e.py [--repeat 20] [--no-breakdown] [--tuning-db tuning/] [--no-tvm-float]
                               [--level avx2] [--target x86]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import (THREADS, baselines_line, binary_rate_line, force_level, machine_line, median_seconds,  # noqa: E402
                    ort_session, settle_threads, torch_threads)

torch = torch_threads()
import numpy as np  # noqa: E402

import tvm_bnn  # noqa: E402
from tvm_bnn.profiling import format_breakdown  # noqa: E402
from tvm_bnn.zoo import bireal_net18, randomize_batchnorm_  # noqa: E402


def variant_level(cm):
    """The x86 level (x86_host.Level) the compiled model's kernels run at."""
    from tvm_bnn.targets import x86_host

    have = set(cm.required_features if not cm.levels else x86_host.level(cm.level).features)
    return next((lv for lv in x86_host.LEVELS if lv.features <= have), x86_host.LEVELS[-1])


def variant_line(cm, forced: str | None) -> str:
    """'variant: target x86 (znver4), level avx512, popcount vpopcntq (AVX-512 VPOPCNTDQ)'."""
    from tvm_bnn.targets import x86_host

    target = cm.target
    cpu = " ".join([str(target.attrs.get("mcpu", ""))] + [str(a) for a in target.attrs.get("mattr", [])]).strip()
    level = variant_level(cm)
    text = f"variant: target {cm.target_name} ({cpu}), level {level.name}, popcount {level.popcount}"
    if forced:
        text += f" (forced {forced} on a host of level {x86_host.real_host_level()})"
    return text


def tvm_float_seconds(model, x, repeat):
    """TVM's own fp32 build of the same network: torch.export -> Relax -> relax.get_default_pipeline."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from tvm_bnn.targets import resolve_target

    target = resolve_target("x86").target
    mod = from_exported_program(torch.export.export(model, (x,)))
    with target:
        ex = tvm.compile(mod, target, relax_pipeline=relax.get_default_pipeline(target))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    data = tvm.runtime.tensor(x.numpy())
    return median_seconds(lambda: vm["main"](data), repeat, warmup=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--tuning-db", help="work_dir of tvm_bnn.tune for the same model, to time the tuned build")
    parser.add_argument("--no-tvm-float", action="store_true", help="skip TVM's own fp32 build (slow to run)")
    parser.add_argument("--target", default="x86", help="x86 (default), x86-portable, x86-avx2, ...")
    parser.add_argument("--level", choices=("avx512", "avx2", "popcnt", "sse2"),
                        help="measure as a machine of this x86 ISA level (lower than the host's; marked forced)")
    args = parser.parse_args(argv)
    force_level(args.level)

    torch.manual_seed(0)
    model = randomize_batchnorm_(bireal_net18()).eval()
    x = torch.randn(1, 3, args.size, args.size)

    t0 = time.perf_counter()
    cm = tvm_bnn.compile(model, args.target, example_inputs=(x,), progress=False)
    compile_s = time.perf_counter() - t0
    with torch.no_grad():
        ref = model(x).numpy()
    out = cm(x)
    err = float(np.abs(out - ref).max() / np.abs(ref).max())

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bireal.onnx")
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"])
        sess = ort_session(path)
        feed = {"x": x.numpy()}
        settle_threads()  # the previous library's thread pool stops spinning first
        t_ort = median_seconds(lambda: sess.run(None, feed), args.repeat)

    with torch.no_grad():
        settle_threads()
        t_torch = median_seconds(lambda: model(x), args.repeat)
    xn = x.numpy()
    settle_threads()
    t_tvm = median_seconds(lambda: cm(xn), args.repeat)
    t_tuned = None
    if args.tuning_db:
        tuned = tvm_bnn.compile(model, args.target, example_inputs=(x,), tuning_db=args.tuning_db, progress=False)
        assert np.abs(tuned(x) - ref).max() / np.abs(ref).max() < 1e-5
        settle_threads()
        t_tuned = median_seconds(lambda: tuned(xn), args.repeat)
    t_tvm_float = None if args.no_tvm_float else tvm_float_seconds(model, x, max(3, args.repeat // 4))

    print(machine_line())
    print(baselines_line(args.level))
    print(variant_line(cm, args.level))
    print(f"Bi-Real-Net-18 style, {args.size}x{args.size}, batch 1, {THREADS} threads, median of {args.repeat}")
    print(f"  binarized layers: {cm.report.num_binarized}/{len(cm.report)}; weights "
          f"{cm.report.weight_bytes_float / 1e6:.1f} MB -> {cm.report.weight_bytes_packed / 1e6:.2f} MB")
    print(f"  compile time (no tuning): {compile_s:.1f} s")
    print(f"  max |compiled - PyTorch| / max |PyTorch| = {err:.1e}")
    print(f"  tvm_bnn {args.target:10s} {t_tvm * 1e3:8.2f} ms  1.00x")
    print(f"  PyTorch fp32 eager {t_torch * 1e3:8.2f} ms  compiled is {t_torch / t_tvm:.2f}x faster")
    print(f"  onnxruntime fp32   {t_ort * 1e3:8.2f} ms  compiled is {t_ort / t_tvm:.2f}x faster")
    if t_tvm_float is not None:
        print(f"  TVM fp32 (relax default pipeline, untuned) {t_tvm_float * 1e3:8.2f} ms  "
              f"compiled is {t_tvm_float / t_tvm:.2f}x faster")
    if t_tuned is not None:
        print(f"  tvm_bnn x86 tuned  {t_tuned * 1e3:8.2f} ms  {t_torch / t_tuned:.2f}x PyTorch, "
              f"{t_ort / t_tuned:.2f}x onnxruntime, {t_tvm / t_tuned:.2f}x untuned")
    if not args.no_breakdown:
        times = cm.profile()
        print("\nwhere the compiled model's time goes (each kernel timed alone):")
        print(format_breakdown(times))
        kernel_sum = sum(k.total for k in times)
        print(f"end to end {t_tvm * 1e3:.2f} ms = {t_tvm / kernel_sum:.2f}x the kernel sum {kernel_sum * 1e3:.2f} ms")
        binarized = [r for r in cm.report if r.binarized]
        if binarized and all(r.op == "conv2d" and r.bits == "W1A1" for r in binarized):  # 1 bit-MAC per MAC
            convs = sum(k.total for k in times if k.op.startswith("binary_conv2d"))
            print("binary convs in the model: " + binary_rate_line(cm.report.binary_macs, convs,
                                                                   variant_level(cm).name))


if __name__ == "__main__":
    main()
