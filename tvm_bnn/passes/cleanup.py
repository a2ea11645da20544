"""Standard TVM clean-up that every later pass relies on.

BatchNorm (eval) becomes per-channel arithmetic, constant sub-graphs (sign(W), W.abs().mean(...), transposed
weights, arange/linspace scales, Brevitas' in-graph weight quantization) fold to constants, and repeated
subexpressions merge, so that detection sees one canonical graph. The input-independent sub-graphs are evaluated
first, as one compiled function: TVM's FoldConstant builds and runs every op on its own (10 s for the weight
quantizers of a Brevitas MLP), and is left the few constants that remain.
"""
import tvm
from tvm import relax

from .fold_constants import FoldConstantSubgraphs


def cleanup() -> tvm.transform.Pass:
    return tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        FoldConstantSubgraphs,
        relax.transform.FoldConstant(),
        relax.transform.EliminateCommonSubexpr(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
    ], name="tvm_bnn.Cleanup")
