"""Shared helpers for the benchmarks: thread pinning and robust timing (median of repeats, same process)."""
from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


def force_level(level: str | None) -> None:
    """``--level``: run as a machine of that x86 ISA level (``TVM_BNN_X86_LEVEL``; only lower than the host's).
    Call before resolving any target: "x86" then is that level's generic CPU."""
    if level:
        os.environ["TVM_BNN_X86_LEVEL"] = level
        from tvm_bnn.targets import x86_host

        x86_host.forced_level()  # raises, naming what is missing, if the host does not have the level
        # PyTorch measured as on such a machine too: its kernels (ATen's dispatch and oneDNN's JIT) read these on
        # first use, i.e. after this call. onnxruntime has no such switch (MLAS reads CPUID): it keeps the host's.
        aten = {"avx512": "avx512", "avx2": "avx2"}.get(level, "default")
        onednn = {"avx512": "AVX512_CORE", "avx2": "AVX2", "popcnt": "SSE41", "sse2": "SSE41"}[level]
        os.environ.setdefault("ATEN_CPU_CAPABILITY", aten)
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", onednn)


def baselines_line(level: str | None) -> str:
    """Which ISA the baselines ran at (PyTorch's ATen capability; onnxruntime uses the host's, forced or not)."""
    import torch

    line = f"baselines: PyTorch ATen {torch.backends.cpu.get_cpu_capability()}"
    if level:
        line += f" (ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA')}); onnxruntime at the host's ISA (no switch)"
    return line


def machine_line() -> str:
    """'machine: AMD EPYC (LLVM: znver4), x86 level avx512; 2 threads' (and whether the level is forced)."""
    from tvm_bnn.targets import x86_host

    return f"machine: {x86_host.describe_host()}; {THREADS} threads"


def median_seconds(fn, repeat: int = 20, warmup: int = 3, min_seconds: float = 0.0) -> float:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _busy_threads() -> list:
    """Ids of this process's threads, other than the calling one, that are running or runnable (state R)."""
    me = str(threading.get_native_id())
    busy = []
    for tid in os.listdir("/proc/self/task"):
        if tid != me:
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "R":
                        busy.append(tid)
            except (OSError, IndexError):
                pass  # a thread that just exited
    return busy


def settle_threads(poll: float = 0.001, quiet_polls: int = 3, max_seconds: float = 1.0) -> float:
    """Wait until no other thread of this process is running (``quiet_polls`` polls in a row), at most
    ``max_seconds``; returns the time waited.

    Thread pools (torch's OpenMP workers, TVM's workers) busy-wait after a parallel region ends. Timing one library
    right after another lets the first one's spinning threads take a core from the second: measured on the 2-core
    machine, torch's OpenMP worker ran 9-10 ms inside an 18 ms TVM measurement taken right after a torch matmul,
    and TVM's worker thread waited as long on the run queue (the kernel's static partition then takes up to 2x).
    Settling before every measurement gives each side the cores its own threads need. (A thread's state is read,
    not its CPU time: the time of a thread running on another core is only updated at scheduler ticks.)"""
    start = time.perf_counter()
    if not os.path.isdir("/proc/self/task"):  # no procfs: a fixed pause, longer than the pools' spin-wait
        time.sleep(0.2)
        return time.perf_counter() - start
    quiet = 0
    while quiet < quiet_polls and time.perf_counter() - start < max_seconds:
        quiet = quiet + 1 if not _busy_threads() else 0
        time.sleep(poll)
    return time.perf_counter() - start


def torch_threads():
    import torch

    torch.set_num_threads(THREADS)
    return torch


