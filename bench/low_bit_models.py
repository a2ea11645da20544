"""Few-bit whole models on x86 (issue 21): Brevitas' BNN-PYNQ 2W2A / 1W2A models and Larq's DoReFa-Net, compiled by
``tvm_bnn.compile(model, "x86")`` and timed as the user calls them (``cm(x)``), against, in the same run:

* Brevitas models: PyTorch fp32 (Brevitas' own eager forward, which computes its quantizers in float) and
  onnxruntime fp32 of ``torch.onnx.export(dynamo=False)`` (the quantizers as float ops);
* DoReFa-Net (an ONNX file made by tf2onnx, ``tests/data/larq_dorefa/regenerate.py --full DIR``): onnxruntime fp32
  of the same file; the small fixtures of tests/data/larq_dorefa run too.

Prints per model the layers compiled few-bit (W1A2 / W2A2 ...), the medians of interleaved rounds, the ratios
baseline time / tvm_bnn time (> 1: tvm_bnn faster) and the largest difference from the source framework's output.

    TVM_NUM_THREADS=2 python bench/low_bit_models.py [--models cnv_2w2a tfc_2w2a cnv_1w2a] [--dorefanet PATH.onnx]
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(__file__))
from common import THREADS, machine_line, median_seconds, ort_session, settle_threads, torch_threads  # noqa: E402

torch = torch_threads()
import numpy as np  # noqa: E402

import tvm_bnn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "data", "larq_dorefa")


def bits_summary(report) -> str:
    counts = collections.Counter(r.bits for r in report)
    return ", ".join(f"{n} {b}" for b, n in sorted(counts.items()))


def brevitas_case(name: str, directory: str) -> dict:
    from brevitas_pynq import build

    model, x = build(name)
    onnx_path = os.path.join(directory, f"{name}.onnx")
    torch.onnx.export(model, (x,), onnx_path, dynamo=False)
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    ort = ort_session(onnx_path)
    x_np = x.numpy()
    with torch.no_grad():
        ref = model(x).numpy()

    def torch_call():
        with torch.no_grad():
            model(x)

    return dict(name=name, report=cm.report, diff=float(np.abs(cm(x_np) - ref).max()), scale=float(np.abs(ref).max()),
                runs={"tvm_bnn": lambda: cm(x_np), "PyTorch fp32": torch_call,
                      "onnxruntime fp32": lambda: ort.run(None, {ort.get_inputs()[0].name: x_np})})


def onnx_case(name: str, path: str) -> dict:
    data = np.load(path[:-len(".onnx")] + ".npz")
    x = data["x"]
    cm = tvm_bnn.compile(path, "x86", progress=False)
    ort = ort_session(path)
    return dict(name=name, report=cm.report, diff=float(np.abs(cm(x) - data["y"]).max()),
                scale=float(np.abs(data["y"]).max()),
                runs={"tvm_bnn": lambda: cm(x),
                      "onnxruntime fp32": lambda: ort.run(None, {ort.get_inputs()[0].name: x})})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["cnv_2w2a", "tfc_2w2a", "cnv_1w2a"])
    parser.add_argument("--dorefanet", default="/work/larq-models/dorefanet.onnx",
                        help="larq_zoo DoReFaNet through tf2onnx (skipped when absent)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    print(machine_line())
    with tempfile.TemporaryDirectory() as directory:
        cases = [brevitas_case(name, directory) for name in args.models]
        cases += [onnx_case(name, os.path.join(FIXTURES, f"{name}.onnx")) for name in ("dorefa_mini", "dorefa_w2a2")]
        if args.dorefanet and os.path.exists(args.dorefanet):
            cases.append(onnx_case("DoReFaNet", args.dorefanet))
        else:
            print(f"(no DoReFaNet at {args.dorefanet}: make it with tests/data/larq_dorefa/regenerate.py --full DIR)")
        rounds = collections.defaultdict(list)
        for _ in range(args.rounds):
            for case in cases:
                for label, fn in case["runs"].items():
                    settle_threads()
                    rounds[case["name"], label].append(median_seconds(fn, repeat=args.repeat))
    print(f"batch 1, {THREADS} threads; medians of {args.rounds} rounds of {args.repeat} calls; ratios: baseline time /"
          " tvm_bnn time (> 1: tvm_bnn faster)")
    print(f"{'model':12} {'tvm_bnn ms':>10} {'PyTorch fp32 /':>15} {'ORT fp32 /':>11} {'max |diff|':>11}  layers")
    for case in cases:
        med = {label: float(np.median(rounds[case["name"], label])) for label in case["runs"]}
        t = med["tvm_bnn"]
        torch_ratio = f"{med['PyTorch fp32'] / t:.2f}x" if "PyTorch fp32" in med else "-"
        print(f"{case['name']:12} {t * 1e3:>10.3f} {torch_ratio:>15} {med['onnxruntime fp32'] / t:>10.2f}x "
              f"{case['diff']:>11.2g}  {bits_summary(case['report'])} (|y| <= {case['scale']:.3g})")


if __name__ == "__main__":
    main()
