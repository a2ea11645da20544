"""The per-layer report of a compile: which conv2d/dense layers were binarized and, if not, why."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import warnings

import numpy as np

from .errors import NotBinarizedError


@dataclass
class LayerRecord:
    name: str
    op: str  # "conv2d" or "dense"
    input_shape: tuple
    weight_shape: tuple
    output_shape: tuple
    binarized: bool
    reason: str  # empty when binarized
    weight_bytes_float: int
    weight_bytes_packed: int  # what the compiled model stores for this layer's weights
    binary_weights: bool = False  # the weights are +-alpha per output channel (binarized or not)
    weight_bits: int = 32  # 1 for binary weights computed as such, 32 for a float layer
    activation_bits: int = 32  # 1 for a binarized activation, 2 for a 3-4 level one (bit planes), 32 for float

    @property
    def bits(self) -> str:
        """``W1A2``: the weight and activation bits the compiled layer computes with."""
        return f"W{self.weight_bits}A{self.activation_bits}"

    def as_dict(self):
        return asdict(self)


class Report(list):
    """A list of LayerRecord that prints as a table with totals."""

    @property
    def num_binarized(self) -> int:
        return sum(r.binarized for r in self)

    @property
    def binary_macs(self) -> int:
        """Multiply-accumulates the binarized layers do per inference (one per weight per output element)."""
        return sum(int(np.prod(r.weight_shape[1:])) * int(np.prod(r.output_shape)) for r in self if r.binarized)

    @property
    def unrecognised(self) -> list:
        """Layers whose weights are binary but which stay float: the activation was not recognised as binarized.
        These are the ones a user needs to hear about (a BNN layer silently compiled as float)."""
        return [r for r in self if r.binary_weights and not r.binarized]

    def check_binarized(self, require: bool = False) -> None:
        """Warn once per layer with binary weights that stayed float; with ``require``, raise instead."""
        lines = [f"layer {r.name!r} ({r.op}, weights {'x'.join(map(str, r.weight_shape))}) has binary weights but "
                 f"stays float: {r.reason}" for r in self.unrecognised]
        if not lines:
            return
        if require:
            raise NotBinarizedError("require_binary=True (--require-binary) and " + str(len(lines)) +
                                    " layer(s) with binary weights were not binarized:\n  " + "\n  ".join(lines))
        for line in lines:
            warnings.warn("tvm_bnn: " + line, stacklevel=3)

    @property
    def weight_bytes_float(self) -> int:
        return sum(r.weight_bytes_float for r in self)

    @property
    def weight_bytes_packed(self) -> int:
        return sum(r.weight_bytes_packed for r in self)

    def __str__(self) -> str:
        def shape(s):
            return "x".join(str(d) for d in s) if s else "-"

        rows = [("layer", "op", "input", "weight", "output", "binarized", "bits", "weight bytes", "reason")]
        for r in self:
            rows.append((r.name, r.op, shape(r.input_shape), shape(r.weight_shape), shape(r.output_shape),
                         "yes" if r.binarized else "no", r.bits, f"{r.weight_bytes_float} -> {r.weight_bytes_packed}",
                         r.reason))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
        lines.insert(1, "-" * max(len(line) for line in lines))
        ratio = self.weight_bytes_float / self.weight_bytes_packed if self.weight_bytes_packed else 1.0
        lines.append("")
        lines.append(f"{self.num_binarized} of {len(self)} conv2d/dense layers binarized; "
                     f"weights {self.weight_bytes_float} bytes float -> {self.weight_bytes_packed} bytes compiled "
                     f"({ratio:.1f}x smaller)")
        if len(self) and not self.num_binarized:
            lines.append("Nothing was binarized: the model compiles as a float model (see the reasons above).")
        return "\n".join(lines)

    __repr__ = __str__
