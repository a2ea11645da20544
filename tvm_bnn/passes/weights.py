"""Binary weights: a constant whose values in each output channel are +-alpha_o."""
from __future__ import annotations

import numpy as np


def binary_weight_scale(w: np.ndarray, out_axis: int) -> np.ndarray | str:
    """alpha per output channel if every value of channel o is +-alpha_o, else the reason.

    alpha_o = 0 is allowed for a channel that is entirely zero (its output is the bias whatever the input: what an
    exporter makes of a conv followed by a BatchNorm with gamma = 0); a zero among nonzero weights is refused."""
    if not np.all(np.isfinite(w)):
        return "weights contain NaN or Inf"
    mags = np.abs(np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1))
    alpha = mags[:, 0]
    bad = np.nonzero(np.any(mags != alpha[:, None], axis=1))[0]
    if bad.size:
        o = int(bad[0])
        if np.any(mags[o] == 0):
            return f"weights of output channel {o} contain zeros (sign(0) = 0 is not +-1)"
        return (f"weights are not binary: output channel {o} has {np.unique(mags[o]).size} distinct magnitudes "
                f"(expected +-alpha per channel)")
    return alpha.astype(np.float32)
