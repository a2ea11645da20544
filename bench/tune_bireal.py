"""Tune the Bi-Real-Net-18-style model end to end and report tuning time and the tuned speed-up.

    python bench/tune_bireal.py [--trials 256] [--work-dir tuning-bireal]

Prints the wall time of tvm_bnn.tune with the given budget (the issue's limit: 30 minutes for the default budget),
the per-task results, then the untuned and tuned latency of the compiled model measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import THREADS, median_seconds, torch_threads  # noqa: E402

torch = torch_threads()
import numpy as np  # noqa: E402

import tvm_bnn  # noqa: E402
from tvm_bnn.tuning import format_results  # noqa: E402
from tvm_bnn.zoo import bireal_net18, randomize_batchnorm_  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--work-dir", default="tuning-bireal")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = randomize_batchnorm_(bireal_net18()).eval()
    x = torch.randn(1, 3, args.size, args.size)

    t0 = time.perf_counter()
    results = tvm_bnn.tune(model, "x86", example_inputs=(x,), trials=args.trials, work_dir=args.work_dir)
    tune_s = time.perf_counter() - t0
    print(format_results(results))
    print(f"tuning time, {args.trials} trials, {len(results)} tasks, {THREADS} threads: {tune_s / 60:.1f} min")

    untuned = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    tuned = tvm_bnn.compile(model, "x86", example_inputs=(x,), tuning_db=args.work_dir, progress=False)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(tuned(x) - ref).max() / np.abs(ref).max() < 1e-5
    xn = x.numpy()
    t_untuned = median_seconds(lambda: untuned(xn), args.repeat)
    t_tuned = median_seconds(lambda: tuned(xn), args.repeat)
    with torch.no_grad():
        t_torch = median_seconds(lambda: model(x), args.repeat)
    print(f"untuned {t_untuned * 1e3:.2f} ms, tuned {t_tuned * 1e3:.2f} ms ({t_untuned / t_tuned:.2f}x), "
          f"PyTorch fp32 {t_torch * 1e3:.2f} ms (tuned is {t_torch / t_tuned:.2f}x faster)")


if __name__ == "__main__":
    main()
