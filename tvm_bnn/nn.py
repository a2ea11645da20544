"""Training-side PyTorch modules whose exported graphs tvm_bnn always recognises.

All of them binarize with the rule the compiled code uses: ``x >= 0 -> +1, x < 0 -> -1`` (so 0 -> +1, where
``torch.sign(0)`` would give 0). A model trained with these layers therefore compiles to bit-identical results.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _SignSTE(torch.autograd.Function):
    """Forward: x >= 0 -> +1 else -1. Backward: straight-through, gradient passed where |x| <= 1 (Hardtanh)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """±1 binarization with a straight-through gradient; exports as ``where(x >= 0, 1, -1)``."""
    if torch.compiler.is_compiling() or not x.requires_grad:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return _SignSTE.apply(x)


class BinarySign(nn.Module):
    """Deterministic sign binarization (x >= 0 -> +1) with a straight-through estimator."""

    def forward(self, x):
        return binary_sign(x)


class StochasticSign(nn.Module):
    """Stochastic binarization of Courbariaux et al. (BinaryConnect) while training: +1 with probability
    ``hard_sigmoid(x) = clip((x + 1) / 2, 0, 1)``; deterministic :class:`BinarySign` in eval mode (what compiles)."""

    def forward(self, x):
        if not self.training:
            return binary_sign(x)
        p = torch.clamp((x + 1) / 2, 0, 1)
        sample = torch.where(torch.rand_like(x) < p, 1.0, -1.0).to(x.dtype)
        return sample.detach() + x - x.detach() if x.requires_grad else sample  # straight-through


def _scaled(w: torch.Tensor, scale: str | None, dims) -> torch.Tensor:
    wb = binary_sign(w)
    if scale is None:
        return wb
    if scale == "xnor":  # XNOR-Net: alpha_o = mean |W_o|
        return wb * w.abs().mean(dim=dims, keepdim=True)
    raise ValueError(f"scale={scale!r}: expected None or 'xnor'")


class BinaryConv2d(nn.Conv2d):
    """Conv2d with binarized weights (optionally XNOR-scaled) and, by default, binarized inputs.

    ``binarize_input=False`` keeps a float input (e.g. the first layer on an image); such a layer stays float in the
    compiled model, and the report says so.
    """

    def __init__(self, *args, scale: str | None = None, binarize_input: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"padding_mode={self.padding_mode!r}: BinaryConv2d supports zero padding only")
        self.scale = scale
        self.binarize_input = binarize_input

    def forward(self, x):
        x = binary_sign(x) if self.binarize_input else x
        w = _scaled(self.weight, self.scale, (1, 2, 3))
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BinaryLinear(nn.Linear):
    """Linear layer with binarized weights (optionally XNOR-scaled) and, by default, binarized inputs."""

    def __init__(self, *args, scale: str | None = None, binarize_input: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = scale
        self.binarize_input = binarize_input

    def forward(self, x):
        x = binary_sign(x) if self.binarize_input else x
        return F.linear(x, _scaled(self.weight, self.scale, (1,)), self.bias)


__all__ = ["BinaryConv2d", "BinaryLinear", "BinarySign", "StochasticSign", "binary_sign"]
