"""Graph -> the graph computing each region in the dtype its precision rule names, casts only at edges.

Rules are ordered; a node takes the dtype of the first rule whose scope pattern (fnmatch on the
node name) and op list (empty: any op) match it; unmatched nodes keep float32. Converted nodes
have their float type attributes changed; their weights are stored in the new dtype (converted
once, here, so no weight is cast per call); constants are re-encoded. A Cast goes on each edge
whose two ends now disagree, one per (tensor, dtype), never two in a row; outputs stay float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from bertc.analysis.structure import ROLE_GROUPS, ROLES, node_roles, role_matches
from bertc.errors import ConfigError
from bertc.ir.graph import (
    DT_BFLOAT16,
    DT_FLOAT,
    DT_HALF,
    FLOAT_TYPES,
    Graph,
    const_value,
    copy_graph_def,
    input_dtype,
    make_node,
    match_scope,
    nodes_by_name,
    output_dtype,
    split_input,
    tensor_name,
    through_identity,
)
from bertc.ir.lazy import tf
from bertc.ir.ops import MATMUL_OPS
from bertc.passes import Condition, Pass, PassResult
from bertc.schema import Key, bounded, choice

if TYPE_CHECKING:
    from bertc.ir.graph import NodeDef

DTYPES = ("float32", "float16", "bfloat16", "int8")
# int8 is not a TensorFlow rewrite: the matmuls an int8 rule selects stay float32 here and are listed in
# Graph.quantize; the target's engine quantizes their weights (per channel) at build time and their activations
# per call (dynamic) or from calibration (static). Only the targets that quantize take such a map.
QUANTIZED = "int8"
SHORT = {DT_FLOAT: "f32", DT_HALF: "f16", DT_BFLOAT16: "bf16"}
CAST_SUFFIX = "/bertc_cast_"


@dataclasses.dataclass(frozen=True)
class PrecisionRule:
    scope: str = "*"
    ops: tuple[str, ...] = ()
    dtype: str = choice("float16", DTYPES)
    # a role the structural analysis gives nodes (bertc/analysis/structure.py: ROLES), or a group of them
    # (attention, ffn); empty: any node. Roles mean the same on every exporter's graph; scopes do not.
    role: str = choice("", ("", *ROLES, *ROLE_GROUPS))

    def matches(self, node: NodeDef, roles: Mapping[str, str]) -> bool:
        return (
            match_scope(node.name, self.scope)
            and (not self.ops or node.op in self.ops)
            and (not self.role or role_matches(roles.get(node.name), self.role))
        )

    def describe(self) -> str:
        ops = f" ops={list(self.ops)}" if self.ops else ""
        where = (
            (f"role={self.role}" + (f" scope={self.scope!r}" if self.scope != "*" else ""))
            if self.role
            else f"scope={self.scope!r}"
        )
        return f"{where}{ops} -> {self.dtype}"


@dataclasses.dataclass(frozen=True)
class PrecisionParams:
    rules: tuple[PrecisionRule, ...] = ()
    # int8 rules only (read by the quantizing target): activations quantized per call from their own range
    # (dynamic) or with scales calibrated on seeded batches at build time (static)
    activations: str = choice("dynamic", ("dynamic", "static"))
    calibration_batches: int = bounded(8, 1, 1024)  # static: the batches the activation ranges are read from


def assign_dtypes(
    graph: Graph, rules: tuple[PrecisionRule, ...], roles: Mapping[str, str] | None = None
) -> tuple[dict, dict[str, int]]:
    """Node name -> dtype chosen by the first matching rule; and each rule's match count. `roles`: the
    graph's node roles when the caller has them (found here when a rule selects by role)."""
    for rule in rules:
        if rule.dtype not in DTYPES:
            raise ConfigError(f"precision rule {rule.describe()}: dtype must be one of {sorted(DTYPES)}.")
    chosen: dict = {}
    counts = {rule.describe(): 0 for rule in rules}
    if roles is None:
        roles = node_roles(graph) if any(rule.role for rule in rules) else {}
    for node in graph.graph_def.node:
        for rule in rules:
            if rule.matches(node, roles):
                counts[rule.describe()] += 1
                chosen[node.name] = tf.as_dtype(rule.dtype)
                break
    return chosen, counts


def _is_boundary_cast(node: NodeDef) -> bool:
    return node.op == "Cast" and node.attr["SrcT"].type in FLOAT_TYPES


def _convert_node(node: NodeDef, dtype, weights: dict[str, np.ndarray]) -> bool:
    """Switch the node's float32 type attributes to `dtype`; returns whether anything changed."""
    if _is_boundary_cast(node):
        return False
    if node.op == "Cast":
        if node.attr["DstT"].type == DT_FLOAT:
            node.attr["DstT"].type = dtype.as_datatype_enum
            return True
        return False
    if node.op == "Const" and node.attr["dtype"].type == DT_FLOAT:
        value = const_value(node).astype(dtype.as_numpy_dtype)
        node.attr["dtype"].type = dtype.as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
        return True
    if node.op == "Placeholder" and node.name in weights:
        if node.attr["dtype"].type != DT_FLOAT:
            return False
        weights[node.name] = weights[node.name].astype(dtype.as_numpy_dtype)
        node.attr["dtype"].type = dtype.as_datatype_enum
        return True
    if node.op == "Placeholder":
        return False  # serving inputs keep their dtype
    changed = False
    for value in node.attr.values():
        if value.WhichOneof("value") == "type" and value.type == DT_FLOAT:
            value.type = dtype.as_datatype_enum
            changed = True
    return changed


