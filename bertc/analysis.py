"""A Graph -> facts about its BERT structure (attention sites, mask operands, LayerNorm epsilons), found by
structure, not by names: what the passes, the shape reader and the targets all ask of a graph."""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING

from bertc.graph import (
    LENGTH_SCOPE,
    Graph,
    GraphError,
    const_value,
    consumers,
    node_of,
    nodes_by_name,
    split_input,
    tensor_name,
)

if TYPE_CHECKING:
    from bertc.graph import NodeDef

SHAPE_ONLY_OPS = ("Shape", "ShapeN", "Size", "Rank")
# What a mask computation may consist of; anything else on the mask side means it is not a mask.
MASK_OPS = {
    "Reshape",
    "Cast",
    "Fill",
    "Mul",
    "ExpandDims",
    "Sub",
    "Pack",
    "StridedSlice",
    "Const",
    "Identity",
    "Tile",
    "BroadcastTo",
    "AddV2",
    "Add",
    "Neg",
    "Shape",
    "Squeeze",
    "OnesLike",
    "Placeholder",
}


def value_sources(graph: Graph) -> dict[str, frozenset[str]]:
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


def find_attention_sites(graph: Graph, sources: dict[str, frozenset[str]] | None = None) -> list[tuple[NodeDef, int]]:
    """[(score Add, position of its mask operand)], in graph order; raises if none is found. `sources`: the
    graph's value_sources when the caller has them."""
    mask_input = node_of(graph.inputs["input_mask"])
    sources = sources if sources is not None else value_sources(graph)
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


def layer_norm_epsilons(graph: Graph) -> list[float]:
    """The epsilon of each LayerNorm: the constant added to the variance before its Rsqrt."""
    nodes = nodes_by_name(graph.graph_def)
    return [
        float(const_value(source))
        for node in graph.graph_def.node
        if node.op == "Rsqrt"
        for add in [nodes[split_input(node.input[0])[0]]]
        if add.op in ("Add", "AddV2")
        for source in [nodes[split_input(name)[0]] for name in add.input]
        if source.op == "Const"
    ]


# ---- regions: GELU activations and LayerNorms --------------------------------------------------------
# Found by their shape, not their names: a core op inside a region of elementwise ops that reads one tensor x
# at two or more places and is read by the rest of the graph at exactly one node. For GELU the core is Tanh,
# Erf, Erfc or Sigmoid (google's tanh form, tf.nn.gelu's erf and erfc forms, Keras', the sigmoid
# approximation; the pooler's Tanh reads its input once and is not one); for LayerNorm it is the Rsqrt of
# the variance (contrib's moments + batchnorm form and Keras' own).

ELEMENTWISE_OPS = frozenset(
    {
        "Mul",
        "Add",
        "AddV2",
        "Sub",
        "RealDiv",
        "Pow",
        "Tanh",
        "Erf",
        "Erfc",
        "Sigmoid",
        "Neg",
        "Const",
        "Square",
        "Sqrt",
        "Cast",
        "Reciprocal",
    }
)
LAYER_NORM_OPS = frozenset(
    {
        "Mean",
        "SquaredDifference",
        "Square",
        "Sub",
        "Mul",
        "Add",
        "AddV2",
        "Rsqrt",
        "Sqrt",
        "RealDiv",
        "Const",
        "Maximum",
        "Reciprocal",
    }
)
GELU_CORES = {"Tanh": "tanh", "Erf": "exact", "Erfc": "exact", "Sigmoid": "sigmoid"}


@dataclasses.dataclass(frozen=True)
class Region:
    x: str  # the tensor the region reads
    output: str  # the node whose value is the region's result
    nodes: frozenset[str]  # the region's own nodes (constants and weights included, x not)


@dataclasses.dataclass(frozen=True)
class GeluSite(Region):
    form: str = "tanh"  # tanh | exact | sigmoid


