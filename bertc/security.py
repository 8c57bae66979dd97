"""A GraphDef -> the nodes whose op types may do more than compute (files, network, callbacks, I/O).

Checked before any part of an input graph is executed (verify and bench run it). Anything outside
the allowlist of pure tensor ops is refused with the node names; `security.allow_ops` extends it.
"""
from __future__ import annotations

from collections.abc import Iterable

from bertc.errors import UserError
from bertc.graph import Graph

# Pure tensor ops: arithmetic, shapes, casts, control-free indexing and the ops of BERT exporters.
PURE_OPS = frozenset(
    """
    Abs Add AddN AddV2 All Any ArgMax ArgMin Assert BatchMatMul BatchMatMulV2 BatchMatMulV3 BiasAdd
    BroadcastArgs BroadcastTo Cast Ceil CheckNumerics ConcatV2 Const Cos Cumsum Einsum Elu Equal Erf Exp
    ExpandDims Fill Floor FloorDiv FloorMod FusedBatchNormV3 Gather GatherNd GatherV2 Greater
    GreaterEqual Identity IdentityN LeakyRelu Less LessEqual Log Log1p LogSoftmax LogicalAnd LogicalNot
    LogicalOr MatMul Max Maximum Mean Min Minimum Mod Mul Neg NoOp NotEqual OneHot Pack Pad PadV2
    Placeholder PlaceholderWithDefault Pow Prod Range Rank ReadVariableOp RealDiv Reciprocal Relu Relu6
    Reshape Round Rsqrt Select SelectV2 Selu Shape ShapeN Sigmoid Sign Sin Size Slice Softmax Softplus
    Split SplitV Sqrt Square SquaredDifference Squeeze StopGradient StridedSlice Sub Sum Tanh Tile
    Transpose Unpack VarHandleOp VariableV2 Where ZerosLike OnesLike _FusedMatMul Erfinv Rint Sinh Cosh
    Erfc Expm1 Softsign Atan Tan Div DivNoNan Xlogy Xdivy IsFinite IsNan IsInf ClipByValue ReverseV2
    """.split()
)


class UnsafeGraphError(UserError):
    pass


def refuse_unsafe_ops(graph: Graph, allow_ops: Iterable[str] = ()) -> None:
    allowed = PURE_OPS | set(allow_ops)
    bad = [(node.name, node.op) for node in graph.graph_def.node if node.op not in allowed]
    if bad:
        listed = ", ".join(f"{name} ({op})" for name, op in bad[:8])
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise UnsafeGraphError(
            f"the model's serving graph holds {len(bad)} op(s) that are not pure tensor computations: "
            f"{listed}{more}. bertc will not execute a graph that could read or write files, reach the "
            "network or call back into Python. If you know these ops are harmless in your graph, allow "
            f"them with security.allow_ops=[{','.join(sorted({op for _, op in bad}))}]."
        )
