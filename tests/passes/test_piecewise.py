"""The piecewise analysis (passes/binary_values.py) against brute force, on random chains over the whole op table.

Each case draws a random elementwise chain of one float32 tensor ``x`` (monotone and non-monotone ops, zero-making
clamps and rounding, comparisons and ``==``, ``where`` of anything, products and extrema of two functions of ``x``,
smooth functions), builds it in Relax and asks the analysis for a binarization. The chain is evaluated independently
here, in numpy float32 as a model computes it (``sign(0) = 0``), on a large sample of float32 values: random values at
many scales, every constant of the chain and the analysis' thresholds with their neighbours one and two ulps away,
+-0, subnormals and the extremes. Where the analysis binarizes, its test ``x * scale >= threshold`` must select
exactly the chain's value at every sample, except where a ``sign`` saw an input of exactly 0 that is *isolated* (0
by chance, and the neighbours a rounding away are not 0): there the tie rule (+1) is the documented convention.
"""
import numpy as np
import pytest

from tvm_bnn.passes.binary_values import LevelTensor, Refused, analyse_chain
from tvm_bnn.passes.graph import Graph

from ..chains import C, ChainCase, finite, isolated_zero, samples

@pytest.mark.parametrize("block", range(6))
def test_analysis_equals_brute_force_on_random_chains(block):
    binarized = refused = levels = 0
    for seed in range(block * 60, (block + 1) * 60):
        case = ChainCase(seed, steps=1 + seed % 7)
        graph = Graph(case.mod["main"])
        try:
            src = analyse_chain(graph, case.top)
        except Refused as why:
            assert str(why), seed
            refused += 1
            continue
        if src is None:
            continue
        binarized += 1
        rng = np.random.default_rng(seed)
        x = samples(case, src, rng)
        values = case.evaluate(x)
        exact = values[case.top_index]
        in_domain = finite(values, case)
        root = values[case.index_of(src.root)]  # x, or a non-monotone op below the binarizer (|x|), TVM's to compute
        if isinstance(src, LevelTensor):  # a staircase: lo + step * (the number of its thresholds passed)
            level = sum((root * np.broadcast_to(sc, (1, C)) >= np.broadcast_to(th, (1, C))).astype(np.float64)
                        for sc, th in zip(src.scales, src.thresholds))
            predicted = (src.lo + src.step * level).astype(np.float32)
            levels += 1
        else:
            test = root * np.broadcast_to(src.scale, (1, C)) >= np.broadcast_to(src.threshold, (1, C))
            predicted = np.where(test, np.float32(src.high), np.float32(src.low))
        if isinstance(src, LevelTensor):  # levels equally spaced to rounding (1/3, 2/3 in float32)
            scale = max(abs(v) for v in src.values)
            bad = in_domain & (np.abs(predicted.astype(np.float64) - exact) > 1e-6 * scale)
        else:
            bad = in_domain & (predicted != exact)
        if np.any(bad):  # only where a sign saw an isolated 0 may the tie rule decide
            tied = case.evaluate(x, tie=True)[case.top_index]
            zero = np.zeros(x.shape, bool)
            for _, inp in case.signs:
                zero |= (values[inp] == 0) & isolated_zero(case, x, inp)
            wrong = bad & ~(zero & (predicted == tied))
            assert not np.any(wrong), (
                f"seed {seed}: x={x[wrong][:5]} analysis={predicted[wrong][:5]} chain={exact[wrong][:5]}\n"
                f"{case.mod['main']}\nscale={src.scale} threshold={src.threshold} values=({src.low}, {src.high})")
    assert binarized >= 15 and refused >= 4, (binarized, refused, levels)  # both sides of the analysis are exercised
