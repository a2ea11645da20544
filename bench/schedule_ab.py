"""A/B of two schedule choices, interleaved in one process: each choice as it is now against the rule it replaced.

* ``rows``: the binary conv's parallel loop over (channel block, output row) with the row's tiles serial inside
  (``schedules/loops.fuse_row_tasks``) against every tile fused into the parallel loop (a div/mod chain per tile).
  3x3 convs of Bi-Real's stages (56x56x64, 28x28x256, 7x7x512), kernels alone (TE -> schedule -> build), outputs
  compared bit for bit.
* ``stem``: the float 7x7/2 conv 3->64 at 224 (+ BatchNorm) compiled by ``tvm_bnn.compile``, with the register tile
  of ``schedules/float_x86.tile_preference`` (fewest loads per FMA among tiles with as many accumulators) against the
  former order (most accumulators, then most channels: 8 x 1 on AVX2).

Target ``x86`` at the host's level, or ``--level avx2`` (as in the other benches: forced on a bigger host); prints
min and median per variant over ``--rounds`` interleaved rounds.

    TVM_NUM_THREADS=2 python bench/schedule_ab.py [rows] [stem] [--level avx2] [--rounds 25]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import THREADS, force_level, machine_line, torch_threads  # noqa: E402

torch = torch_threads()
import numpy as np  # noqa: E402
import tvm  # noqa: E402

from tvm_bnn.schedules import float_x86, simd_bytes, x86  # noqa: E402


def _fused_tiles(sch, rows, tile, num_cores):  # the rule fuse_row_tasks replaced
    outer = sch.fuse(*rows, tile)
    return outer, outer


def _interleave(variants, rounds: int, call_seconds):
    times = {name: [] for name, _ in variants}
    for _ in range(rounds):
        for name, v in variants:
            times[name].append(call_seconds(v))
    return times


def rows_ab(rounds: int):
    from kernels import build, words  # noqa: E402 - bench/kernels.py's kernel builder

    from tvm_bnn.ops import binary_conv2d

    rng = np.random.default_rng(0)
    for c, hw in ((64, 56), (256, 28), (512, 7)):
        geo = binary_conv2d.Conv2dGeometry(c, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
        inputs = [words(rng, (1, hw, hw, c // 64)), words(rng, (c, 3, 3, c // 64)), np.ones(c, np.float32),
                  np.zeros(c, np.float32)]
        variants, outs = [], []
        for name, rule in (("row tasks", x86.fuse_row_tasks), ("tiles fused", _fused_tiles)):
            x86.fuse_row_tasks = simd_bytes.fuse_row_tasks = rule
            try:
                ex, args = build("binary_conv2d", lambda a, b, s, t: binary_conv2d.compute(a, b, s, t, geo), inputs,
                                 "x86")
            finally:
                x86.fuse_row_tasks = simd_bytes.fuse_row_tasks = variants_rule_now
            ex.mod["main"](*args)
            outs.append(args[-1].numpy().copy())
            variants.append((name, (ex.mod.time_evaluator("main", tvm.cpu(), number=10, repeat=1), args)))
        assert np.array_equal(outs[0], outs[1]), "the two schedules disagree"
        times = _interleave(variants, rounds, lambda v: v[0](*v[1]).mean)
        _print(f"binary conv 3x3 {c}->{c} @{hw}x{hw}", times)


def stem_ab(rounds: int):
    import tvm_bnn

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False), torch.nn.BatchNorm2d(64)).eval()
    x = torch.randn(1, 3, 224, 224)
    xn = x.numpy()
    variants = []
    for name, rule in (("fewest loads per FMA", float_x86.tile_preference),
                       ("most channels", lambda fi, xi: (fi * xi, fi))):
        float_x86.tile_preference = rule
        try:
            cm = tvm_bnn.compile(m, "x86", example_inputs=(x,), progress=False)
        finally:
            float_x86.tile_preference = preference_now
        with torch.no_grad():
            assert np.abs(cm(xn) - m(x).numpy()).max() < 1e-4
        variants.append((name, cm))

    def seconds(cm):
        t0 = time.perf_counter()
        for _ in range(5):
            cm(xn)
        return (time.perf_counter() - t0) / 5

    _print("float conv 7x7/2 3->64 @224 + BN", _interleave(variants, rounds, seconds))


def _print(label, times):
    print(label)
    for name, ts in times.items():
        print(f"  {name:22s} min {min(ts) * 1e3:7.3f} ms  median {statistics.median(ts) * 1e3:7.3f} ms")


variants_rule_now = x86.fuse_row_tasks
preference_now = float_x86.tile_preference


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("which", nargs="*", default=["rows", "stem"], help="rows, stem (default: both)")
    parser.add_argument("--level", choices=("avx512", "avx2", "popcnt", "sse2"))
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args(argv)
    unknown = set(args.which) - {"rows", "stem"}
    if unknown:
        parser.error(f"unknown comparison {sorted(unknown)}: choose rows and/or stem")
    force_level(args.level)
    print(machine_line())
    print(f"{THREADS} threads, {args.rounds} interleaved rounds")
    if "rows" in args.which:
        rows_ab(args.rounds)
    if "stem" in args.which:
        stem_ab(args.rounds)


if __name__ == "__main__":
    main()
