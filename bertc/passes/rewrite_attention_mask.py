"""Graph -> the graph with one additive [B,1,1,T] attention bias, computed once and shared by every layer.

The mask computation is found by structure, starting from the `input_mask` input: an attention
site is an Add whose one operand is computed from `input_mask` alone (batch sizes read through
Shape do not count) and whose other operand carries the scores, and which feeds a Softmax. Each
site's mask operand is replaced by `(1 - cast(reshape(input_mask, [-1,1,1,T]))) * bias_value`; the
old per-layer mask ops are left dead and pruned. With `fold_scale`, the `1/sqrt(head_size)`
multiply on the scores is folded into the query kernel and bias.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from bertc.analysis import find_attention_sites
from bertc.errors import ConfigError
from bertc.graph import (
    ATTENTION_BIAS_SCOPE,
    Graph,
    GraphError,
    PassResult,
    const_value,
    copy_graph_def,
    make_const,
    make_node,
    node_of,
    nodes_by_name,
    prune_to_outputs,
    split_input,
)
from bertc.lazy import tf
from bertc.passes import Condition, Pass
from bertc.schema import Key, derived

if TYPE_CHECKING:
    from bertc.graph import NodeDef

SCOPE = ATTENTION_BIAS_SCOPE


@dataclasses.dataclass(frozen=True)
class MaskParams:
    bias_value: float = -10000.0
    fold_scale: bool = False
    compute_dtype: str = derived("float32")  # the attention's dtype after the precision step; checked for range


def check_bias_value(value: float, dtype: str) -> None:
    limit = float(tf.as_dtype(dtype).max)
    if not np.isfinite(value) or abs(value) > limit:
        raise ConfigError(
            f"mask.bias_value={value} is not finite in {dtype} (largest magnitude {limit:g}); the masked "
            "scores would become inf or nan. Use a value like -10000.0."
        )
    if value >= 0:
        raise ConfigError(f"mask.bias_value={value} must be negative: it pushes padded positions out of the softmax.")


def rewrite_attention_mask(graph: Graph, params: MaskParams) -> PassResult:
    check_bias_value(params.bias_value, params.compute_dtype)
    sites = find_attention_sites(graph)
    graph_def = copy_graph_def(graph.graph_def)
    nodes = nodes_by_name(graph_def)
    mask_tensor = graph.inputs["input_mask"]
    shared = f"{SCOPE}/bias"
    already_shared = all(split_input(site.input[position])[0] == shared for site, position in sites)
    weights = dict(graph.weights)
    matches = {"attention_sites": len(sites)}
    if not already_shared:
        seq_len = nodes[node_of(mask_tensor)].attr["shape"].shape.dim[-1].size
        graph_def.node.extend(_bias_nodes(mask_tensor, seq_len, params.bias_value))
        for site, position in sites:
            nodes[site.name].input[position] = shared
    if params.fold_scale:
        matches["folded_scales"] = _fold_scales(graph_def, nodes, sites, weights)
    result = graph.replace(graph_def=graph_def, weights=weights)
    return PassResult(prune_to_outputs(result), matches)


def _bias_nodes(mask_tensor: str, seq_len: int, bias_value: float) -> list[NodeDef]:
    mask_ref = mask_tensor.removesuffix(":0")
    return [
        make_const(f"{SCOPE}/shape", np.array([-1, 1, 1, seq_len], np.int32)),
        make_node("Reshape", f"{SCOPE}/Reshape", [mask_ref, f"{SCOPE}/shape"], T=tf.int32, Tshape=tf.int32),
        make_node("Cast", f"{SCOPE}/Cast", [f"{SCOPE}/Reshape"], SrcT=tf.int32, DstT=tf.float32, Truncate=False),
        make_const(f"{SCOPE}/one", np.float32(1.0)),
        make_node("Sub", f"{SCOPE}/sub", [f"{SCOPE}/one", f"{SCOPE}/Cast"], T=tf.float32),
        make_const(f"{SCOPE}/value", np.float32(bias_value)),
        make_node("Mul", f"{SCOPE}/bias", [f"{SCOPE}/sub", f"{SCOPE}/value"], T=tf.float32),
    ]


def _fold_scales(graph_def, nodes, sites, weights) -> int:
    folded = 0
    for original, position in sites:
        site = nodes[original.name]  # the copy: never touch the input graph
        scores = nodes[split_input(site.input[1 - position])[0]]
        if scores.op != "Mul":
            continue  # already folded
        operands = [nodes[split_input(name)[0]] for name in scores.input[:2]]
        consts = [node for node in operands if node.op == "Const"]
        matmuls = [node for node in operands if node.op.startswith("BatchMatMul")]
        if len(consts) != 1 or len(matmuls) != 1 or const_value(consts[0]).size != 1:
            raise GraphError(
                f"mask.fold_scale: {scores.name} is not scores * constant; matching stopped there. "
                "Set mask.fold_scale=false for this graph."
            )
        scale = float(const_value(consts[0]))
        kernel, bias = _query_weights(nodes, matmuls[0], weights)
        weights[kernel] = (weights[kernel] * np.float32(scale)).astype(weights[kernel].dtype)
        weights[bias] = (weights[bias] * np.float32(scale)).astype(weights[bias].dtype)
        site.input[1 - position] = matmuls[0].name
        folded += 1
    return folded


def _query_weights(nodes, matmul: NodeDef, weights) -> tuple[str, str]:
    """From QK^T back to the query projection: Transpose <- Reshape <- BiasAdd(MatMul(x, W), b)."""
    node = nodes[split_input(matmul.input[0])[0]]
    while node.op in ("Transpose", "Reshape", "Identity"):
        node = nodes[split_input(node.input[0])[0]]
    if node.op != "BiasAdd":
        raise GraphError(
            f"mask.fold_scale: the query side of {matmul.name} leads to {node.name} ({node.op}), not the "
            "query projection's BiasAdd; matching stopped there."
        )

    def weight(name: str) -> str:
        current = nodes[split_input(name)[0]]
        while current.op == "Identity":
            current = nodes[split_input(current.input[0])[0]]
        if current.name not in weights:
            raise GraphError(f"mask.fold_scale: {current.name} is not a weight; cannot fold the scale into it.")
        return current.name

    projection = nodes[split_input(node.input[0])[0]]
    if projection.op != "MatMul":
        raise GraphError(f"mask.fold_scale: {projection.name} ({projection.op}) is not the query MatMul.")
    return weight(projection.input[1]), weight(node.input[1])


def _has_mask_input(graph: Graph, params: MaskParams) -> str | None:
    return (
        None if "input_mask" in graph.inputs else f"the graph has no input_mask input (inputs: {sorted(graph.inputs)})"
    )


def _one_shared_bias(graph: Graph, params: MaskParams) -> str | None:
    operands = {split_input(site.input[position])[0] for site, position in find_attention_sites(graph)}
    return (
        None if operands == {f"{SCOPE}/bias"} else f"the attention sites read {sorted(operands)[:4]}, not {SCOPE}/bias"
    )


def _scale_folded(graph: Graph, params: MaskParams) -> str | None:
    if not params.fold_scale:
        return None
    nodes = nodes_by_name(graph.graph_def)
    scaled = [
        site.name
        for site, position in find_attention_sites(graph)
        if nodes[split_input(site.input[1 - position])[0]].op == "Mul"
    ]
    return f"scores still scaled by a Mul at {scaled[:3]}" if scaled else None


PASS = Pass(
    rewrite_attention_mask,
    "mask",
    MaskParams,
    help="one [B,1,1,T] additive mask bias shared by every layer (mask.fold_scale folds 1/sqrt(d))",
    switch=Key("mode", str, "reimpl", choices=("original", "reimpl"), off="original"),
    # NOTE: after removal: the structure is matched without Identity reads and asserts in the way.
    after=("remove_training_ops",),
    derive=lambda facts: {"compute_dtype": facts["compute_dtype"]},
    requires=(Condition("the graph has an input_mask serving input", _has_mask_input),),
    ensures=(
        Condition("one shared [B,1,1,T] bias feeds every attention softmax", _one_shared_bias),
        Condition("with fold_scale, no scale multiply is left on the scores", _scale_folded),
    ),
)
