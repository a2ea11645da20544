"""Weights of 3-4 levels per output channel as +-1 weight planes (passes/weights.weight_planes): the decomposition is
exact, and the layers built from it (one binary kernel per activation plane x weight plane) equal PyTorch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tvm_bnn
from tvm_bnn.passes.weights import MAX_LEVELS, weight_planes

from ..conftest import assert_float_close, need

LEVEL_SETS = {  # name: (levels, planes expected (offset plane included), bits)
    "binary": ([-0.5, 0.5], 1, 1),
    "ternary": ([-1.0, 0.0, 1.0], 2, 2),
    "two_bit_symmetric": ([-0.75, -0.25, 0.25, 0.75], 2, 2),  # binary code, no offset
    "two_bit_unsigned": ([0.0, 0.5, 1.0, 1.5], 3, 2),  # binary code and an offset
    "asymmetric_pair": ([0.0, 1.0], 2, 1),  # {0, 1}: one plane and an offset
    "off_grid": ([-2.0, 0.0, 1.0, 7.0], 4, 2),  # thermometer: one plane per step, and an offset
}


def _random_weights(levels, shape, out_axis, seed):
    rng = np.random.default_rng(seed)
    w = rng.choice(np.asarray(levels, np.float32), shape)
    scale = rng.uniform(0.1, 3.0, shape[out_axis]).astype(np.float32)  # channels have levels of their own
    bshape = [1] * len(shape)
    bshape[out_axis] = -1
    return w * scale.reshape(bshape)


@pytest.mark.parametrize("name", sorted(LEVEL_SETS))
@pytest.mark.parametrize("out_axis,shape", [(0, (7, 5, 3, 3)), (1, (37, 9))])
def test_planes_sum_to_the_weights(name, out_axis, shape):
    levels, n_planes, bits = LEVEL_SETS[name]
    w = _random_weights(levels, shape, out_axis, seed=len(name))
    planes = weight_planes(w, out_axis)
    assert not isinstance(planes, str), planes
    assert (len(planes.signs), planes.bits) == (n_planes, bits)
    for signs in planes.signs:
        assert set(np.unique(signs)) <= {-1.0, 1.0}
    # exact in float64 up to the levels' own float32 rounding (a binary code's l0 + 3d is l3 to a few ulps)
    bshape = [1] * w.ndim
    bshape[out_axis] = -1
    total = sum(a.reshape(bshape) * s.astype(np.float64) for s, a in zip(planes.signs, planes.scales))
    np.testing.assert_allclose(total, w, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(w).max())


def test_channels_with_fewer_levels_and_constant_channels():
    w = np.array([[-1, 0, 1, 1], [2, -2, 2, 2], [0, 0, 0, 0], [3, 3, 3, 3]], np.float32)
    planes = weight_planes(w, 0)
    np.testing.assert_array_equal(sum(t for t, _ in planes.terms(0)), w)


def test_more_levels_are_refused_with_the_channel():
    w = np.tile(np.arange(MAX_LEVELS + 1, dtype=np.float32), (3, 2))
    w[0] = 1.0
    reason = weight_planes(w, 0)
    assert isinstance(reason, str) and "output channel 1" in reason and "5 distinct values" in reason
    assert "NaN" in weight_planes(np.array([[np.nan, 1.0]], np.float32), 0)


def test_rounding_merges_near_levels():
    """An exporter's folding leaves levels 1-2 ulps apart: one level, not two."""
    w = np.array([[-1, 0, 1, np.nextafter(np.float32(1), np.float32(2))]], np.float32)
    planes = weight_planes(w, 0)
    assert planes.bits == 2 and len(planes.signs) == 2


