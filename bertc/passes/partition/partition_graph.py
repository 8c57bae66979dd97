"""Graph -> the same graph split at boundary tensors into a host part (pinned to the CPU) and a device part.

A boundary is a tensor name (`node:0`), a node name, or a structural alias: `@embedding_output`
(the hidden states entering the first layer: the embedding LayerNorm's output) and
`@attention_mask` (the one tensor every layer's mask operand comes from). A packed graph (length=pack)
gets one more crossing of its own, `pack_mask` (bertc/length/pack/mask:0: the mask the pack indices come
from), unless a boundary already crosses there: the device part computes the indices from it instead of
reading the serving input_mask. Each crossing becomes an
Identity node `bertc/boundary/<k>`; every node the boundaries need is placed on `host_device`;
what the outputs need beyond the boundaries is the device part. `split_partition` cuts the graph
there for the targets.
"""

from __future__ import annotations

import dataclasses
import difflib

from bertc.analysis.structure import embedding_output, find_attention_sites
from bertc.errors import ConfigError
from bertc.ir.graph import (
    Graph,
    GraphError,
    ancestors,
    copy_graph_def,
    input_ref,
    make_node,
    node_of,
    nodes_by_name,
    output_dtype,
    split_input,
    tensor_name,
)
from bertc.ir.lazy import tf
from bertc.passes import Condition, Pass, PassResult
from bertc.passes.length.contract import PACK_MASK, is_packed
from bertc.passes.partition.contract import BOUNDARY_PREFIX, boundary_nodes, split_partition
from bertc.schema import Key, bounded

ALIASES = ("@embedding_output", "@attention_mask")
PACK_MASK_KEY = "pack_mask"  # the crossing a packed graph gets without asking: its pack mask
HOST_DEVICE = "/device:CPU:0"  # host_device's default, and what the targets are told when the step is off


@dataclasses.dataclass(frozen=True)
class PartitionParams:
    boundaries: tuple[str, ...] = bounded(ALIASES, filled=True, item="boundary")
    host_device: str = bounded(HOST_DEVICE, filled=True, note="a TensorFlow device name")

    def __post_init__(self) -> None:
        """A boundary named twice is refused where the value enters (the plan), whether or not the step runs."""
        repeated = sorted({name for name in self.boundaries if self.boundaries.count(name) > 1})
        if repeated:
            raise ConfigError(f"partition.boundaries names {repeated} more than once; give each boundary once.")


def resolve_boundary(graph: Graph, spec: str) -> str:
    """A boundary spec -> a tensor name; an unknown name is an error listing the nearest candidates."""
    nodes = nodes_by_name(graph.graph_def)
    if spec == "@attention_mask":
        return _common_mask_tensor(graph, nodes)
    if spec == "@embedding_output":
        return embedding_output(graph)
    if spec.startswith("@"):
        raise ConfigError(f"partition boundary {spec!r} is not a known alias; aliases: {', '.join(ALIASES)}.")
    name, index, _ = split_input(spec)
    if name not in nodes:
        near = difflib.get_close_matches(name, list(nodes), n=5, cutoff=0.5)
        raise ConfigError(
            f"partition boundary {spec!r} does not exist in the graph (after the earlier steps); nearest "
            f"node names: {near or 'none'}. Aliases {', '.join(ALIASES)} are found by structure."
        )
    return tensor_name(name, index)


def _common_mask_tensor(graph: Graph, nodes) -> str:
    operands = [nodes[site.node].input[site.mask_position] for site in find_attention_sites(graph)]
    if len(set(operands)) == 1:
        return tensor_name(*split_input(operands[0])[:2])
    others = [ancestors(graph.graph_def, [operand]) for operand in operands[1:]]
    current = operands[0]
    while True:
        name = split_input(current)[0]
        if all(name in seen for seen in others):
            return tensor_name(*split_input(current)[:2])
        candidates = [i for i in nodes[name].input if not i.startswith("^") and nodes[split_input(i)[0]].op != "Const"]
        if not candidates:
            raise GraphError(f"@attention_mask: the layers' mask operands share no tensor (walked up to {name}).")
        current = candidates[0]


