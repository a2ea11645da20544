"""Single-kernel benchmark: the x86 bit-packed kernels against PyTorch fp32 on the same shapes, same run.

Shapes (from the issue): binary dense M=N=1024, K=4096 bits (torch: matmul [1024,4096]x[4096,1024]) and binary
conv2d 3x3, 256->256 channels, 28x28, stride 1, pad 1, batch 1 (torch: F.conv2d). Each kernel is built alone:
TE (tvm_bnn.ops) -> schedules/x86.py -> tvm.compile for the target, timed with time_evaluator; torch with
bench/common.py's median_seconds; both with BENCH_THREADS (default 2) threads. The measurements are interleaved in
rounds (torch, then each target) and the figures are medians over the rounds, so that background load on a shared
machine hits both sides alike. Before every measurement the process waits until its other threads are idle
(common.settle_threads): the thread pools of torch (OpenMP) and TVM spin-wait for ~10 ms and ~120 ms after a
parallel region, and timed right after the other library, a kernel would share a core with a spinning thread.
``outside load`` counts the rounds in which another process was running on the machine when a measurement began
(/proc/stat procs_running): such rounds slow both sides, torch's conv far more than ours.

bit-MAC/cycle/core = bit-MACs / (seconds * clock * threads), from the median round and from the best round (the one
least disturbed by other tenants of a shared machine: what the kernel itself does), against the bound of the row's
ISA level (``BOUND``: what the popcount instructions allow per core and cycle, counted from the instruction sequence of one
word; the lead's tables quote them): avx512 512 per 512-bit vpopcntq the core retires per cycle, measured on the host
(bench/popcount_rate.py: 1024 on Zen 5, 512 on Zen 4); avx2 171 (the byte-lane kernel of
schedules/simd_bytes.py keeps inputs and weights as nibble planes, one nibble per byte: 128 bit-MACs are a vpxor, a
vpshufb table lookup and a vpaddq into byte counters, 6 vector uops per 256 bit-MACs on the 4 vector pipes of Zen
(vpshufb on 2 of them: not the limit), 1.5 cycles; its vpsadbw runs once per group of up to 31 words, the input
broadcasts go to the load pipes); popcnt 85
(xor, popcnt, add per 64-bit word on 4 scalar ALUs); sse2 18 (the SWAR popcount: ~14 ALU ops per 64-bit word).
bit-MACs count every tap (the padded ones too, as torch's MAC count does). The clock is measured with a
dependent-add chain (gcc) on as many cores as threads at once, when a compiler is present, else read from
/proc/cpuinfo.

The header names the machine: CPU model, the LLVM CPU, its x86 ISA level. Each row names its target's level and
popcount; a row whose target needs CPU features this host lacks is skipped (it would die with SIGILL).
``--level avx2`` measures as a machine of that level (``TVM_BNN_X86_LEVEL``; only lower than the host's): "x86" is
then that level's generic CPU, and every row is marked "forced" (measured on a bigger host: its caches, clocks and
pipes, not those of a real machine of that level).

    TVM_NUM_THREADS=2 python bench/kernels.py [--repeat 15] [--targets x86,x86-avx2,x86-popcnt] [--level avx2]
                                             [--extra]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import (BOUND, THREADS, avx512_bound, avx512_ceiling, baselines_line, clock_hz, force_level,  # noqa: E402
                    machine_line, median_seconds, settle_threads, torch_threads)

torch = torch_threads()
import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm import te  # noqa: E402

from tvm_bnn.ops import binary_conv2d, binary_dense, binary_maxpool, bitpack  # noqa: E402
from tvm_bnn.schedules import x86  # noqa: E402
from tvm_bnn.targets import resolve_target, tir_pipeline, x86_host  # noqa: E402

def build(op: str, make_out, inputs, target_name: str, knobs=None):
    target = resolve_target(target_name).target
    phs = [te.placeholder(a.shape, str(a.dtype), name=f"in{i}") for i, a in enumerate(inputs)]
    out = make_out(*phs)
    func = te.create_prim_func(phs + [out]).with_attr("tvm_bnn.op", op)
    with target:
        func = x86.schedule_kernel(func, op, THREADS, knobs=knobs)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target, tir_pipeline=tir_pipeline.NAME)  # as in a model
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in inputs]
    args.append(tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)), dev))
    return ex, args


def level_of(target_name: str) -> str:
    """The best x86 ISA level whose features the target's code may use."""
    have = set(resolve_target(target_name).required_features)
    return next((lv.name for lv in x86_host.LEVELS if lv.features <= have), "sse2")


