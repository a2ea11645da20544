"""Standard TVM clean-up that every later pass relies on.

BatchNorm (eval) becomes per-channel arithmetic, ONNX's variadic Min/Max elementwise again (unstack_minmax.py), transposes sink below elementwise ops and cancel (sink_layout.py),
a weight quantizer's straight-through sum simplifies to its value (straight_through.py, before folding: the folded
weights are then exactly +-alpha), constant sub-graphs (sign(W), W.abs().mean(...), transposed weights,
arange/linspace scales, Brevitas' in-graph weight quantization) fold to constants, and repeated subexpressions
merge, so that detection sees one canonical graph. The input-independent sub-graphs are evaluated
first, as one compiled function: TVM's FoldConstant builds and runs every op on its own (10 s for the weight
quantizers of a Brevitas MLP), and is left the few constants that remain.
"""
import tvm
from tvm import relax

from .fold_constants import FoldConstantSubgraphs
from .sink_layout import SinkTransposes
from .straight_through import SimplifyWeightStraightThrough
from .unstack_minmax import UnstackMinMax


def cleanup() -> tvm.transform.Pass:
    return tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        UnstackMinMax,
        SinkTransposes,
        relax.transform.EliminateCommonSubexpr(),
        SimplifyWeightStraightThrough,
        FoldConstantSubgraphs,
        relax.transform.FoldConstant(),
        relax.transform.EliminateCommonSubexpr(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
    ], name="tvm_bnn.Cleanup")
