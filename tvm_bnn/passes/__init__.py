"""Relax passes, in the order a model flows through them (see :func:`binarize_module`)."""
from __future__ import annotations

import tvm
from tvm import relax

from .binarize import BinarizeLayers
from .binary_maxpool import PackBeforeMaxPool
from .cleanup import cleanup
from .fold_pad import FoldZeroPadIntoConv
from .fuse_output import FuseOutputTransform
from .fuse_threshold import FuseThreshold
from .straight_through import SimplifyStraightThrough


def binarize_module(mod: tvm.IRModule, layer_names=None):
    """Run every tvm_bnn pass on a module already through :func:`cleanup`; returns (module, per-layer records)."""
    mod = FoldZeroPadIntoConv(mod)
    mod = SimplifyStraightThrough(mod)
    binarize = BinarizeLayers(layer_names)
    mod = binarize(mod)
    # one packing per plane: every (activation plane, weight plane) kernel emits its own, as do two layers that
    # read the same activation
    mod = relax.transform.EliminateCommonSubexpr()(mod)
    for p in (PackBeforeMaxPool, FuseOutputTransform, FuseThreshold):
        mod = p(mod)
    mod = relax.transform.DeadCodeElimination()(mod)
    return mod, binarize.records


__all__ = ["BinarizeLayers", "FoldZeroPadIntoConv", "FuseOutputTransform", "FuseThreshold", "PackBeforeMaxPool",
           "SimplifyStraightThrough", "binarize_module", "cleanup"]
