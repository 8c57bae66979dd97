"""Graph -> the graph with one additive [B,1,1,T] attention bias, computed once and shared by every layer.

The mask computation is found by structure (bertc/analysis/structure.py: find_attention_sites, the site patterns):
at every attention softmax, where a tensor computed from `input_mask` alone (batch sizes read through
Shape do not count) meets the scores: an Add (google-research, Model Garden, Hugging Face) or a
SelectV2 on a boolean mask (keras-hub). Each site then adds one shared
`(1 - cast(reshape(input_mask, [-1,1,1,T]))) * bias_value` (a SelectV2 becomes that Add); the old
per-layer mask ops are left dead and pruned. With `fold_scale`, the `1/sqrt(head_size)` on the scores
(a Mul or RealDiv after QK^T, or a Mul on the query before it) is folded into the query kernel and bias.
keras-hub also zeroes the masked probabilities after the softmax (SelectV2(mask, p, 0)); with the bias they
are exactly 0 already (the exponential underflows), so that select is bypassed.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from bertc.analysis.match import Index, require_match, weight_behind
from bertc.analysis.structure import PROJECTION_VARIANTS, AttentionSite, find_attention_sites
from bertc.errors import ConfigError
from bertc.ir.graph import (
    ATTENTION_BIAS_SCOPE,
    Graph,
    GraphError,
    const_value,
    copy_graph_def,
    make_const,
    make_node,
    node_of,
    nodes_by_name,
    prune_to_outputs,
    rewire,
    split_input,
    tensor_name,
)
from bertc.ir.lazy import tf
from bertc.passes import Condition, Pass, PassResult
from bertc.schema import Key, bounded, derived

if TYPE_CHECKING:
    from bertc.ir.graph import NodeDef

SCOPE = ATTENTION_BIAS_SCOPE


@dataclasses.dataclass(frozen=True)
class MaskParams:
    # added to masked scores: negative, and finite in the compute dtype (checked against it once it is known)
    bias_value: float = bounded(-10000.0, -1e9, -1.0, note="a large negative number, e.g. -10000.0")
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
    weights = dict(graph.weights)
    matches = {"attention_sites": len(sites)}
    if not all(_mask_operand(nodes, site) == shared for site in sites):
        graph_def.node.extend(_bias_nodes(nodes[node_of(mask_tensor)], mask_tensor, params.bias_value))
        for site in sites:
            _add_shared_bias(nodes[site.node], site, shared)
            if site.remask:  # masked probabilities are exactly 0 already: exp underflows at the bias
                rewire(graph_def, tensor_name(site.remask), tensor_name(site.softmax))
    if params.fold_scale:
        matches["folded_scales"] = _fold_scales(graph_def, graph, sites, weights)
    result = graph.replace(graph_def=graph_def, weights=weights)
    return PassResult(prune_to_outputs(result), matches)


def _mask_operand(nodes, site: AttentionSite) -> str:
    return split_input(nodes[site.node].input[site.mask_position])[0]


def _add_shared_bias(node: NodeDef, site: AttentionSite, shared: str) -> None:
    """The site (in the copy) adds the shared bias: the mask operand replaced, a SelectV2 made an AddV2."""
    if not site.boolean:
        node.input[site.mask_position] = shared
        return
    scores, dtype = node.input[1], node.attr["T"].type
    del node.input[:]
    node.input.extend([scores, shared])
    node.op = "AddV2"
    node.ClearField("attr")
    node.attr["T"].type = dtype


def _bias_nodes(mask: NodeDef, mask_tensor: str, bias_value: float) -> list[NodeDef]:
    """(1 - cast(m)) * bias_value as [B,1,1,T]: a Reshape when T is static, two ExpandDims when it is not."""
    mask_ref, mask_dtype = mask_tensor.removesuffix(":0"), tf.as_dtype(mask.attr["dtype"].type)
    dims = mask.attr["shape"].shape.dim
    seq_len = dims[-1].size if dims else -1
    if seq_len > 0:
        shaped = [
            make_const(f"{SCOPE}/shape", np.array([-1, 1, 1, seq_len], np.int32)),
            make_node("Reshape", f"{SCOPE}/Reshape", [mask_ref, f"{SCOPE}/shape"], T=mask_dtype, Tshape=tf.int32),
        ]
    else:
        shaped = [
            make_const(f"{SCOPE}/axis", np.int32(1)),
            make_node("ExpandDims", f"{SCOPE}/rows", [mask_ref, f"{SCOPE}/axis"], T=mask_dtype, Tdim=tf.int32),
            make_node(
                "ExpandDims", f"{SCOPE}/Reshape", [f"{SCOPE}/rows", f"{SCOPE}/axis"], T=mask_dtype, Tdim=tf.int32
            ),
        ]
    return shaped + [
        make_node("Cast", f"{SCOPE}/Cast", [f"{SCOPE}/Reshape"], SrcT=mask_dtype, DstT=tf.float32, Truncate=False),
        make_const(f"{SCOPE}/one", np.float32(1.0)),
        make_node("Sub", f"{SCOPE}/sub", [f"{SCOPE}/one", f"{SCOPE}/Cast"], T=tf.float32),
        make_const(f"{SCOPE}/value", np.float32(bias_value)),
        make_node("Mul", f"{SCOPE}/bias", [f"{SCOPE}/sub", f"{SCOPE}/value"], T=tf.float32),
    ]


def _fold_scales(graph_def, graph: Graph, sites: list[AttentionSite], weights) -> int:
    """Each site's 1/sqrt(d) multiply (on the scores, or on the query) folded into the query kernel and bias."""
    index, folded = Index.of(graph), 0
    for site in sites:
        if site.scale is None:
            continue  # already folded
        scale = index.nodes[site.scale]
        constants = [name for name in index.inputs(site.scale) if name in index.constants]
        data = [name for name in scale.input[:2] if split_input(name)[0] not in constants]
        value = const_value(index.nodes[weight_behind(index, constants[0])]) if len(constants) == 1 else None
        if value is None or value.size != 1 or len(data) != 1:
            raise GraphError(
                f"mask.fold_scale: {site.scale} is not a tensor times (or over) one constant; matching stopped "
                "there. Set mask.fold_scale=false for this graph."
            )
        factor = float(value) if scale.op == "Mul" else 1.0 / float(value)
        projection = require_match(index, site.query, PROJECTION_VARIANTS, "query projection (for mask.fold_scale)")
        for role in ("kernel", "bias"):
            name = weight_behind(index, projection[role])
            if name not in weights:
                raise GraphError(f"mask.fold_scale: {name} is not a weight; cannot fold the scale into it.")
            weights[name] = (weights[name] * np.float32(factor)).astype(weights[name].dtype)
        rewire(graph_def, tensor_name(site.scale), tensor_name(*split_input(data[0])[:2]))
        folded += 1
    return folded


