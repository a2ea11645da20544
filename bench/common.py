"""Shared helpers for the benchmarks: thread pinning and robust timing (median of repeats, same process)."""
from __future__ import annotations

import os
import statistics
import time

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


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
