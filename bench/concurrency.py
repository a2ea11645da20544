"""Throughput of one compiled model called from Python threads (issue #19: serving from a threaded server).

A Bi-Real-Net-18-style BNN (``tvm_bnn.zoo``, batch 1, target x86) with TVM's thread pool at one thread per call
(``TVM_NUM_THREADS=1``), so the parallelism is the callers': calls per second of 1 thread, of 2 threads (each call
on a VM of its own from the model's pool: ``deploy.runtime_loader.MachinePool``), and of 2 threads behind one lock
(what a single VM behind a lock would give). Each figure is the median of ``--rounds`` rounds, the modes
interleaved in each round; every thread calls for ``--seconds`` on its own input, all released at once. The outputs
of the threaded calls are checked against single-threaded ones.

The first lines name the machine (CPU model, LLVM CPU, x86 ISA level) and the load average before and after, and
each figure says how many cores other processes kept busy while it was measured (from /proc/stat): on a machine
busy with other work the 2-thread figure is bounded by the cores left.

    python bench/concurrency.py [--size 224] [--seconds 3] [--rounds 3]

``BENCH_THREADS=2`` gives each call TVM's 2 threads instead (TVM's thread pool is per calling thread: 2 callers
then run 4 threads on 2 cores).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

os.environ.setdefault("BENCH_THREADS", "1")  # TVM_NUM_THREADS=1 (common.py): the threads are the callers'
sys.path.insert(0, os.path.dirname(__file__))
from common import THREADS, machine_line, settle_threads, torch_threads  # noqa: E402

torch = torch_threads()
import numpy as np  # noqa: E402

import tvm_bnn  # noqa: E402
from tvm_bnn.zoo import bireal_net18, randomize_batchnorm_  # noqa: E402


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


def cpu_seconds() -> tuple:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) so far; (0, 0) without procfs."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system


def throughput(call, xs, threads: int, seconds: float) -> tuple:
    """(calls per second over all threads, outputs by thread, cores other processes kept busy meanwhile):
    ``threads`` threads, each calling ``call`` on its own input for ``seconds``, released together."""
    barrier = threading.Barrier(threads + 1)
    counts, outputs, errors = [0] * threads, [None] * threads, []

    def work(t):
        try:
            barrier.wait()
            end = time.perf_counter() + seconds
            n = 0
            while time.perf_counter() < end:
                outputs[t] = call(xs[t])
                n += 1
            counts[t] = n
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    settle_threads()
    barrier.wait()
    t0, (busy0, own0) = time.perf_counter(), cpu_seconds()
    for th in pool:
        th.join()
    elapsed = time.perf_counter() - t0
    busy1, own1 = cpu_seconds()
    if errors:
        raise errors[0]
    return sum(counts) / elapsed, outputs, max(0.0, (busy1 - busy0) - (own1 - own0)) / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--seconds", type=float, default=3.0, help="calling time per thread per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print(f"cpu: {cpu_model()}")
    print(machine_line())
    print(f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')} (threads per call); before: {load_line()}")
    model = randomize_batchnorm_(bireal_net18()).eval()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 3, args.size, args.size)).astype("float32") for _ in range(2)]
    cm = tvm_bnn.compile(model, "x86", example_inputs=(torch.from_numpy(xs[0]),), progress=False)
    print(f"model: Bi-Real-Net-18 style, 1x3x{args.size}x{args.size}, target x86 ({cm.target.attrs.get('mcpu', '')})")
    expected = [cm(x) for x in xs]

    lock = threading.Lock()

    def locked(x):
        with lock:
            return cm(x)

    modes = [("1 thread", cm, 1), ("2 threads, a VM each", cm, 2), ("2 threads, one lock", locked, 2)]
    figures = {name: [] for name, _, _ in modes}
    others = {name: [] for name, _, _ in modes}
    for _ in range(args.rounds):
        for name, call, threads in modes:
            rate, outputs, busy = throughput(call, xs, threads, args.seconds)
            for t, out in enumerate(outputs):
                np.testing.assert_array_equal(out, expected[t])  # the threads' outputs are the sequential ones
            figures[name].append(rate)
            others[name].append(busy)

    base = statistics.median(figures["1 thread"])
    print(f"calls per second (median of {args.rounds} rounds of {args.seconds:g} s; per call {THREADS} TVM thread):")
    for name, _, _ in modes:
        rates = figures[name]
        med = statistics.median(rates)
        print(f"  {name:22s} {med:8.1f} calls/s  {med / base:5.2f}x  "
              f"(rounds: {', '.join(f'{r:.1f}' for r in rates)}; {1e3 / med:.2f} ms per call of throughput; "
              f"other processes busy {max(others[name]):.2f} cores at most)")
    _, machines = cm._machines()
    print(f"VMs in the pool: {machines.created}; after: {load_line()}")


if __name__ == "__main__":
    main()