def runnable(target_name: str) -> list:
    """The CPU features the target needs and this host (as forced) lacks: [] if it runs here."""
    return x86_host.missing_features(resolve_target(target_name).required_features)


def outside_load() -> bool:
    """Whether a process other than this one is runnable now (Linux; False where /proc/stat is missing)."""
    try:
        with open("/proc/stat") as f:
            running = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
    except (OSError, StopIteration, ValueError):
        return False
    return running > 1  # this thread is one of them; settle_threads has let our other threads go idle


def time_kernel(ex, args, repeat: int) -> float:
    f = ex.mod.time_evaluator("main", tvm.cpu(), number=5, repeat=repeat, min_repeat_ms=10)
    return float(np.median(f(*args).results))


def words(rng, shape):
    return rng.integers(0, 2 ** 63, size=shape, dtype=np.uint64) | rng.integers(0, 2, size=shape, dtype=np.uint64) << 63


def cases(rng, bits: bool):
    m = n = 1024
    k = 4096
    dense_in = [words(rng, (m, k // 64)), words(rng, (n, k // 64))]
    geo = binary_conv2d.Conv2dGeometry(256, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    conv_in = [words(rng, (1, 28, 28, 4)), words(rng, (256, 3, 3, 4))]
    if bits:
        aff = [rng.choice([-1, 1], 1024).astype(np.int32), rng.integers(-50, 50, 1024).astype(np.int32)]
        return [
            ("dense bits 1024x1024x4096", "binary_dense_bits", dense_in + aff,
             lambda a, b, d, t: binary_dense.compute_bits(a, b, d, t, k), m * n * k, None),
            ("conv bits 3x3 256->256 28x28", "binary_conv2d_bits", conv_in + [a[:256] for a in aff],
             lambda a, b, d, t: binary_conv2d.compute_bits(a, b, d, t, geo), 28 * 28 * 256 * 256 * 9, None),
        ]
    aff = [np.ones(1024, np.float32), np.zeros(1024, np.float32)]
    xa, xb = torch.randn(m, k), torch.randn(k, n)
    xc, wc = torch.randn(1, 256, 28, 28), torch.randn(256, 256, 3, 3)
    return [
        ("dense 1024x1024x4096", "binary_dense", dense_in + aff,
         lambda a, b, s, t: binary_dense.compute(a, b, s, t, k), m * n * k, lambda: torch.matmul(xa, xb)),
        ("conv 3x3 256->256 28x28", "binary_conv2d", conv_in + [a[:256] for a in aff],
         lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo), 28 * 28 * 256 * 256 * 9,
         lambda: torch.nn.functional.conv2d(xc, wc, padding=1)),
    ]


def other_cases(rng):
    x = rng.standard_normal((1, 256, 28, 28)).astype(np.float32)
    geo = binary_maxpool.PoolGeometry((3, 3), (2, 2), (1, 1, 1, 1))
    return [
        ("bitpack nchw 1x256x28x28", "bitpack_nchw", [x], bitpack.compute_nchw),
        ("bitpack rows 1024x4096", "bitpack_rows", [rng.standard_normal((1024, 4096)).astype(np.float32)],
         bitpack.compute_rows),
        ("maxpool 3x3/2 1x56x56x256", "binary_maxpool", [words(rng, (1, 56, 56, 4))],
         lambda a: binary_maxpool.compute(a, geo)),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15, help="interleaved rounds (torch, then each target)")
    parser.add_argument("--targets", default="x86,x86-avx2,x86-popcnt")
    parser.add_argument("--extra", action="store_true", help="also the bits outputs, bitpack and maxpool")
    parser.add_argument("--knobs", default=None, help="tile_p,tile_o,vector (override the defaults)")
    parser.add_argument("--level", choices=x86_host.LEVEL_NAMES,
                        help="measure as a machine of this x86 ISA level (lower than the host's; rows marked forced)")
    args = parser.parse_args(argv)
    force_level(args.level)
    knobs = None
    if args.knobs:
        p, o, v = (int(t) for t in args.knobs.split(","))
        knobs = x86.Knobs(p, o, v)
    rng = np.random.default_rng(0)
    hz, how = clock_hz(THREADS)
    print(machine_line())
    print(baselines_line(args.level))
    print(f"threads={THREADS} TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')} clock={hz / 1e9:.2f} GHz ({how})")
    BOUND["avx512"], bound_how = avx512_bound(clock_hz(1)[0])
    print(f"avx512 bound {BOUND['avx512']} bit-MACs per cycle and core ({bound_how})")
    ceiling = avx512_ceiling(clock_hz(1)[0])
    if ceiling:
        print(f"avx512 word ceiling {ceiling} bit-MACs per cycle and core (the conv's XOR, vpopcntq, vpaddq per word: "
              f"{ceiling / BOUND['avx512']:.0%} of the bound)")
    targets = []
    for tname in args.targets.split(","):
        missing = runnable(tname)
        if missing:
            print(f"skipped {tname}: this host lacks {x86_host.short_list(missing)} (its code would die with SIGILL)")
        else:
            targets.append(tname)
    forced = f" (forced; host level {x86_host.real_host_level()})" if args.level else ""
    for tname in targets:
        spec = resolve_target(tname)
        print(f"  {tname}: {spec.target.attrs.get('mcpu')} {' '.join(spec.target.attrs.get('mattr', []))}".rstrip()
              + f", level {level_of(tname)}, popcount: {spec.popcount_isa}")
    print(f"{'kernel':32s} {'target':11s} {'tvm ms':>9s} {'torch ms':>9s} {'speedup':>8s} {'bitMAC/cyc/core':>16s} "
          f"{'best round':>14s} level")
    rows = cases(rng, False) + (cases(rng, True) if args.extra else [])
    for label, op, inputs, make, macs, torch_fn in rows:
        built = [(tname, *build(op, make, inputs, tname, knobs)) for tname in targets]
        # interleaved rounds: torch and every TVM variant see the same background load (shared machines)
        t_torch, t_tvm = [], {tname: [] for tname in targets}
        loaded = 0
        for _ in range(args.repeat):
            busy = False
            if torch_fn:
                settle_threads()
                busy |= outside_load()
                t_torch.append(median_seconds(torch_fn, repeat=3, warmup=1))
            for tname, ex, targs in built:
                settle_threads()
                busy |= outside_load()
                t_tvm[tname].append(time_kernel(ex, targs, 1))
            loaded += busy
        tt = float(np.median(t_torch)) if torch_fn else None
        for tname, _, _ in built:
            t = float(np.median(t_tvm[tname]))
            rate = macs / (t * hz * THREADS)
            best = macs / (min(t_tvm[tname]) * hz * THREADS)  # the round least disturbed by the machine's neighbours
            speed = f"{tt / t:7.1f}x" if tt else f"{'':8s}"
            ts = f"{tt * 1e3:9.3f}" if tt else f"{'':9s}"
            level = level_of(tname)
            of_ceiling = f", {best / ceiling:.0%} of the word ceiling" if ceiling and level == "avx512" else ""
            print(f"{label:32s} {tname:11s} {t * 1e3:9.3f} {ts} {speed} {rate:9.0f} / {BOUND[level]:<4d} "
                  f"{best:6.0f} ({best / BOUND[level]:3.0%}{of_ceiling}) {level}{forced}", flush=True)
        print(f"{'':32s} outside load in {loaded}/{args.repeat} rounds", flush=True)
    if args.extra:
        for label, op, inputs, make in other_cases(rng):
            for tname in targets:
                ex, targs = build(op, make, inputs, tname)
                settle_threads()
                print(f"{label:32s} {tname:11s} {time_kernel(ex, targs, args.repeat) * 1e3:9.3f}", flush=True)


if __name__ == "__main__":
    main()