@dataclasses.dataclass(frozen=True)
class Index:
    """A graph's nodes by name, their data consumers, and which nodes are constants: a Const, a weight, or a
    pass-through read of one (Identity, StopGradient, ...: a graph before the removal step still has them)."""

    nodes: dict
    users: dict
    constants: frozenset[str]

    @classmethod
    def of(cls, graph: Graph) -> Index:
        nodes = nodes_by_name(graph.graph_def)
        users = {
            name: [(user, position) for user, position in found if position >= 0]
            for name, found in consumers(graph.graph_def).items()
        }
        constants = set(graph.weights) | {name for name, node in nodes.items() if node.op == "Const"}
        for node in graph.graph_def.node:  # graph order: a read comes after what it reads
            if node.op in PASS_THROUGH_OPS and node.input and split_input(node.input[0])[0] in constants:
                constants.add(node.name)
        return cls(nodes, users, frozenset(constants))

    def inputs(self, name: str) -> list[str]:
        return [split_input(source)[0] for source in self.nodes[name].input if not source.startswith("^")]

    def readers(self, name: str) -> list[str]:
        return [user.name for user, _ in self.users.get(name, ())]


PASS_THROUGH_OPS = ("Identity", "StopGradient", "Snapshot", "ReadVariableOp", "CheckNumerics", "PreventGradient")


def find_gelus(graph: Graph, index: Index | None = None) -> list[GeluSite]:
    """Every GELU-shaped activation, in graph order."""
    index = index or Index.of(graph)
    sites = []
    for core in graph.graph_def.node:
        if core.op in GELU_CORES:
            region = _region_around(core.name, index, ELEMENTWISE_OPS)
            if region is not None:
                sites.append(GeluSite(region.x, region.output, region.nodes, GELU_CORES[core.op]))
    return sites


def find_layer_norms(graph: Graph, index: Index | None = None) -> list[Region]:
    """Every LayerNorm: Rsqrt(Mean(SquaredDifference(x, Mean(x))) + eps) and what is computed from it with x
    (contrib's batchnorm form, Keras' form, Square(Sub) for the variance)."""
    index = index or Index.of(graph)
    regions = (_layer_norm_at(core.name, index) for core in graph.graph_def.node if core.op == "Rsqrt")
    return [region for region in regions if region is not None]


def _layer_norm_at(rsqrt: str, index: Index) -> Region | None:
    nodes = index.nodes

    def producer(name: str, position: int = 0) -> str:
        return index.inputs(name)[position]

    add = producer(rsqrt)
    if nodes[add].op not in ("Add", "AddV2"):
        return None
    variance = next((producer(add, i) for i in (0, 1) if nodes[producer(add, i)].op == "Mean"), None)
    if variance is None:
        return None
    spread = producer(variance)
    if nodes[spread].op == "Square" and nodes[producer(spread)].op == "Sub":
        spread = producer(spread)
    if nodes[spread].op not in ("SquaredDifference", "Sub"):
        return None
    x = producer(spread)
    # forward from the Rsqrt, taking an op only when everything it reads is the LayerNorm's own (so the
    # residual add after it, which also reads the next block, is not)
    known = _between(x, rsqrt, index) | {x}
    forward, stack = set(), index.readers(rsqrt)
    while stack:
        name = stack.pop()
        inside = all(parent in known or parent in forward or parent in index.constants for parent in index.inputs(name))
        if name not in forward and nodes[name].op in LAYER_NORM_OPS and inside:
            forward.add(name)
            stack.extend(index.readers(name))
    exits = [name for name in forward if any(user not in forward for user in index.readers(name))]
    if len(exits) != 1:
        return None
    return Region(
        tensor_name(*split_input(nodes[spread].input[0])[:2]), exits[0], frozenset(_between(x, exits[0], index))
    )


def _between(source: str, sink: str, index: Index) -> set[str]:
    """The nodes on paths from `source` (excluded) to `sink`, with the constants and weights they read."""

    def walk(start: str, step) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(step(name))
        return seen

    upstream = walk(sink, index.inputs)
    downstream = walk(source, lambda name: [user for user in index.readers(name) if user in upstream])
    return _with_constants(downstream - {source}, index) - {source}


def _with_constants(names: set[str], index: Index) -> set[str]:
    """The nodes and the constants and weights they read (through pass-through reads)."""
    result, stack = set(names), [parent for name in names for parent in index.inputs(name)]
    while stack:
        parent = stack.pop()
        if parent in index.constants and parent not in result:
            result.add(parent)
            stack.extend(index.inputs(parent))
    return result


