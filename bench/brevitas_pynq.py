"""Brevitas' BNN-PYNQ models (brevitas_examples): layers binarized and compile time per route, same run.

    .venv/bin/python bench/brevitas_pynq.py [--models cnv_1w1a lfc_1w1a sfc_1w1a tfc_1w1a cnv_2w2a tfc_2w2a]

Each model as brevitas_examples builds it (untrained weights: the binarization does not depend on training), in eval
mode, through three routes: the nn.Module (torch.export inside tvm_bnn), ``torch.onnx.export(dynamo=False)`` and
Brevitas' own QONNX export (``export_qonnx``: BipolarQuant / Quant ops). Prints per route the conv/dense layers
binarized, the analysis time (import + our passes, no build) and, for the module route, the compile time for x86 and
the largest difference from Brevitas' own output. The 1W1A models must binarize every layer whose weights and input
are 1-bit (CNV's first conv takes the 8-bit image); the 2W2A ones none.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np
import torch

import tvm_bnn

SHAPES = {"cnv": (1, 3, 32, 32), "lfc": (1, 1, 28, 28), "sfc": (1, 1, 28, 28), "tfc": (1, 1, 28, 28)}


def build(name: str):
    from brevitas_examples.bnn_pynq.models import get_model_cfg, model_impl

    cfg = get_model_cfg(name)
    model = model_impl[cfg.get("MODEL", "ARCH")](cfg).eval()
    x = torch.randn(*SHAPES[name.split("_")[0]])
    with torch.no_grad():
        model(x)  # settles Brevitas' lazily initialised scales
    return model, x


def routes(model, x, directory: str) -> dict:
    from brevitas.export import export_qonnx

    onnx_path = os.path.join(directory, "model.onnx")
    torch.onnx.export(model, (x,), onnx_path, dynamo=False)
    qonnx_path = os.path.join(directory, "model_qonnx.onnx")
    export_qonnx(model, x, export_path=qonnx_path)
    return {"module": (model, (x,)), "onnx": (onnx_path, (x.numpy(),)), "qonnx": (qonnx_path, (x.numpy(),))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+",
                        default=["cnv_1w1a", "lfc_1w1a", "sfc_1w1a", "tfc_1w1a", "cnv_2w2a", "tfc_2w2a"])
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # the per-layer "stays float" warnings of the 2-bit models
    torch.manual_seed(0)
    print(f"{'model':10s} {'route':7s} {'binarized':>10s} {'analyse s':>10s}   compile x86 s, max |tvm_bnn - Brevitas|")
    total = 0
    for name in args.models:
        model, x = build(name)
        with torch.no_grad():
            ref = model(x).numpy()
        with tempfile.TemporaryDirectory() as directory:
            for route, (source, inputs) in routes(model, x, directory).items():
                t0 = time.perf_counter()
                report = tvm_bnn.analyse(source, inputs).report
                t_analyse = time.perf_counter() - t0
                extra = ""
                if route == "module":
                    t0 = time.perf_counter()
                    cm = tvm_bnn.compile(source, "x86", example_inputs=inputs, progress=False)
                    extra = f"{time.perf_counter() - t0:.1f} s, {np.abs(cm(x) - ref).max():.2g}"
                    total += report.num_binarized if name.endswith("1w1a") else 0
                print(f"{name:10s} {route:7s} {report.num_binarized:>4d} / {len(report):<3d} {t_analyse:>10.1f}   {extra}")
    print(f"1W1A layers binarized (module route): {total}")


if __name__ == "__main__":
    main()