def ort_session(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


_CLOCK_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
  struct timespec a, b; long n = 300000000, x = 0;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%f\n", 4.0 * n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9));
  return 0;
}
"""


def clock_hz(copies: int = 1) -> tuple:
    """(Hz, how it was obtained). ``copies`` chains run at once, one per thread the kernels use: with every core
    busy a boost clock can be lower (1 % on the 2-core Zen 4 VM), and cycles are counted at the clock of the run."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, exe = os.path.join(tmp, "clk.c"), os.path.join(tmp, "clk")
            with open(src, "w") as f:
                f.write(_CLOCK_C)
            subprocess.run(["gcc", "-O2", src, "-o", exe], check=True, capture_output=True)

            def concurrent() -> float:  # the mean clock of ``copies`` chains running together
                procs = [subprocess.Popen([exe], stdout=subprocess.PIPE, text=True) for _ in range(copies)]
                return sum(float(p.communicate()[0]) for p in procs) / copies

            hz = max(concurrent() for _ in range(3))
            return hz, f"measured (dependent add chain on {copies} core{'s' if copies > 1 else ''} at once, best of 3)"
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    with open("/proc/cpuinfo") as f:
        mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    return max(mhz) * 1e6, "/proc/cpuinfo cpu MHz"


# bit-MACs per cycle per core that each x86 level's popcount sequence allows (bench/kernels.py's docstring derives
# each); avx512's is measured on the host where it can be (avx512_bound)
BOUND = {"avx512": 512, "avx2": 171, "popcnt": 85, "sse2": 18}


def avx512_bound(hz: float) -> tuple:
    """(bit-MACs per cycle per core, how): 512 per ``vpopcntq zmm`` the host retires per cycle (bench/popcount_rate.py:
    2 on Zen 5, 1 on Zen 4), or the table's 512 where that cannot be measured (no VPOPCNTDQ, no gcc)."""
    from popcount_rate import host_flags, rate

    if "avx512_vpopcntdq" not in host_flags():
        return BOUND["avx512"], "table"
    try:
        per_cycle = rate("vpopcntq zmm", 3) / hz
    except (OSError, RuntimeError, ValueError, subprocess.CalledProcessError) as exc:
        return BOUND["avx512"], f"table ({exc.__class__.__name__} measuring it)"
    return 512 * max(1, round(per_cycle)), f"measured: {per_cycle:.2f} vpopcntq zmm per cycle"


def avx512_ceiling(hz: float) -> int | None:
    """bit-MACs per cycle per core of the binary conv's own word (broadcast-load XOR, ``vpopcntq``, ``vpaddq``;
    bench/popcount_rate.py's xor+popcnt+add row): the most the AVX-512 kernels' instruction mix allows on this core
    (1.30 words per cycle on Zen 5: 65 % of its popcount bound), or None where it cannot be measured."""
    from popcount_rate import host_flags, rate

    if "avx512_vpopcntdq" not in host_flags():
        return None
    try:
        return round(512 * rate("xor+popcnt+add", 3) / hz)
    except (OSError, RuntimeError, ValueError, subprocess.CalledProcessError):
        return None


def binary_rate_line(macs: int, seconds: float, level: str, threads: int = THREADS) -> str:
    """'binary convs: 0.447 ms for 1.68 G bit-MACs at 4.19 GHz: 458 bit-MACs per cycle and core, 45 % of the avx512
    bound 1024 (measured ...), 67 % of the word ceiling': the rate of kernels timed in a model, against the bound of
    the level they were built for (the clock measured on ``threads`` cores at once)."""
    hz, _ = clock_hz(threads)
    rate = macs / (seconds * hz * threads)
    one_core = clock_hz(1)[0] if level == "avx512" else None  # the popcount rates are measured on one core
    bound, how = (avx512_bound(one_core) if level == "avx512" else (BOUND.get(level), "table"))
    text = f"{seconds * 1e3:.3f} ms for {macs / 1e9:.2f} G bit-MACs at {hz / 1e9:.2f} GHz: {rate:.0f} bit-MACs per " \
           f"cycle and core"
    if bound:
        text += f", {rate / bound:.0%} of the {level} bound {bound} ({how})"
    ceiling = avx512_ceiling(one_core) if level == "avx512" else None
    if ceiling:
        text += f", {rate / ceiling:.0%} of the word ceiling {ceiling}"
    return text