class LowBitNet(torch.nn.Module):
    """sign -> conv (3-4 level weights, zero padding, groups) -> threshold to {0, 1} -> conv (padded) -> flatten ->
    a 4-level activation (clip-round staircase) -> dense (3-4 level weights)."""

    def __init__(self, levels, groups=1, seed=0):
        super().__init__()
        self.groups = groups
        self.w1 = torch.tensor(_random_weights(levels, (6, 6 // groups, 3, 3), 0, seed))
        self.w2 = torch.tensor(_random_weights(levels, (5, 6, 2, 2), 0, seed + 1))
        self.w3 = torch.tensor(_random_weights(levels, (3, 5 * 4 * 4), 0, seed + 2))
        self.t = torch.linspace(-1.5, 1.5, 6).view(1, -1, 1, 1)

    def forward(self, x):
        y = F.conv2d(torch.where(x >= 0, 1.0, -1.0), self.w1, padding=1, groups=self.groups)
        y = (y - self.t >= 0).float()
        y = F.conv2d(y, self.w2, padding=(0, 1), stride=2)
        q = torch.round(torch.clamp(y * 0.5, 0, 3)) / 3  # 4 levels: 0, 1/3, 2/3, 1
        return q.flatten(1) @ self.w3.T


@pytest.mark.parametrize("name,groups", [("ternary", 1), ("two_bit_unsigned", 2), ("off_grid", 1)])
def test_low_bit_layers_equal_pytorch(name, groups):
    torch.manual_seed(0)
    model = LowBitNet(LEVEL_SETS[name][0], groups).eval()
    x = torch.randn(3, 6, 9, 7)
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    bits = LEVEL_SETS[name][2]
    assert [r.bits for r in cm.report] == [f"W{bits}A1", f"W{bits}A1", f"W{bits}A2"], str(cm.report)
    with torch.no_grad():
        assert_float_close(cm(x), model(x).numpy())


@pytest.mark.parametrize("target", ["cortex-m4", "aarch64"])
def test_low_bit_layers_on_emulated_targets(target):
    """The weight planes are ordinary binary kernels: the same model on a Cortex-M4 board and aarch64 Linux."""
    from tvm_bnn.targets import qemu

    if target == "aarch64":
        need(qemu.linux_arch("aarch64").cc, qemu.linux_arch("aarch64").qemu)
    else:
        need("arm-none-eabi-gcc", "qemu-system-arm")
    torch.manual_seed(1)
    model = LowBitNet(LEVEL_SETS["two_bit_unsigned"][0], groups=2, seed=3).eval()
    x = torch.randn(2, 6, 9, 7)
    cm = tvm_bnn.compile(model, target, example_inputs=(x,), progress=False)
    assert [r.bits for r in cm.report] == ["W2A1", "W2A1", "W2A2"], str(cm.report)
    with torch.no_grad():
        assert_float_close(cm(x), model(x).numpy())


def test_ternary_layers_on_cortex_m_are_ternary_kernels():
    """On the C bundle a ternary layer's two weight planes (equal scales) run as one ternary kernel per activation
    plane (schedules/ternary_pairs.py); the model still equals PyTorch, zero padding and groups included."""
    need("arm-none-eabi-gcc", "qemu-system-arm")
    torch.manual_seed(2)
    model = LowBitNet(LEVEL_SETS["ternary"][0], groups=1, seed=5).eval()
    x = torch.randn(2, 6, 9, 7)
    cm = tvm_bnn.compile(model, "cortex-m4", example_inputs=(x,), progress=False)
    assert [r.bits for r in cm.report] == ["W2A1", "W2A1", "W2A2"], str(cm.report)
    kernels = [k for k in cm.bundle.kernels if "conv2d" in k]
    # conv 1 (sign input) and conv 2 ({0, 1} input): one ternary kernel each, no binary pair left
    assert len(kernels) == 2 and all("ternary" in k for k in kernels), cm.bundle.kernels
    with torch.no_grad():
        assert_float_close(cm(x), model(x).numpy())


@pytest.mark.parametrize("name", ["ternary", "two_bit_symmetric", "off_grid"])
def test_each_activation_plane_is_packed_once(name):
    """A layer with several weight planes runs one kernel per (activation plane, weight plane), but packs each
    activation plane once: the kernels of one plane read the same packed tensor."""
    from tvm_bnn.core.pipeline import analyse

    from ..conftest import kernel_ops

    w = torch.tensor(_random_weights(LEVEL_SETS[name][0], (7, 5, 3, 3), 0, seed=4))

    class TwoBitActivations(torch.nn.Module):
        def forward(self, x):  # DoReFa's 4 levels: two planes in the binary code, each the XOR of its tests
            return F.conv2d(torch.round(torch.clamp(x, 0, 1) * 3) / 3, w, padding=1)

    ops = kernel_ops(analyse(TwoBitActivations(), (torch.randn(1, 5, 6, 6),)).optimized)
    n_weight_planes = len(weight_planes(w.numpy(), 0).signs)
    assert ops.count("binary_conv2d") == 2 * n_weight_planes, ops
    assert ops.count("bitpack_nchw") == 3, ops  # the three thermometer tests, XORed into the two planes


ACTIVATIONS = {  # few-level activations, as their planes pad under the conv's zero padding
    "three_levels": lambda x: torch.clamp(torch.round(x), -1, 1),  # planes pad with their constant bits +1, -1
    "dorefa": lambda x: torch.round(torch.clamp(x, 0, 1) * 3) / 3,  # binary code: shifts 0 and 1
    "offset_levels": lambda x: torch.clamp(torch.round(x), 0, 2) + 0.5,  # 0 is no level: zero padding, offsets
}


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target,cin", [("x86", 7), ("cortex-m4", 7), ("cortex-m4", 130)])
def test_ternary_layer_of_few_level_activations_is_one_kernel(target, cin, act):
    """Ternary weights on a 2-bit activation: one kernel over the stacked planes on x86 with vpopcntq or popcnt and
    in the C bundle where a layer counts at most 9 words per output (7 channels, 3x3); else (130 channels: 27 words)
    one ternary kernel per activation plane there, the plane sum in the second kernel's epilogue; the planes packed
    in one pass; equal to PyTorch."""
    from tvm_bnn.schedules.x86 import popcount_isa
    from tvm_bnn.targets import resolve_target

    if target == "cortex-m4":
        need("arm-none-eabi-gcc", "qemu-system-arm")
    w = torch.tensor(_random_weights(LEVEL_SETS["ternary"][0], (9, cin, 3, 3), 0, seed=6))

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.conv2d(ACTIVATIONS[act](x), w, padding=1, stride=(1, 2))

    x = torch.randn(2, cin, 9, 11) * 1.5
    cm = tvm_bnn.compile(Net(), target, example_inputs=(x,), progress=False)
    assert [r.bits for r in cm.report] == ["W2A2"], str(cm.report)
    with torch.no_grad():
        assert_float_close(cm(x), Net()(x).numpy())
    if target == "cortex-m4":  # one pass packs the planes; stacked, or the second plane's kernel adds the first's
        convs = [k for k in cm.bundle.kernels if "conv2d" in k]
        assert len(convs) == (1 if cin == 7 else 2) and all("ternary" in k for k in convs), convs
        assert sum("bitpack_planes" in k for k in cm.bundle.kernels) == 1, cm.bundle.kernels
        packing = cm.bundle.sources["model.c"].split("void tvm_bnn_bitpack_planes(")[-1].split("\n}\n")[0]
        assert "] * " not in packing  # activation tests with unit scales: no multiply (pack_planes' unit_scale)
        assert not any("bitpack_nchw" in k for k in cm.bundle.kernels), cm.bundle.kernels
        assert act == "offset_levels" or not any(k.endswith("add") for k in cm.bundle.kernels), cm.bundle.kernels
        return
    if popcount_isa(resolve_target("x86").target) not in ("avx512", "scalar"):
        return  # AVX2: the byte-lane kernels keep the binary plane pairs
    convs = [k.name for k in cm.profile() if "conv2d" in k.name]
    assert len(convs) == 1 and "ternary" in convs[0], convs
