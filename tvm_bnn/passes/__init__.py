"""Relax passes, in the order a model flows through them (see :func:`binarize_module`)."""
from __future__ import annotations

import tvm
from tvm import relax

from .binarize import BinarizeLayers
from .binary_maxpool import PackBeforeMaxPool
from .canonicalize import CanonicalizeBinarization
from .cleanup import cleanup
from .fold_pad import FoldZeroPadIntoConv
from .fuse_output import FuseOutputTransform
from .fuse_threshold import FuseThreshold


def binarize_module(mod: tvm.IRModule, layer_names=None):
    """Run every tvm_bnn pass on a module already through :func:`cleanup`; returns (module, per-layer records)."""
    mod = FoldZeroPadIntoConv(mod)
    mod = CanonicalizeBinarization(mod)
    binarize = BinarizeLayers(layer_names)
    mod = binarize(mod)
    for p in (PackBeforeMaxPool, FuseOutputTransform, FuseThreshold):
        mod = p(mod)
    mod = relax.transform.DeadCodeElimination()(mod)
    return mod, binarize.records


__all__ = ["BinarizeLayers", "CanonicalizeBinarization", "FoldZeroPadIntoConv", "FuseOutputTransform", "FuseThreshold",
           "PackBeforeMaxPool", "binarize_module", "cleanup"]
