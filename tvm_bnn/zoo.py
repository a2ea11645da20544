"""Reference BNN architectures built from tvm_bnn.nn, for benchmarks, tests and as starting points."""
from __future__ import annotations

import torch
from torch import nn

from . import nn as bnn


class BiRealBlock(nn.Module):
    """Bi-Real-Net block: sign -> binary 3x3 conv -> BN, plus a real-valued shortcut around every binary conv.

    The shortcut of a downsampling block is AvgPool 2x2 -> float 1x1 conv -> BN, as in Liu et al. (2018).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv = bnn.BinaryConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, scale="xnor")
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.AvgPool2d(stride) if stride > 1 else nn.Identity(), nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.bn(self.conv(x)) + self.shortcut(x)


class BiRealNet(nn.Module):
    """Bi-Real-Net-18 style: float 7x7 stem, 16 binary 3x3 convs with real shortcuts, float classifier."""

    def __init__(self, num_classes: int = 1000, widths=(64, 128, 256, 512), blocks_per_stage: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                layers.append(BiRealBlock(cin, width, stride=2 if stage > 0 and i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def bireal_net18(num_classes: int = 1000) -> BiRealNet:
    return BiRealNet(num_classes)


class BiRealBottleneck(nn.Module):
    """ResNet-50-style bottleneck, binarized Bi-Real fashion: 1x1 -> 3x3 -> 1x1 binary convs, each with BN and a
    real-valued shortcut around it (a float 1x1 projection where the width or stride changes)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1):
        super().__init__()
        self.reduce = BiRealBlock1x1(cin, mid)
        self.conv = BiRealBlock(mid, mid, stride)
        self.expand = BiRealBlock1x1(mid, cout)

    def forward(self, x):
        return self.expand(self.conv(self.reduce(x)))


class BiRealBlock1x1(nn.Module):
    """sign -> binary 1x1 conv -> BN, plus a shortcut (float 1x1 projection when the width changes)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = bnn.BinaryConv2d(cin, cout, 1, bias=False, scale="xnor")
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                                                        nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.bn(self.conv(x)) + self.shortcut(x)


class BiRealNet50(nn.Module):
    """ResNet-50-sized BNN: float 7x7 stem, 16 bottlenecks (3, 4, 6, 3) = 48 binary convs, float classifier;
    32.5 M weights (ResNet-50: 25.6 M; the float shortcut projections add the rest)."""

    def __init__(self, num_classes: int = 1000, stages=((64, 256, 3), (128, 512, 4), (256, 1024, 6),
                                                           (512, 2048, 3))):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for stage, (mid, cout, n) in enumerate(stages):
            for i in range(n):
                layers.append(BiRealBottleneck(cin, mid, cout, stride=2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def bireal_net50(num_classes: int = 1000) -> BiRealNet50:
    return BiRealNet50(num_classes)


def binary_mlp(depth: int = 100, width: int = 256, inputs: int = 784, classes: int = 10) -> nn.Sequential:
    """A deep binary MLP: float input layer, ``depth - 2`` binary dense layers with BN, a binary classifier."""
    layers = [nn.Linear(inputs, width), nn.BatchNorm1d(width)]
    for _ in range(depth - 2):
        layers += [bnn.BinaryLinear(width, width, bias=False), nn.BatchNorm1d(width)]
    layers.append(bnn.BinaryLinear(width, classes))
    return nn.Sequential(*layers)


def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial eval statistics (an untrained net has mean 0 / var 1), in place."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 2 + 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) * 20 + 1)
                m.weight.copy_(torch.randn(n, generator=gen))
                m.bias.copy_(torch.randn(n, generator=gen) * 0.5)
    return model