def _region_around(core: str, index: Index, ops: frozenset[str]) -> Region | None:
    nodes = index.nodes
    forward, stack = set(), index.readers(core)
    while stack:
        name = stack.pop()
        if name not in forward and nodes[name].op in ops:
            forward.add(name)
            stack.extend(index.readers(name))
    # everything the core and the ops after it read, back through the region's ops (0.5 * x is a side branch)
    backward, stack = set(), [parent for name in forward | {core} for parent in index.inputs(name)]
    while stack:
        name = stack.pop()
        if name in backward or name in forward or name == core:
            continue
        backward.add(name)
        if nodes[name].op in ops and name not in index.constants:
            stack.extend(index.inputs(name))
    region = backward | forward | {core}
    reads = collections.Counter(parent for name in region for parent in index.inputs(name))
    shared = {name for name in backward if name not in index.constants and reads[name] >= 2}
    # x is the most upstream of them (a LayerNorm's mean is read twice too, and is computed from x)
    upstream = [name for name in shared if not (_ancestors_within(name, index, backward) - {name}) & shared]
    if len(upstream) != 1:
        return None
    x = upstream[0]
    own = region - _ancestors_within(x, index, backward)
    exits = [name for name in own if any(user not in own for user in index.readers(name))]
    if len(exits) != 1 or any(parent not in own | {x} for name in own for parent in index.inputs(name)):
        return None
    return Region(tensor_name(x), exits[0], frozenset(own))


def _ancestors_within(name: str, index: Index, within: set[str]) -> set[str]:
    """`name` and its ancestors inside `within`."""
    seen, stack = {name}, [name]
    while stack:
        for parent in index.inputs(stack.pop()):
            if parent in within and parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


# ---- roles -------------------------------------------------------------------------------------------
# Every node of a BERT classifier gets the role it plays, found from the structure above (attention sites,
# GELU and LayerNorm regions, the outputs), so precision rules and partition aliases mean the same on every
# exporter's graph. Nodes that play none (shape arithmetic, the signature's plumbing) have no entry.

ROLES = (
    "embedding",
    "mask_bias",
    "attention_projection",
    "attention_scores",
    "attention_softmax",
    "attention_context",
    "attention_output",
    "residual",
    "layer_norm",
    "ffn_in",
    "gelu",
    "ffn_out",
    "pooler",
    "classifier",
    "final_softmax",
)
ROLE_GROUPS = {
    "attention": (
        "attention_projection",
        "attention_scores",
        "attention_softmax",
        "attention_context",
        "attention_output",
    ),
    "ffn": ("ffn_in", "gelu", "ffn_out"),
}
MATMUL_OPS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum", "_FusedMatMul")
LAYOUT_OPS = ("Reshape", "Transpose", "Identity", "Cast", "ExpandDims", "Squeeze")


def role_matches(role: str | None, wanted: str) -> bool:
    """Whether a node's role is `wanted`, or one of the roles the group `wanted` names."""
    return role is not None and (role == wanted or role in ROLE_GROUPS.get(wanted, ()))


def node_roles(graph: Graph) -> dict[str, str]:
    index = Index.of(graph)
    roles: dict[str, str] = {}

    def tag(names, role: str) -> None:
        for name in names:
            roles.setdefault(name, role)

    mask_input = node_of(graph.inputs["input_mask"]) if "input_mask" in graph.inputs else None
    sources = value_sources(graph)
    layer_norms = find_layer_norms(graph, index)
    for region in layer_norms:  # NOTE: first: a LayerNorm's nodes are its own, whatever else reads them
        tag(region.nodes, "layer_norm")
    for site in find_gelus(graph, index):
        tag(site.nodes, "gelu")
        _tag_ffn(site, index, tag)
    if mask_input is not None:
        tag(
            (name for name, found in sources.items() if found == frozenset([mask_input]) and name != mask_input),
            "mask_bias",
        )
    for site, position in find_attention_sites(graph, sources):
        _tag_attention(site.name, position, index, tag)
    _tag_head(graph, index, layer_norms, tag)
    _tag_embedding(graph, index, layer_norms, sources, tag)
    return roles


def _follow(index: Index, start: str, until: tuple[str, ...]) -> str | None:
    """From `start`, forward through layout ops (a single reader each) to the first `until` op."""
    name = start
    for _ in range(16):
        readers = index.readers(name)
        hit = next((user for user in readers if index.nodes[user].op in until), None)
        if hit is not None:
            return hit
        layout = [user for user in readers if index.nodes[user].op in LAYOUT_OPS]
        if len(layout) != 1:
            return None
        name = layout[0]
    return None


