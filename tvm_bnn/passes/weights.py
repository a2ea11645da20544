"""Binary weights: a constant whose values in each output channel are +-alpha_o."""
from __future__ import annotations

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
