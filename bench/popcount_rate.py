"""How many popcount instructions this core retires per cycle: the bound of the binary kernels (issue 22).

    .venv/bin/python bench/popcount_rate.py [--reps 5]

Runs, on one core, a loop of 16 independent chains of each popcount instruction the host has (`vpopcntq` on zmm
registers with AVX-512 VPOPCNTDQ, `vpshufb` on ymm with AVX2 as the nibble-table step of the byte-lane kernels,
scalar `popcnt`) and of the AVX-512 conv's word (`vpxorq` with a broadcast load, `vpopcntq`, `vpaddq`) and the
ternary conv's (a broadcast, `vpternlogq` for `(x ^ s) & m`, `vpopcntq`, `vpaddq`): the kernels' own ceilings, counted
in words), and divides the rate by the clock measured the same way as
bench/kernels.py (`common.clock_hz`: a chain of dependent adds). Prints instructions (words) per cycle and what that
makes in bit-MACs per cycle per core (`bench/kernels.py`'s avx512 bound is the `vpopcntq` row). An instruction the
host lacks is not run (its row says so). Run it with the cores otherwise idle.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from common import clock_hz, machine_line  # noqa: E402

# one asm statement per loop iteration: 16 independent chains (more than any core's latency x throughput needs)
_LOOP_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
  struct timespec a, b; long n = 20000000;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) {
    __asm__ volatile(
%s
      ::: %s);
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%%f\n", 16.0 * n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9));
  return 0;
}
"""

KINDS = {
    # name: (cpuinfo flag, instruction template on register k, register names, clobbers, bits per instruction)
    "vpopcntq zmm": ("avx512_vpopcntdq", "vpopcntq %%zmm{k}, %%zmm{k}", 512,
                     ", ".join(f'"zmm{k}"' for k in range(16))),
    "vpshufb ymm": ("avx2", "vpshufb %%ymm{k}, %%ymm{k}, %%ymm{k}", 256, ", ".join(f'"ymm{k}"' for k in range(16))),
    "popcnt r64": ("popcnt", "popcnt %%{reg}, %%{reg}", 64, None),
    # the binary conv's word, as the AVX-512 kernel's hot loop has it: the input word broadcast from memory and XORed
    # with a vector of filters, counted, added to an accumulator (8 accumulators; "per cycle" counts words)
    "xor+popcnt+add": ("avx512_vpopcntdq", None, 512, ", ".join(f'"zmm{k}"' for k in range(16))),
    # the ternary conv's word: the input broadcast, (x ^ s) & m in one vpternlogq, counted, added
    "ternlog+popcnt+add": ("avx512_vpopcntdq", None, 512, ", ".join(f'"zmm{k}"' for k in range(16))),
}
_GPRS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]


def _word_lines(ternary: bool) -> list:
    lines = []
    for k in range(16):
        t, acc, w = k % 4, 4 + k % 8, 12 + k % 4
        if ternary:  # zmm12-13: signs, zmm14-15: masks
            lines += [f"vpbroadcastq (%%rsp), %%zmm{t}", f"vpternlogq $0x28, %%zmm{14 + k % 2}, %%zmm{12 + k % 2}, "
                      f"%%zmm{t}"]
        else:
            lines += [f"vpxorq (%%rsp)%{{1to8%}}, %%zmm{w}, %%zmm{t}"]
        lines += [f"vpopcntq %%zmm{t}, %%zmm{t}", f"vpaddq %%zmm{t}, %%zmm{acc}, %%zmm{acc}"]
    return lines


def source(kind: str) -> str:
    _, template, _, clobbers = KINDS[kind]
    if kind in ("xor+popcnt+add", "ternlog+popcnt+add"):
        lines = _word_lines(kind.startswith("ternlog"))
    elif kind.startswith("popcnt"):
        regs = (_GPRS * 2)[:16]
        lines = [template.format(reg=r) for r in regs]
        clobbers = ", ".join(f'"{r}"' for r in _GPRS)
    else:
        lines = [template.format(k=k) for k in range(16)]
    body = "\n".join(f'      "{line}\\n\\t"' for line in lines)
    return _LOOP_C % (body, clobbers)


def host_flags() -> set:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":")[1].split())
    return set()


def rate(kind: str, reps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "loop.c"), os.path.join(tmp, "loop")
        with open(src, "w") as f:
            f.write(source(kind))
        subprocess.run(["gcc", "-O2", src, "-o", exe], check=True, capture_output=True)
        return max(float(subprocess.run([exe], capture_output=True, text=True, check=True).stdout)
                   for _ in range(reps))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="runs of each loop (the best is kept)")
    args = parser.parse_args(argv)
    print(machine_line())
    hz, how = clock_hz(1)
    print(f"clock {hz / 1e9:.2f} GHz ({how})")
    flags = host_flags()
    print(f"{'instruction':18} {'per cycle':>10} {'bits per cycle':>15}")
    for kind, (flag, _, bits, _) in KINDS.items():
        if flag not in flags:
            print(f"{kind:18} {'-':>10} {'-':>15}  (the host has no {flag}: not run)")
            continue
        per_cycle = rate(kind, args.reps) / hz
        print(f"{kind:18} {per_cycle:>10.2f} {per_cycle * bits:>15.0f}")
    print("bench/kernels.py's avx512 bound is the vpopcntq zmm row; the xor+popcnt+add and ternlog+popcnt+add rows "
          "are the most the binary and the ternary conv's words can reach on this core: the kernels' own ceilings.")


if __name__ == "__main__":
    main()
