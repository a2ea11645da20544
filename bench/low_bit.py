"""Few-bit layers on x86 (issue 21): one 3x3 conv, 256 -> 256 channels, 28x28, stride 1, pad 1, batch 1, as

* W1A1: ``sign(x)`` activations, ``sign(w)`` weights (one binary kernel);
* W1A2: 3-level activations ``clamp(round(x), -1, 1)`` (Brevitas' 2-bit narrow range: two bit planes), sign weights;
* W2A2: the same activations, ternary weights (two weight planes: on x86 with vpopcntq or popcnt one ternary kernel
  over both activation planes, schedules/ternary_pairs.py; on AVX2 one byte-lane ternary kernel per plane,
  schedules/simd_bytes.ternary_dot);
* W2A2-DoReFa: DoReFa's 4 levels ``round(clamp(x, 0, 1) * 3) / 3`` (two planes in the binary code), ternary weights;

each compiled by ``tvm_bnn.compile(model, "x86")`` and timed as the user calls it (``cm(x)``: packing, the plane
kernels, their sum, the NCHW float output), against, in the same run, onnxruntime int8 (the W2A2 model's conv as a
float ONNX model through ``onnxruntime.quantization.quantize_static``, QOperator format: QLinearConv, per-channel
int8 weights, uint8 activations calibrated on 16 inputs of the benchmark's distribution), onnxruntime fp32 and PyTorch
fp32 (F.conv2d on the same float activations). Figures are medians over interleaved rounds; ratios are baseline
time / tvm_bnn time (> 1: tvm_bnn is faster), and each few-bit row against W1A1 (its time / W1A1's: the plane count).

``--level avx2`` measures as a machine of that x86 level (forced on a bigger host, as in the other benches; PyTorch
at AVX2 too, onnxruntime at the host's ISA).

    TVM_NUM_THREADS=2 python bench/low_bit.py [--repeat 30] [--rounds 5] [--level avx2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from common import (THREADS, baselines_line, force_level, machine_line, median_seconds, ort_session,  # noqa: E402
                    settle_threads, torch_threads)

torch = torch_threads()
import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tvm_bnn  # noqa: E402

VARIANTS = ["w1a1", "w1a2", "w2a2", "w2a2-dorefa"]


class LowBitConv(torch.nn.Module):
    def __init__(self, c, bits, seed=0):
        super().__init__()
        self.bits = bits
        w = torch.randn(c, c, 3, 3, generator=torch.Generator().manual_seed(seed))
        sign = torch.sign(w)
        self.register_buffer("w", torch.where(w.abs() < 0.5, 0.0, sign) if bits.startswith("w2") else sign)

    def act(self, x):
        if self.bits == "w1a1":
            return torch.where(x >= 0, 1.0, -1.0)
        if self.bits == "w2a2-dorefa":
            return torch.round(torch.clamp(x, 0, 1) * 3) / 3
        return torch.clamp(torch.round(x), -1, 1)

    def forward(self, x):
        return F.conv2d(self.act(x), self.w, padding=1)


class FloatConv(torch.nn.Module):
    """The conv alone on already-quantized activations: what onnxruntime int8 and the fp32 baselines compute."""

    def __init__(self, w):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, a):
        return F.conv2d(a, self.w, padding=1)


def ort_int8(model: FloatConv, calib: list, directory: str):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = os.path.join(directory, "conv_fp32.onnx")
    torch.onnx.export(model, (calib[0],), fp32, dynamo=False, opset_version=17, input_names=["a"])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"a": a.numpy()} for a in calib])

        def get_next(self):
            return next(self.it, None)

    int8 = os.path.join(directory, "conv_int8.onnx")
    quantize_static(fp32, int8, Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return ort_session(fp32), ort_session(int8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--level", choices=("avx512", "avx2", "popcnt", "sse2"),
                        help="measure as a machine of this x86 ISA level (lower than the host's; forced)")
    args = parser.parse_args(argv)
    force_level(args.level)
    c, hw = args.channels, args.size
    print(machine_line())
    print(baselines_line(args.level))
    x = torch.randn(1, c, hw, hw, generator=torch.Generator().manual_seed(1))
    compiled, exact = {}, {}
    for bits in VARIANTS:
        model = LowBitConv(c, bits).eval()
        cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
        with torch.no_grad():
            ref = model(x).numpy()
        exact[bits] = (cm.report[0].bits, float(np.abs(cm(x.numpy()) - ref).max()))
        compiled[bits] = cm
    w2 = LowBitConv(c, "w2a2").eval()
    with torch.no_grad():
        a = w2.act(x)
        calib = [w2.act(torch.randn(1, c, hw, hw, generator=torch.Generator().manual_seed(100 + i)))
                 for i in range(16)]
    conv = FloatConv(w2.w).eval()
    with tempfile.TemporaryDirectory() as d:
        ort32, ort8 = ort_int8(conv, calib, d)
        with torch.no_grad():
            want = conv(a).numpy()
        got8 = ort8.run(None, {"a": a.numpy()})[0]
        x_np, a_np = x.numpy(), a.numpy()
        runs = {f"tvm_bnn {b}": (lambda cm=compiled[b]: cm(x_np)) for b in VARIANTS}
        runs["onnxruntime int8"] = lambda: ort8.run(None, {"a": a_np})
        runs["onnxruntime fp32"] = lambda: ort32.run(None, {"a": a_np})

        def torch_conv():
            with torch.no_grad():
                conv(a)

        runs["PyTorch fp32"] = torch_conv
        rounds = {k: [] for k in runs}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                settle_threads()
                rounds[name].append(median_seconds(fn, repeat=args.repeat))
    med = {k: float(np.median(v)) for k, v in rounds.items()}
    print(f"3x3 conv {c}->{c}, {hw}x{hw}, pad 1, batch 1, {THREADS} threads; medians of {args.rounds} rounds of "
          f"{args.repeat} calls")
    print(f"  onnxruntime int8 vs float conv on the same activations: max |diff| {np.abs(got8 - want).max():.3g} "
          f"(of max |y| {np.abs(want).max():.3g}: int8 rounding)")
    base = med["tvm_bnn w1a1"]
    print(f"{'':24} {'bits':>5} {'ms':>8} {'/ W1A1':>7} {'ORT int8 /':>11} {'ORT fp32 /':>11} {'torch fp32 /':>13} "
          f"{'|y - torch|':>12}")
    for b in VARIANTS:
        t = med[f"tvm_bnn {b}"]
        print(f"{'tvm_bnn ' + b:24} {exact[b][0]:>5} {t * 1e3:>8.3f} {t / base:>6.2f}x "
              f"{med['onnxruntime int8'] / t:>10.2f}x {med['onnxruntime fp32'] / t:>10.2f}x "
              f"{med['PyTorch fp32'] / t:>12.2f}x {exact[b][1]:>12.2g}")
    for name in ("onnxruntime int8", "onnxruntime fp32", "PyTorch fp32"):
        print(f"{name:24} {'':>5} {med[name] * 1e3:>8.3f}")
    print("  ratios: baseline time / tvm_bnn time (> 1: tvm_bnn faster); '/ W1A1': time over the W1A1 layer's.")


if __name__ == "__main__":
    main()
