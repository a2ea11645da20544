"""The input check every compiled model runs before a call, whatever the backend."""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def input_arrays(args, inputs) -> list:
    """numpy arrays or torch tensors -> contiguous numpy arrays of the compiled ``inputs`` [(name, shape, dtype)],
    checked: the count, each shape, and a dtype that casts safely ("same_kind")."""
    if len(args) != len(inputs):
        names = ", ".join(n for n, _, _ in inputs)
        raise InputError(f"the model takes {len(inputs)} input(s) ({names}), got {len(args)}")
    out = []
    for value, (name, shape, dtype) in zip(args, inputs):
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        arr = np.ascontiguousarray(np.asarray(value))
        if tuple(arr.shape) != tuple(shape):
            raise InputError(f"input {name!r}: shape {tuple(arr.shape)} does not match the compiled shape "
                             f"{tuple(shape)}; compile again with example_inputs of this shape")
        if arr.dtype != np.dtype(dtype):
            if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                raise InputError(f"input {name!r}: dtype {arr.dtype} cannot be used as {dtype}")
            arr = arr.astype(dtype)
        out.append(arr)
    return out
