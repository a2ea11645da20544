"""Standard TVM clean-up that every later pass relies on.

BatchNorm (eval) becomes per-channel arithmetic, constant sub-graphs (sign(W), W.abs().mean(...), transposed
weights, arange/linspace scales) fold to constants, and repeated subexpressions merge, so that detection sees one canonical graph.
"""
import tvm
from tvm import relax

from .fold_constants import FoldConstantSubgraphs


def cleanup() -> tvm.transform.Pass:
    return tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.FoldConstant(),
        FoldConstantSubgraphs,
        relax.transform.EliminateCommonSubexpr(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
    ], name="tvm_bnn.Cleanup")
