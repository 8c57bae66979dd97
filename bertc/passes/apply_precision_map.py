"""Graph -> the graph computing each region in the dtype its precision rule names, casts only at edges.

Rules are ordered; a node takes the dtype of the first rule whose scope pattern (fnmatch on the
node name) and op list (empty: any op) match it; unmatched nodes keep float32. Converted nodes
have their float type attributes changed; their weights are stored in the new dtype (converted
once, here, so no weight is cast per call); constants are re-encoded. A Cast goes on each edge
whose two ends now disagree, one per (tensor, dtype), never two in a row; outputs stay float32.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from bertc.errors import ConfigError
from bertc.graph import (
    FLOAT_TYPES,
    Graph,
    NodeDef,
    PassResult,
    const_value,
    copy_graph_def,
    input_dtype,
    make_node,
    match_scope,
    nodes_by_name,
    output_dtype,
    split_input,
    tensor_name,
)

DTYPES = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}
SHORT = {types_pb2.DT_FLOAT: "f32", types_pb2.DT_HALF: "f16", types_pb2.DT_BFLOAT16: "bf16"}
CAST_SUFFIX = "/bertc_cast_"


@dataclasses.dataclass(frozen=True)
class PrecisionRule:
    scope: str = "*"
    ops: tuple[str, ...] = ()
    dtype: str = "float16"

    def matches(self, node: NodeDef) -> bool:
        return match_scope(node.name, self.scope) and (not self.ops or node.op in self.ops)

    def describe(self) -> str:
        ops = f" ops={list(self.ops)}" if self.ops else ""
        return f"scope={self.scope!r}{ops} -> {self.dtype}"


@dataclasses.dataclass(frozen=True)
class PrecisionParams:
    rules: tuple[PrecisionRule, ...] = ()


def assign_dtypes(graph: Graph, rules: tuple[PrecisionRule, ...]) -> tuple[dict[str, tf.DType], dict[str, int]]:
    """Node name -> dtype chosen by the first matching rule; and each rule's match count."""
    for rule in rules:
        if rule.dtype not in DTYPES:
            raise ConfigError(f"precision rule {rule.describe()}: dtype must be one of {sorted(DTYPES)}.")
    chosen: dict[str, tf.DType] = {}
    counts = {rule.describe(): 0 for rule in rules}
    for node in graph.graph_def.node:
        for rule in rules:
            if rule.matches(node):
                counts[rule.describe()] += 1
                chosen[node.name] = DTYPES[rule.dtype]
                break
    return chosen, counts


def _is_boundary_cast(node: NodeDef) -> bool:
    return node.op == "Cast" and node.attr["SrcT"].type in FLOAT_TYPES


def _convert_node(node: NodeDef, dtype: tf.DType, weights: dict[str, np.ndarray]) -> bool:
    """Switch the node's float32 type attributes to `dtype`; returns whether anything changed."""
    if _is_boundary_cast(node):
        return False
    if node.op == "Cast":
        if node.attr["DstT"].type == types_pb2.DT_FLOAT:
            node.attr["DstT"].type = dtype.as_datatype_enum
            return True
        return False
    if node.op == "Const" and node.attr["dtype"].type == types_pb2.DT_FLOAT:
        value = const_value(node).astype(dtype.as_numpy_dtype)
        node.attr["dtype"].type = dtype.as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
        return True
    if node.op == "Placeholder" and node.name in weights:
        if node.attr["dtype"].type != types_pb2.DT_FLOAT:
            return False
        weights[node.name] = weights[node.name].astype(dtype.as_numpy_dtype)
        node.attr["dtype"].type = dtype.as_datatype_enum
        return True
    if node.op == "Placeholder":
        return False  # serving inputs keep their dtype
    changed = False
    for value in node.attr.values():
        if value.WhichOneof("value") == "type" and value.type == types_pb2.DT_FLOAT:
            value.type = dtype.as_datatype_enum
            changed = True
    return changed


def apply_precision_map(graph: Graph, params: PrecisionParams) -> PassResult:
    chosen, counts = assign_dtypes(graph, params.rules)
    graph_def = copy_graph_def(graph.graph_def)
    weights = dict(graph.weights)
    for node in graph_def.node:
        dtype = chosen.get(node.name)
        if dtype is not None and dtype != tf.float32:
            _convert_node(node, dtype, weights)
    outputs = _insert_casts(graph_def, dict(graph.outputs))
    return PassResult(graph.replace(graph_def=graph_def, weights=weights, outputs=outputs), counts)


def _insert_casts(graph_def, outputs: dict[str, str]) -> dict[str, str]:
    nodes = nodes_by_name(graph_def)
    new_nodes: list[NodeDef] = []

    def cast_of(source: str, index: int, want: int) -> str:
        producer = nodes[source]
        if _is_boundary_cast(producer):
            # Never two casts in a row: read the cast's own input, cast again only if still needed.
            origin, origin_index, _ = split_input(producer.input[0])
            if producer.attr["SrcT"].type == want:
                return producer.input[0]
            source, index = origin, origin_index
        name = f"{source}{CAST_SUFFIX}{index}_{SHORT[want]}" if index else f"{source}{CAST_SUFFIX}{SHORT[want]}"
        if name not in nodes:
            have = output_dtype(nodes[source], index)
            cast = make_node(
                "Cast", name, [source if index == 0 else f"{source}:{index}"], device=nodes[source].device,
                SrcT=tf.as_dtype(have), DstT=tf.as_dtype(want), Truncate=False,
            )
            nodes[name] = cast
            new_nodes.append(cast)
        return name

    for node in list(graph_def.node):
        position = 0
        for slot, name in enumerate(node.input):
            if name.startswith("^"):
                continue
            source, index, _ = split_input(name)
            have = output_dtype(nodes[source], index)
            want = input_dtype(node, position)
            position += 1
            if have != want and have in FLOAT_TYPES and want in FLOAT_TYPES:
                node.input[slot] = cast_of(source, index, want)
    for key, tensor in outputs.items():
        source, index, _ = split_input(tensor)
        if output_dtype(nodes[source], index) != types_pb2.DT_FLOAT:
            outputs[key] = tensor_name(cast_of(source, index, types_pb2.DT_FLOAT))
    graph_def.node.extend(new_nodes)
    return outputs
