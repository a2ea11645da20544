"""Scale: compile time and peak memory of large models, and the memory of the compiled model, same machine.

    python bench/scale.py [--models resnet50,mlp100] [--size 224] [--target x86]

Each model is compiled in a fresh subprocess (so peak RSS is the compile's own): the ResNet-50-sized BNN
(tvm_bnn.zoo.bireal_net50, 48 binary convs, 32.5 M weights) at 224x224 and a 100-layer binary MLP (width 256).
Reported: compile seconds (and the part spent in tvm_bnn's own passes, the activation analysis among them), peak RSS of the process after the compile (ru_maxrss) and the part the compile added,
the compiled model's weights and its peak RSS during inference, and |compiled - PyTorch|.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, torch
import tvm_bnn
from tvm_bnn.zoo import binary_mlp, bireal_net50, randomize_batchnorm_

name, size, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
if name == "resnet50":
    model, x = randomize_batchnorm_(bireal_net50()).eval(), torch.randn(1, 3, size, size)
else:
    model, x = randomize_batchnorm_(binary_mlp(100)).eval(), torch.randn(4, 784)
with torch.no_grad():
    ref = model(x).numpy()
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
import tvm_bnn.core.pipeline as pipeline
analysis = [0.0]
_binarize = pipeline.binarize_module
def timed(*a, **k):  # our passes: the activation analysis, binarization and fusion (after TVM's import + cleanup)
    t = time.perf_counter()
    try:
        return _binarize(*a, **k)
    finally:
        analysis[0] += time.perf_counter() - t
pipeline.binarize_module = timed
before = rss()
t0 = time.perf_counter()
cm = tvm_bnn.compile(model, target, example_inputs=(x,), progress=False)
seconds = time.perf_counter() - t0
after_compile = rss()
y = cm(x)
after_run = rss()
scale = float(np.abs(ref).max()) or 1.0
print(json.dumps({"seconds": seconds, "analysis": analysis[0], "rss_before": before, "rss_compile": after_compile, "rss_run": after_run,
                  "binarized": cm.report.num_binarized, "layers": len(cm.report),
                  "weights_float": cm.report.weight_bytes_float, "weights_packed": cm.report.weight_bytes_packed,
                  "max_rel_diff": float(np.abs(y - ref).max()) / scale}))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnet50,mlp100")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--target", default="x86")
    args = parser.parse_args(argv)
    mib = 1 / 2 ** 20
    for name in args.models.split(","):
        proc = subprocess.run([sys.executable, "-c", CHILD, name, str(args.size), args.target], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name} ({args.target}): {r['binarized']}/{r['layers']} layers binarized; compile {r['seconds']:.1f} s "
              f"(of it {r['analysis']:.1f} s in tvm_bnn's passes: the activation analysis, binarization, fusion), "
              f"peak RSS {r['rss_compile'] * mib:,.0f} MiB ({(r['rss_compile'] - r['rss_before']) * mib:,.0f} MiB "
              f"added by the compile); inference peak RSS {r['rss_run'] * mib:,.0f} MiB; weights "
              f"{r['weights_float'] * mib:,.1f} -> {r['weights_packed'] * mib:,.1f} MiB (conv/dense); "
              f"|compiled - PyTorch| / max|PyTorch| = {r['max_rel_diff']:.1e}")


if __name__ == "__main__":
    main()