def _has_mask_input(graph: Graph, params: MaskParams) -> str | None:
    return (
        None if "input_mask" in graph.inputs else f"the graph has no input_mask input (inputs: {sorted(graph.inputs)})"
    )


def _one_shared_bias(graph: Graph, params: MaskParams) -> str | None:
    nodes = nodes_by_name(graph.graph_def)
    operands = {_mask_operand(nodes, site) for site in find_attention_sites(graph)}
    return (
        None if operands == {f"{SCOPE}/bias"} else f"the attention sites read {sorted(operands)[:4]}, not {SCOPE}/bias"
    )


def _no_remask(graph: Graph, params: MaskParams) -> str | None:
    left = [site.remask for site in find_attention_sites(graph) if site.remask]
    return f"probabilities still re-masked at {left[:3]}" if left else None


def _scale_folded(graph: Graph, params: MaskParams) -> str | None:
    if not params.fold_scale:
        return None
    scaled = [site.scale for site in find_attention_sites(graph) if site.scale is not None]
    return f"scores still scaled by {scaled[:3]}" if scaled else None


PASS = Pass(
    rewrite_attention_mask,
    "mask",
    MaskParams,
    help="one [B,1,1,T] additive mask bias shared by every layer (mask.fold_scale folds 1/sqrt(d))",
    switch=Key("mode", str, "reimpl", choices=("original", "reimpl"), off="original"),
    # NOTE: after removal: the structure is matched without Identity reads and asserts in the way.
    after=("remove_training_ops",),
    derive=lambda facts: {"compute_dtype": facts["compute_dtype"]},
    # read by the target: 1/sqrt(head_size) lives in the query weights (never when the step is off)
    facts=lambda params, node: {"scale_folded": bool(params and params.fold_scale)},
    requires=(Condition("the graph has an input_mask serving input", _has_mask_input),),
    ensures=(
        Condition("one shared [B,1,1,T] bias feeds every attention softmax", _one_shared_bias),
        Condition("no softmax output is masked again", _no_remask),
        Condition("with fold_scale, no scale multiply is left on the scores", _scale_folded),
    ),
)
