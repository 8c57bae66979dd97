"""Graph -> the graph serving needs: pruned to the outputs, then the listed ops and patterns removed.

Op types in `ops` that pass a tensor through unchanged (Identity, StopGradient, CheckNumerics,
Snapshot, PreventGradient) are bypassed: their consumers read their input, and control edges they
carried move to those consumers. `Assert` drops the asserts and the control edges hanging on them
(the position-slice guard); their dead condition is pruned. `ReshapeChain` reads a reshape's input
through any reshape-like producer (Reshape(Reshape(x, a), b) == Reshape(x, b)) and drops a reshape
whose input already has the target shape (a pair that cancels). An entry ending in `?` may match
nothing (the default list's Assert and ReshapeChain are not in every exporter's graph).
"""

from __future__ import annotations

import dataclasses

from bertc.errors import ConfigError
from bertc.ir.graph import (
    Graph,
    ancestors,
    const_value,
    copy_graph_def,
    drop_control_edges,
    input_ref,
    nodes_by_name,
    prune_to_outputs,
    split_input,
    static_shapes,
    tensor_name,
)
from bertc.ir.ops import PASS_THROUGH_OPS, RESHAPE_OPS
from bertc.passes import OPTIONAL_ENTRY, Condition, Pass, PassResult
from bertc.schema import Key

PATTERNS = ("Assert", "ReshapeChain")


@dataclasses.dataclass(frozen=True)
class RemovalParams:
    ops: tuple[str, ...] = ("Identity", "StopGradient", "Assert?", "ReshapeChain?")


def remove_training_ops(graph: Graph, params: RemovalParams) -> PassResult:
    unknown = [entry for entry in params.ops if entry.removesuffix(OPTIONAL_ENTRY) not in PASS_THROUGH_OPS + PATTERNS]
    if unknown:
        raise ConfigError(
            f"removal.ops has {unknown}, which bertc cannot remove; valid entries: "
            f"{', '.join(PASS_THROUGH_OPS + PATTERNS)}, each optionally ending in {OPTIONAL_ENTRY!r} "
            "(may match nothing)."
        )
    graph = prune_to_outputs(graph)
    matches: dict[str, int] = {}
    for entry in params.ops:
        op = entry.removesuffix(OPTIONAL_ENTRY)
        if op == "Assert":
            graph, matches[entry] = _remove_asserts(graph)
        elif op == "ReshapeChain":
            graph, matches[entry] = _collapse_reshape_chains(graph)
        else:
            graph, matches[entry] = _bypass(graph, op)
    return PassResult(graph, matches)


def _bypass(graph: Graph, op: str) -> tuple[Graph, int]:
    graph_def = copy_graph_def(graph.graph_def)
    nodes = nodes_by_name(graph_def)
    removed = {node.name for node in graph_def.node if node.op == op}
    if not removed:
        return graph, 0

    def resolve(name: str) -> tuple[str, list[str]]:
        """A data input -> the tensor it passes through, and the control inputs met on the way."""
        controls: list[str] = []
        node_name, index, _ = split_input(name)
        while node_name in removed:
            node = nodes[node_name]
            controls += [source for source in node.input if source.startswith("^")]
            node_name, index, _ = split_input(node.input[0])
        return input_ref(tensor_name(node_name, index)), controls

    for node in graph_def.node:
        data: list[str] = []
        control: list[str] = []
        for name in node.input:
            if name.startswith("^") and name[1:] in removed:
                source, controls = resolve(name[1:])
                control += controls + ["^" + split_input(source)[0]]
            elif name.startswith("^"):
                control.append(name)
            else:
                source, controls = resolve(name)
                data.append(source)
                control += controls
        data_nodes = {split_input(name)[0] for name in data}
        control = [name for name in dict.fromkeys(control) if name[1:] not in data_nodes]
        del node.input[:]
        node.input.extend(data + control)
    outputs = {}
    for key, tensor in graph.outputs.items():
        source, _ = resolve(tensor)
        node_name, index, _ = split_input(source)
        outputs[key] = tensor_name(node_name, index)
    kept = [node for node in graph_def.node if node.name not in removed]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    return graph.replace(graph_def=graph_def, outputs=outputs), len(removed)


