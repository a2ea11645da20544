"""Low-bit weights: a constant whose values in each output channel are +-alpha_o (binary), or at most 4 levels
(ternary, 2-bit), as a sum of +-1 planes each a binary kernel computes exactly."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Magnitudes this close (relative) to a channel's most frequent one are that one, rounded: what an exporter leaves
# of a straight-through sum it folded itself (tf2onnx: QKeras' ``w + stop(-w + alpha * k)``, 1-2 ulps off alpha).
ROUNDING = 2.0 ** -20


def binary_weight_scale(w: np.ndarray, out_axis: int) -> np.ndarray | str:
    """alpha per output channel if every value of channel o is +-alpha_o (up to a rounding, ``ROUNDING``), else the
    reason.

    alpha_o = 0 is allowed for a channel that is entirely zero (its output is the bias whatever the input: what an
    exporter makes of a conv followed by a BatchNorm with gamma = 0); a zero among nonzero weights is refused."""
    if not np.all(np.isfinite(w)):
        return "weights contain NaN or Inf"
    mags = np.abs(np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1))
    alpha = mags[:, 0].copy()
    for o in np.nonzero(np.any(mags != alpha[:, None], axis=1))[0]:  # rounded: the most frequent magnitude
        values, counts = np.unique(mags[o], return_counts=True)
        mode = values[np.argmax(counts)]
        if mode > 0 and np.all(np.abs(mags[o].astype(np.float64) - mode) <= ROUNDING * mode):
            alpha[o] = mode
    bad = np.nonzero(np.any(np.abs(mags.astype(np.float64) - alpha[:, None]) > ROUNDING * alpha[:, None], axis=1)
                     | np.any((mags == 0) != (alpha[:, None] == 0), axis=1))[0]
    if bad.size:
        o = int(bad[0])
        if np.any(mags[o] == 0):
            return f"weights of output channel {o} contain zeros (sign(0) = 0 is not +-1)"
        return (f"weights are not binary: output channel {o} has {np.unique(mags[o]).size} distinct magnitudes "
                f"(expected +-alpha per channel)")
    return alpha.astype(np.float32)


def snapped(w: np.ndarray, alpha: np.ndarray, out_axis: int) -> np.ndarray:
    """The weights as exactly +-alpha_o (what the binary kernel computes with)."""
    shape = [1] * w.ndim
    shape[out_axis] = -1
    return np.where(w >= 0, np.float32(1), np.float32(-1)) * alpha.reshape(shape).astype(np.float32)


MAX_LEVELS = 4  # values per output channel that compile as weight planes (2 bits); more stay float


@dataclass
class WeightPlanes:
    """Weights as a sum of +-1 planes: ``w[o] = sum_j scale[j][o] * signs[j][o] (+ offset[o] * 1)``, exact.

    ``signs[j]`` are +-1 float32 tensors shaped like ``w``; ``scale[j]`` float64 [O]; the offset, when a channel's
    levels are not symmetric about 0, is one more plane of all +1 (``offset_plane``: it multiplies the sum of the
    input over the taps, which the binary kernels compute exactly, padding included). One plane and no offset is the
    binary case, +-alpha."""

    signs: list
    scales: list
    bits: int  # ceil(log2(levels)) of the channel with the most levels

    @property
    def binary(self) -> bool:
        return len(self.signs) == 1 and self.bits == 1

    def terms(self, out_axis: int):
        """[(plane weights ``scale * signs`` as float32, scale float32 [O])] per plane."""
        shape = [1] * self.signs[0].ndim
        shape[out_axis] = -1
        return [((s * a.reshape(shape)).astype(np.float32), a.astype(np.float32))
                for s, a in zip(self.signs, self.scales)]


def _levels(values: np.ndarray) -> np.ndarray:
    """The distinct values of one channel, values within a rounding (``ROUNDING`` of the largest magnitude) of each
    other merged into their most frequent one."""
    uniq, counts = np.unique(values.astype(np.float64), return_counts=True)
    tol = ROUNDING * float(np.max(np.abs(uniq)))
    levels, group = [], [(uniq[0], counts[0])]
    for u, c in zip(uniq[1:], counts[1:]):
        if u - group[0][0] <= tol:
            group.append((u, c))
        else:
            levels.append(max(group, key=lambda g: g[1])[0])
            group = [(u, c)]
    levels.append(max(group, key=lambda g: g[1])[0])
    return np.asarray(levels)


def _channel_planes(levels: np.ndarray):
    """(offset, [(step, threshold)]) with ``w = offset + sum step * (+1 if w >= threshold else -1)`` on ``levels``:
    the thermometer code (one plane per step, m-1 planes) or, for 4 levels on a grid, the binary code (2 planes):
    whichever needs fewer planes counting the offset's, the thermometer on a tie (symmetric ternary needs no
    offset that way)."""
    m = len(levels)
    tol = ROUNDING * float(np.max(np.abs(levels)))

    def plan(offset, steps, grid):
        offset = 0.0 if abs(offset) <= tol else offset  # symmetric levels, rounded
        return len(steps) + (offset != 0), (offset, steps, grid)

    best = plan((levels[0] + levels[-1]) / 2, [((levels[j] - levels[j - 1]) / 2, levels[j]) for j in range(1, m)],
                None)
    if m == 4:
        d = levels[1] - levels[0]
        if np.all(np.abs((levels - levels[0]) / d - np.arange(4)) <= ROUNDING * 4):  # l0 + d * (b0 + 2 b1)
            best = min(best, plan(levels[0] + 1.5 * d, [(d / 2, None), (d, None)], (levels[0], d)),
                       key=lambda p: p[0])
    return best[1]


def weight_planes(w: np.ndarray, out_axis: int) -> "WeightPlanes | str":
    """``w`` as +-1 planes (WeightPlanes) if every output channel takes at most MAX_LEVELS values, else the reason.

    Two symmetric values are the binary case (``binary_weight_scale``); ternary {-a, 0, a} (sign of weights with
    zeros, Brevitas' 2-bit narrow-range weights) is two planes; four levels on a grid (2-bit uniform weights) two
    planes and an offset unless symmetric; any other 3-4 levels one plane per step."""
    alpha = binary_weight_scale(w, out_axis)
    if not isinstance(alpha, str):
        return WeightPlanes([np.where(w >= 0, np.float32(1), np.float32(-1))], [alpha.astype(np.float64)], 1)
    if not np.all(np.isfinite(w)):
        return alpha
    wo = np.moveaxis(w, out_axis, 0)
    flat = wo.reshape(wo.shape[0], -1).astype(np.float64)
    plans = []
    for o in range(flat.shape[0]):
        levels = _levels(flat[o])
        if len(levels) > MAX_LEVELS:
            return (f"weights are not binary: output channel {o} takes {len(levels)} distinct values (at most "
                    f"{MAX_LEVELS} per output channel compile as 1-2 bit planes)")
        plans.append((levels, _channel_planes(levels)))
    n_planes = max(len(p[1]) for _, p in plans)
    has_offset = any(p[0] != 0 for _, p in plans)
    signs = [np.ones_like(flat) for _ in range(n_planes + has_offset)]
    scales = [np.zeros(flat.shape[0]) for _ in range(n_planes + has_offset)]
    for o, (levels, (offset, steps, grid)) in enumerate(plans):
        nearest = levels[np.argmin(np.abs(flat[o][:, None] - levels[None, :]), axis=1)]
        if grid is not None:  # binary code of the level index
            index = np.rint((nearest - grid[0]) / grid[1]).astype(np.int64)
            bit_planes = [(index >> b) & 1 for b in range(2)]
        else:  # thermometer: step j is on from level j+1 up
            bit_planes = [(nearest >= threshold).astype(np.int64) for _, threshold in steps]
        for j, ((step, _), bits) in enumerate(zip(steps, bit_planes)):
            signs[j][o] = np.where(bits == 1, 1.0, -1.0)
            scales[j][o] = step
        if has_offset:
            scales[-1][o] = offset
    back = [np.moveaxis(s.reshape(wo.shape), 0, out_axis).astype(np.float32) for s in signs]
    levels_max = max(len(levels) for levels, _ in plans)
    return WeightPlanes(back, scales, int(np.ceil(np.log2(max(levels_max, 2)))))