def apply_precision_map(graph: Graph, params: PrecisionParams) -> PassResult:
    roles = node_roles(graph)  # NOTE: once: for the rules that select by role, and for the report
    chosen, counts = assign_dtypes(graph, params.rules, roles)
    graph_def = copy_graph_def(graph.graph_def)
    weights = dict(graph.weights)
    converted: list[str] = []
    for node in graph_def.node:
        dtype = chosen.get(node.name)
        if dtype in (None, tf.float32, tf.int8):
            continue  # int8: left to the target's engine (Graph.quantize)
        if _convert_node(node, dtype, weights):
            converted.append(node.name)
    outputs = _insert_casts(graph_def, dict(graph.outputs))
    int8 = _weight_matmuls(graph, [name for name, dtype in chosen.items() if dtype == tf.int8])
    quantize = {name: roles.get(name, "none") for name in int8}
    result = graph.replace(graph_def=graph_def, weights=weights, outputs=outputs, quantize=quantize)
    details: dict = {"converted_roles": _converted_roles(roles, converted + list(int8), chosen)}
    if quantize:
        details["int8"] = f"{len(quantize)} matmuls left to the target's engine ({params.activations} activations)"
    return PassResult(result, counts, details)


def _weight_matmuls(graph: Graph, names: list[str]) -> tuple[str, ...]:
    """The matmuls among `names` that multiply by a weight (a dense layer): what int8 quantizes. The attention's
    own products (scores, context) multiply activations and stay float32."""
    nodes = nodes_by_name(graph.graph_def)

    def weight_operand(node: NodeDef) -> bool:
        read = (through_identity(nodes, split_input(name)[0]) for name in node.input[:2])
        return any(source.name in graph.weights or source.op == "Const" for source in read)

    return tuple(name for name in names if nodes[name].op in MATMUL_OPS and weight_operand(nodes[name]))


def _converted_roles(roles: Mapping[str, str], converted: list[str], chosen: Mapping) -> dict[str, dict[str, int]]:
    """role -> {dtype: nodes converted to it}: which regions the map converted, in every exporter's terms."""
    result: dict[str, dict[str, int]] = {}
    for name in converted:
        per_dtype = result.setdefault(roles.get(name, "none"), {})
        per_dtype[chosen[name].name] = per_dtype.get(chosen[name].name, 0) + 1
    return dict(sorted(result.items()))


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
                "Cast",
                name,
                [source if index == 0 else f"{source}:{index}"],
                device=nodes[source].device,
                SrcT=tf.as_dtype(have),
                DstT=tf.as_dtype(want),
                Truncate=False,
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
        if output_dtype(nodes[source], index) != DT_FLOAT:
            outputs[key] = tensor_name(cast_of(source, index, DT_FLOAT))
    graph_def.node.extend(new_nodes)
    return outputs


def _no_float32_matmul_in_converted_regions(graph: Graph, params: PrecisionParams) -> str | None:
    chosen, _ = assign_dtypes(graph, params.rules)
    left = [
        node.name
        for node in graph.graph_def.node
        if node.op in MATMUL_OPS
        and node.name in chosen
        and chosen[node.name] not in (tf.float32, tf.int8)
        and node.attr["T"].type == DT_FLOAT
    ]
    return f"float32 matmul(s) inside converted regions: {left[:4]}" if left else None


def _no_cast_chains(graph: Graph, params: PrecisionParams) -> str | None:
    nodes = nodes_by_name(graph.graph_def)
    chains = [
        node.name
        for node in graph.graph_def.node
        if _is_boundary_cast(node) and _is_boundary_cast(nodes[split_input(node.input[0])[0]])
    ]
    return f"casts in a row at {chains[:4]}" if chains else None


def _float32_outputs(graph: Graph, params: PrecisionParams) -> str | None:
    nodes = nodes_by_name(graph.graph_def)
    narrow = [
        key
        for key, tensor in graph.outputs.items()
        if output_dtype(nodes[split_input(tensor)[0]], split_input(tensor)[1]) != DT_FLOAT
    ]
    return f"outputs {narrow} are not float32" if narrow else None


PASS = Pass(
    apply_precision_map,
    "precision",
    PrecisionParams,
    help="the precision map: ordered rules (scope, op types) -> dtype; casts only at region edges",
    # `name` labels the preset in reports; `dtype` is what the presets' rules interpolate as ${precision.dtype}.
    keys=(Key("name", str, "fp32"), Key("dtype", str, "float32", choices=DTYPES)),
    enabled=lambda node: bool(node.rules),
    # read by the quantizing target and the verify gate (the step is off exactly when there are no rules)
    facts=lambda params, node: {
        "quantize": "int8" if params and any(rule.dtype == "int8" for rule in params.rules) else ""
    },
    describe=lambda params: [
        "(first matching rule wins; the rest stays float32)",
        *(rule.describe() for rule in params.rules),
    ],
    # NOTE: after the mask rewrite: one shared bias then needs one cast, not one per layer.
    after=("rewrite_attention_mask",),
    ensures=(
        Condition("no float32 MatMul inside a converted region", _no_float32_matmul_in_converted_regions),
        Condition("no two casts in a row", _no_cast_chains),
        Condition("the outputs stay float32", _float32_outputs),
    ),
)