def _boundary_key(spec: str, position: int) -> str:
    return spec[1:] if spec.startswith("@") else f"b{position}"


def partition_graph(graph: Graph, params: PartitionParams) -> PassResult:
    if not params.boundaries:
        raise ConfigError("partition.boundaries is empty; give at least one tensor, or use partition=none.")
    existing = set(boundary_nodes(graph))
    graph_def = copy_graph_def(graph.graph_def)
    nodes = nodes_by_name(graph_def)
    matches: dict[str, int] = {}
    specs = [(spec, _boundary_key(spec, position)) for position, spec in enumerate(params.boundaries)]
    if is_packed(graph) and tensor_name(PACK_MASK) not in {resolve_boundary(graph, spec) for spec in params.boundaries}:
        specs.append((tensor_name(PACK_MASK), PACK_MASK_KEY))  # length=pack: the indices' mask crosses too
    for spec, key in specs:
        name = BOUNDARY_PREFIX + key
        if name in existing:
            matches[spec] = 1
            continue
        tensor = resolve_boundary(graph, spec)
        matches[spec] = 1
        source = nodes[node_of(tensor)]
        dtype = tf.as_dtype(output_dtype(source, split_input(tensor)[1]))
        upstream = ancestors(graph_def, [tensor])
        for node in graph_def.node:
            for slot, ref in enumerate(node.input):
                if ref == input_ref(tensor) and node.name not in upstream:
                    node.input[slot] = name
        graph_def.node.append(make_node("Identity", name, [input_ref(tensor)], T=dtype))
        outputs = {key_: (tensor_name(name) if value == tensor else value) for key_, value in graph.outputs.items()}
        graph = graph.replace(graph_def=graph_def, outputs=outputs)
        nodes = nodes_by_name(graph_def)
    result = graph.replace(graph_def=graph_def)
    host = ancestors(graph_def, boundary_nodes(result))
    for node in graph_def.node:
        if node.name in host:
            node.device = params.host_device
    _, device_graph = split_partition(result)
    leaks = sorted(
        key for key, tensor in result.inputs.items() if node_of(tensor) in {n.name for n in device_graph.graph_def.node}
    )
    if leaks:
        raise GraphError(
            f"partition: the device part still reads serving input(s) {leaks} directly, so the boundaries "
            f"{list(params.boundaries)} do not cut the graph; add a boundary on that path."
        )
    return PassResult(result, matches)


def _host_part_pinned(graph: Graph, params: PartitionParams) -> str | None:
    host = ancestors(graph.graph_def, boundary_nodes(graph))
    loose = [node.name for node in graph.graph_def.node if node.name in host and node.device != params.host_device]
    return f"host nodes not on {params.host_device}: {loose[:4]}" if loose else None


def _one_boundary_per_spec(graph: Graph, params: PartitionParams) -> str | None:
    boundaries = boundary_nodes(graph)
    return (
        None
        if len(boundaries) >= len(set(params.boundaries))
        else f"{len(boundaries)} boundaries for {list(params.boundaries)}"
    )


PASS = Pass(
    partition_graph,
    "partition",
    PartitionParams,
    help="split into a host part (embeddings, mask bias) pinned to the CPU and a device part",
    switch=Key("mode", str, "none", choices=("none", "cpu_embed"), off="none"),
    # NOTE: partition last: the boundary tensors carry their final dtypes, and it places every node the
    # earlier steps made.
    after=("apply_precision_map",),
    # read by the target: where the host part runs (the default when the step is off)
    facts=lambda params, node: {"host_device": params.host_device if params else HOST_DEVICE},
    ensures=(
        Condition("the host part (everything the boundaries need) is pinned to the host device", _host_part_pinned),
        Condition("each boundary has its crossing node", _one_boundary_per_spec),
    ),
)
