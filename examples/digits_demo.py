"""Train a small BNN on scikit-learn's 8x8 digits, compile it for x86 with tvm_bnn, and compare with PyTorch.

Run it with ``bash scripts/demo.sh`` (sets up the .venv first) or ``python examples/digits_demo.py [--epochs N]``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import tvm_bnn
from tvm_bnn import nn as bnn


def make_model() -> torch.nn.Module:
    """A float stem (an image is not ±1) then binary layers; the classifier is binary too."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1, bias=False), torch.nn.BatchNorm2d(32),
        bnn.BinaryConv2d(32, 64, 3, padding=1, bias=False), torch.nn.BatchNorm2d(64), torch.nn.MaxPool2d(2),
        bnn.BinaryConv2d(64, 96, 3, padding=1, bias=False), torch.nn.BatchNorm2d(96), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), bnn.BinaryLinear(96 * 2 * 2, 10, bias=False), torch.nn.BatchNorm1d(10))


def load_data():
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0 - 0.5)[:, None]  # [N, 1, 8, 8] in [-0.5, 0.5]
    return train_test_split(x, digits.target.astype(np.int64), test_size=0.2, random_state=0,
                            stratify=digits.target)


def train(model, x, y, epochs: int, seed: int = 0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def median_seconds(fn, repeat=50):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=25)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    x_train, x_test, y_train, y_test = load_data()
    print(f"digits: {len(x_train)} training and {len(x_test)} test images of 8x8; training {args.epochs} epochs")
    model = train(make_model(), x_train, y_train, args.epochs)

    with torch.no_grad():
        torch_logits = model(torch.tensor(x_test)).numpy()
    cm = tvm_bnn.compile(model, "x86", example_inputs=(torch.tensor(x_test),))
    compiled_logits = cm(x_test)
    print()
    print(cm.report)
    print()
    acc_torch = float((torch_logits.argmax(1) == y_test).mean())
    acc_compiled = float((compiled_logits.argmax(1) == y_test).mean())
    same = bool((torch_logits.argmax(1) == compiled_logits.argmax(1)).all())
    print(f"test accuracy: PyTorch {acc_torch:.4f}, compiled {acc_compiled:.4f} "
          f"({'equal' if acc_torch == acc_compiled else 'DIFFERENT'}; predictions identical: {same}; "
          f"max |logit difference| {np.abs(torch_logits - compiled_logits).max():.2e})")
    print(f"weights: {cm.report.weight_bytes_float} bytes float32 -> {cm.report.weight_bytes_packed} bytes compiled "
          f"({cm.report.weight_bytes_float / cm.report.weight_bytes_packed:.1f}x smaller)")

    one = torch.tensor(x_test[:1])
    cm1 = tvm_bnn.compile(model, "x86", example_inputs=(one,), progress=False)
    with torch.no_grad():
        t_torch = median_seconds(lambda: model(one))
    t_compiled = cm1.time(one.numpy(), number=20, repeat=20)
    print(f"latency, batch 1, same run: PyTorch fp32 eager {t_torch * 1e6:.0f} us, compiled {t_compiled * 1e6:.0f} us "
          f"({t_torch / t_compiled:.1f}x faster)")
    return 0 if acc_torch == acc_compiled else 1


if __name__ == "__main__":
    raise SystemExit(main())