def _bias_after(index: Index, matmul: str) -> str:
    """The bias add after a projection (BiasAdd, or Add of a weight), else the matmul itself."""
    readers = index.readers(matmul)
    if (
        len(readers) == 1
        and index.nodes[readers[0]].op in ("BiasAdd", "Add", "AddV2")
        and any(parent in index.constants for parent in index.inputs(readers[0]))
    ):
        return readers[0]
    return matmul


def _residual_input(index: Index, block_output: str) -> tuple[str, str] | None:
    """(the residual add after a block, the block's input it adds back)."""
    for user, position in index.users.get(block_output, ()):
        if user.op in ("Add", "AddV2") and position in (0, 1):
            return user.name, split_input(user.input[1 - position])[0]
    return None


def _tag_ffn(site: GeluSite, index: Index, tag) -> None:
    matmul = _follow(index, site.output, MATMUL_OPS)
    out = _bias_after(index, matmul) if matmul else None
    residual = _residual_input(index, out) if out else None
    if residual is None:
        return
    add, block_input = residual
    x = split_input(site.x)[0]
    tag((_between(x, out, index) | _with_constants({matmul}, index)) - site.nodes, "ffn_out")
    tag(_between(block_input, x, index) | {x}, "ffn_in")
    tag([add], "residual")


def _tag_attention(site: str, position: int, index: Index, tag) -> None:
    nodes = index.nodes
    softmax = next((user for user in index.readers(site) if nodes[user].op == "Softmax"), None)
    context = _follow(index, softmax, MATMUL_OPS) if softmax else None
    matmul = _follow(index, context, MATMUL_OPS) if context else None
    out = _bias_after(index, matmul) if matmul else None
    residual = _residual_input(index, out) if out else None
    if residual is None:
        return
    add, block_input = residual
    scores = index.inputs(site)[1 - position]
    while nodes[scores].op not in MATMUL_OPS and nodes[scores].op in ("Mul", "RealDiv", "Cast", "Identity"):
        scores = next(parent for parent in index.inputs(scores) if parent not in index.constants)
    tag(_between(matmul, out, index) | _with_constants({matmul}, index), "attention_output")
    tag([softmax], "attention_softmax")
    tag(_between(scores, site, index) | _with_constants({scores, site}, index), "attention_scores")
    tag(_between(context, matmul, index) - {matmul} | {context}, "attention_context")
    tag(_between(block_input, out, index), "attention_projection")
    tag([add], "residual")


def _tag_head(graph: Graph, index: Index, layer_norms: list[Region], tag) -> None:
    nodes = index.nodes
    probabilities = node_of(graph.outputs["probabilities"])
    while nodes[probabilities].op in ("Identity", "Cast"):
        probabilities = index.inputs(probabilities)[0]
    if nodes[probabilities].op != "Softmax":
        return
    tag([probabilities], "final_softmax")
    logits = index.inputs(probabilities)[0]
    tanh = logits
    while nodes[tanh].op != "Tanh":
        candidates = [parent for parent in index.inputs(tanh) if parent not in index.constants]
        if not candidates:
            return
        tanh = candidates[0]
    tag(_between(tanh, logits, index), "classifier")
    if layer_norms:
        last = layer_norms[-1].output
        pooler = _between(last, tanh, index) | {tanh}
        tag((name for name in pooler if not (nodes[name].op == "Reshape" and index.inputs(name)[0] == last)), "pooler")


def _tag_embedding(graph: Graph, index: Index, layer_norms: list[Region], sources, tag) -> None:
    if not layer_norms:
        return
    first = split_input(layer_norms[0].x)[0]
    lookups = {node_of(graph.inputs[key]) for key in ("input_ids", "segment_ids") if key in graph.inputs}
    stack, seen = [first], set()
    while stack:
        name = stack.pop()
        if name in seen or name in lookups:
            continue
        seen.add(name)
        if sources.get(name, frozenset()) & (lookups | {"weights"}) or name in index.constants:
            stack.extend(index.inputs(name))
    tag((name for name in seen if sources.get(name, frozenset()) & (lookups | {"weights"})), "embedding")
