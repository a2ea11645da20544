"""Does the scalar POPCNT run alongside the AVX2 nibble-plane loop? The conv's inner loop, in C, on one core.

bench/popcount_mix.c is the hot loop of the AVX2 binary conv (schedules/simd_bytes.py: 1 pixel x 16 output channels,
each 64-bit input word as two nibble planes broadcast against the filters: vpxor, vpshufb, vpaddq per plane and
4 channels, vpsadbw once per group of 18 words), built with gcc -O2 -mavx2 -mpopcnt, alone and with scalar channels
(xor, popcnt, add per word and channel) interleaved in the same loop body: on AMD Zen the 4 scalar ALUs are idle in
the vector loop, so the extra channels would be free if the core could issue both. Each mode runs in interleaved
rounds; the figures are bit-MACs per cycle on one core (clock: bench/common.clock_hz), best round and median,
against the AVX2 bound of 171 (6 vector uops per 256 bit-MACs on 4 vector pipes). Data stays in L1: this measures
the pipes. A row whose total rate beats the vector-only row would be a gain for mixing (none on Zen 4: see README).

    python bench/popcount_mix.py [--rounds 9] [--reps 2000000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from common import clock_hz, machine_line  # noqa: E402

MODES = [(16, 0), (16, 4), (12, 4), (16, 8)]  # (vector channels, scalar channels)
BOUND_AVX2 = 171


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--reps", type=int, default=2_000_000, help="tiles per run (36 words each)")
    args = parser.parse_args(argv)
    from tvm_bnn.targets import x86_host

    missing = x86_host.missing_features(["avx2", "popcnt"])
    if missing:
        print(f"skipped: this host lacks {x86_host.short_list(missing)}")
        return
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "popcount_mix.c")
    hz, how = clock_hz(1)
    print(machine_line().rsplit(";", 1)[0])  # one core: not the threads the other benches use
    print(f"one core, clock {hz / 1e9:.2f} GHz ({how}); rounds {args.rounds}")
    with tempfile.TemporaryDirectory() as tmp:
        exes = {}
        for vec, sca in MODES:
            exe = os.path.join(tmp, f"mix_{vec}_{sca}")
            subprocess.run(["gcc", "-O2", "-mavx2", "-mpopcnt", f"-DVEC={vec}", f"-DSCALAR={sca}", src, "-o", exe],
                           check=True, capture_output=True)
            exes[(vec, sca)] = exe
        rates = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for m in MODES:
                out = subprocess.run([exes[m], str(args.reps)], check=True, capture_output=True, text=True).stdout
                rates[m].append(float(out.split()[0]) / hz)
    print(f"{'loop body':34s} {'best':>6s} {'median':>7s}  bit-MACs/cycle (bound {BOUND_AVX2} for the vector pipes)")
    for vec, sca in MODES:
        r = rates[(vec, sca)]
        label = f"{vec} vector channels" + (f" + {sca} scalar" if sca else " (the kernel)")
        print(f"{label:34s} {max(r):6.0f} {statistics.median(r):7.0f}  ({max(r) / BOUND_AVX2:.0%} of {BOUND_AVX2})")


if __name__ == "__main__":
    main()