def _remove_asserts(graph: Graph) -> tuple[Graph, int]:
    graph_def = copy_graph_def(graph.graph_def)
    asserts = {node.name for node in graph_def.node if node.op == "Assert"}
    if not asserts:
        return graph, 0
    drop_control_edges(graph_def, asserts)
    return prune_to_outputs(graph.replace(graph_def=graph_def)), len(asserts)


def _collapse_reshape_chains(graph: Graph) -> tuple[Graph, int]:
    graph_def = copy_graph_def(graph.graph_def)
    nodes = nodes_by_name(graph_def)
    matched = 0
    for node in graph_def.node:
        if node.op != "Reshape":
            continue
        source = nodes[split_input(node.input[0])[0]]
        while source.op in RESHAPE_OPS and not any(name.startswith("^") for name in source.input):
            node.input[0] = source.input[0]
            source = nodes[split_input(source.input[0])[0]]
            matched += 1
    graph = prune_to_outputs(graph.replace(graph_def=graph_def))
    graph, cancelled = _drop_identity_reshapes(graph)
    return graph, matched + cancelled


def _drop_identity_reshapes(graph: Graph) -> tuple[Graph, int]:
    """Reshape(x, s) where x already has shape s (one -1 standing for the unknown batch) is x."""
    shapes = static_shapes(graph)
    nodes = nodes_by_name(graph.graph_def)
    identity = set()
    for node in graph.graph_def.node:
        shape_node = nodes[split_input(node.input[1])[0]] if node.op == "Reshape" else None
        if shape_node is None or shape_node.op != "Const":
            continue
        target = [int(dim) for dim in const_value(shape_node).reshape(-1)]
        source = shapes[tensor_name(*split_input(node.input[0])[:2])]
        if source.rank is None or source.rank != len(target):
            continue
        dims = source.as_list()
        if (
            all(dim == want or (dim is None and want == -1) for dim, want in zip(dims, target))
            and dims.count(None) <= 1
        ):
            identity.add(node.name)
    if not identity:
        return graph, 0
    graph_def = copy_graph_def(graph.graph_def)
    for node in graph_def.node:
        for position, name in enumerate(node.input):
            source, _, control = split_input(name)
            if source in identity and not control:
                node.input[position] = nodes[source].input[0]
    outputs = {
        key: tensor_name(*split_input(nodes[split_input(t)[0]].input[0])[:2]) if split_input(t)[0] in identity else t
        for key, t in graph.outputs.items()
    }
    return prune_to_outputs(graph.replace(graph_def=graph_def, outputs=outputs)), len(identity)


def _pruned(graph: Graph, params: RemovalParams) -> str | None:
    needed = ancestors(graph.graph_def, graph.outputs.values())
    dead = [node.name for node in graph.graph_def.node if node.name not in needed]
    return f"{len(dead)} node(s) the outputs do not need remain, e.g. {dead[:3]}" if dead else None


def _listed_ops_gone(graph: Graph, params: RemovalParams) -> str | None:
    removed = [
        op for entry in params.ops if (op := entry.removesuffix(OPTIONAL_ENTRY)) in PASS_THROUGH_OPS + ("Assert",)
    ]
    left = [node.name for node in graph.graph_def.node if node.op in removed]
    return f"listed op(s) remain: {left[:5]}" if left else None


PASS = Pass(
    remove_training_ops,
    "removal",
    RemovalParams,
    help="prune what serving never reaches, then bypass or drop the listed ops",
    switch=Key("enabled", bool, True, off=False),
    # read by the target, not the pass: the served signature keeps run_classifier's two training inputs
    keys=(Key("keep_signature", bool, False),),
    # a label, not a parameter: it holds whether the step runs or not
    facts=lambda params, node: {"keep_signature": bool(node.keep_signature)},
    ensures=(
        Condition("every node is needed by the serving outputs", _pruned),
        Condition("no op of a listed pass-through type or Assert remains", _listed_ops_gone),
    ),
)
