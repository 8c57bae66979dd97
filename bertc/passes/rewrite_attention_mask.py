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

import numpy as np
import tensorflow as tf

from bertc.errors import ConfigError
from bertc.graph import (
    Graph,
    GraphError,
    NodeDef,
    PassResult,
    const_value,
    consumers,
    copy_graph_def,
    make_const,
    make_node,
    node_of,
    nodes_by_name,
    prune_to_outputs,
    split_input,
)
from bertc.passes.trim_sequence_length import SCOPE as LENGTH_SCOPE

SCOPE = "bertc/attention_bias"
SHAPE_ONLY_OPS = ("Shape", "ShapeN", "Size", "Rank")
# What a mask computation may consist of; anything else on the mask side means it is not a mask.
MASK_OPS = {
    "Reshape", "Cast", "Fill", "Mul", "ExpandDims", "Sub", "Pack", "StridedSlice", "Const", "Identity",
    "Tile", "BroadcastTo", "AddV2", "Add", "Neg", "Shape", "Squeeze", "OnesLike", "Placeholder",
}


@dataclasses.dataclass(frozen=True)
class MaskParams:
    bias_value: float = -10000.0
    fold_scale: bool = False
    compute_dtype: str = "float32"  # the attention's dtype after the precision step; checked for range


def _value_sources(graph: Graph) -> dict[str, frozenset[str]]:
    """Node -> the graph inputs (and 'weights') its value depends on; Shape-like reads do not count."""
    nodes = nodes_by_name(graph.graph_def)
    inputs = {node_of(tensor) for tensor in graph.inputs.values()}
    sources: dict[str, frozenset[str]] = {}

    def visit(name: str) -> frozenset[str]:
        stack = [name]
        while stack:
            current = stack[-1]
            if current in sources:
                stack.pop()
                continue
            node = nodes[current]
            pending = [split_input(i)[0] for i in node.input if not i.startswith("^")]
            missing = [p for p in pending if p not in sources]
            if missing and node.op not in SHAPE_ONLY_OPS:
                stack.extend(missing)
                continue
            stack.pop()
            if current in inputs:
                sources[current] = frozenset([current])
            elif current in graph.weights:
                sources[current] = frozenset(["weights"])
            elif node.op in SHAPE_ONLY_OPS:
                sources[current] = frozenset()
            else:
                sources[current] = frozenset().union(*(sources[p] for p in pending)) if pending else frozenset()
        return sources[name]

    for node in graph.graph_def.node:
        visit(node.name)
    return sources


def find_attention_sites(graph: Graph) -> list[tuple[NodeDef, int]]:
    """[(score Add, position of its mask operand)], in graph order; raises if none is found."""
    mask_input = node_of(graph.inputs["input_mask"])
    sources = _value_sources(graph)
    nodes, users = nodes_by_name(graph.graph_def), consumers(graph.graph_def)
    mask_only = frozenset([mask_input])
    sites = []
    for node in graph.graph_def.node:
        if node.op not in ("Add", "AddV2") or len(node.input) < 2:
            continue
        operands = [split_input(name)[0] for name in node.input[:2]]
        kinds = [sources[name] == mask_only for name in operands]
        if kinds.count(True) != 1:
            continue
        if not any(user.op == "Softmax" for user, _ in users.get(node.name, ())):
            continue
        sites.append((node, kinds.index(True)))
    if not sites:
        reached = [user.name for user, _ in users.get(mask_input, ())]
        raise GraphError(
            f"mask=reimpl: no attention site found. Looked for an Add feeding a Softmax with one operand "
            f"computed from {mask_input} alone; matching started at {mask_input}, read by {reached or 'nothing'}."
        )
    for site, position in sites:
        _check_mask_side(nodes, split_input(site.input[position])[0], mask_input)
    return sites


def _check_mask_side(nodes, start: str, mask_input: str) -> None:
    stack, seen = [start], set()
    while stack:
        name = stack.pop()
        if name in seen or name == mask_input or name.startswith(LENGTH_SCOPE + "/"):  # length=: the cut mask
            continue
        seen.add(name)
        node = nodes[name]
        if node.op not in MASK_OPS:
            raise GraphError(
                f"mask=reimpl: {name} ({node.op}) computes part of the attention mask, but a mask is built "
                f"from {sorted(MASK_OPS)}; matching stopped there. Keep mask=original for this graph."
            )
        if node.op not in SHAPE_ONLY_OPS:
            stack.extend(split_input(i)[0] for i in node.input if not i.startswith("^"))


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
