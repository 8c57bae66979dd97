"""A Graph -> facts about its BERT structure (attention sites, mask operands, LayerNorm epsilons), found by
structure, not by names: what the passes, the shape reader and the targets all ask of a graph."""

from __future__ import annotations

import collections
import dataclasses

from bertc.analysis.match import (
    Index,
    Match,
    Pattern,
    PatternNotFound,
    Variant,
    all_matches,
    constant,
    first_match,
    p,
    require_match,
    weight_behind,
)
from bertc.ir.graph import (
    LENGTH_SCOPE,
    PACK_SCOPE,
    Graph,
    GraphError,
    ancestors,
    const_value,
    descendants,
    node_of,
    nodes_by_name,
    split_input,
    tensor_name,
    through_identity,
)
from bertc.ir.ops import IDENTITY_OPS, LAYOUT_OPS, MATMUL_OPS

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


# ---- attention sites ---------------------------------------------------------------------------------
# Where each layer's mask meets its scores, as pattern variants matched at every Softmax (bertc/analysis/match.py).
# The mask operand is whatever is computed from input_mask alone; the scores come from QK^T, scaled by
# 1/sqrt(head_size) after it (a Mul or a RealDiv) or on the query before it.


@dataclasses.dataclass(frozen=True)
class AttentionSite:
    variant: str  # which spelling matched (SITE_VARIANTS)
    softmax: str
    node: str  # where the mask meets the scores: an Add, or a SelectV2 (a boolean mask)
    mask_position: int  # the mask operand's input position at `node`
    matmul: str  # QK^T: BatchMatMul or Einsum
    scale: str | None  # the Mul or RealDiv by 1/sqrt(head_size) (or its inverse), None when folded
    scale_on: str  # "scores" (after QK^T) | "query" (before it) | ""
    query: str  # the node the query projection's value comes from (before layout ops)
    remask: str | None = None  # keras-hub: SelectV2(mask, probabilities, 0) after the softmax

    @property
    def boolean(self) -> bool:
        return self.mask_position == 0 and self.variant.startswith("boolean")


def _is_zero(index: Index, name: str) -> bool:
    node = index.nodes[weight_behind(index, name)]
    return node.op == "Const" and not const_value(node).any()


def _site_variants(mask_input: str, sources) -> tuple[list[Variant], list[Variant]]:
    """(the site variants, matched at a Softmax; the re-mask variants, matched at a reader of one)."""
    mask_only = frozenset([mask_input])

    def is_mask(index: Index, name: str) -> bool:
        return sources.get(name) == mask_only

    def carries_scores(index: Index, name: str) -> bool:
        return bool(sources.get(name, frozenset()) - mask_only - {"weights"})

    mask = p(as_="mask", when=is_mask, describe=f"a tensor computed from {mask_input} alone")
    scores = p(as_="scores", when=carries_scores, describe="the attention scores")
    additive = p("Add|AddV2", scores, mask, swap=True, as_="site")
    zero = p(when=_is_zero, describe="a constant 0")
    remask = [Variant("probabilities re-masked to 0 (keras-hub)", p("SelectV2|Select", mask, p("Softmax"), zero))]
    return [
        Variant("additive mask (google-research, Model Garden)", p("Softmax", additive, as_="softmax")),
        Variant(
            "additive mask, then a constant shift (Hugging Face's stable_softmax)",
            p("Softmax", p("Add|AddV2", additive, constant(), swap=True), as_="softmax"),
        ),
        Variant(
            "boolean mask with SelectV2 (keras-hub)",
            p("Softmax", p("SelectV2|Select", mask, scores, constant(), as_="site"), as_="softmax"),
        ),
    ], remask


SCORE_VARIANTS = [
    Variant(
        "QK^T times a constant (google-research)",
        p("Mul", p(MATMUL_OPS, as_="matmul", skip=LAYOUT_OPS), constant(), swap=True, as_="scale", skip=LAYOUT_OPS),
    ),
    Variant(
        "QK^T over a constant (Hugging Face)",
        p("RealDiv", p(MATMUL_OPS, as_="matmul", skip=LAYOUT_OPS), constant(), as_="scale", skip=LAYOUT_OPS),
    ),
    Variant(
        "QK^T, the query scaled before it or not at all (keras-hub, Model Garden)",
        p(MATMUL_OPS, as_="matmul", skip=LAYOUT_OPS),
    ),
]
# The query projection a folded scale goes into, reached from the query (layout ops skipped).
PROJECTION_VARIANTS = [
    Variant(
        "dense: MatMul + BiasAdd (google-research; Hugging Face's Tensordot reshapes around the MatMul)",
        p(
            "BiasAdd",
            p("MatMul", None, constant(as_="kernel"), skip=("Reshape",)),
            constant(as_="bias"),
            skip=LAYOUT_OPS,
        ),
    ),
    Variant(
        "reshape-lowered einsum dense, 3-D kernel reshaped (keras-hub by tf.saved_model.save)",
        p(
            "Add|AddV2",
            p("BatchMatMulV2|BatchMatMul|MatMul", None, constant(as_="kernel"), skip=("Reshape",)),
            constant(as_="bias"),
            swap=True,
            skip=LAYOUT_OPS,
        ),
    ),
    Variant(
        "einsum dense with a 3-D kernel, bias by Add (keras-hub, Model Garden)",
        p("Add|AddV2", p("Einsum", None, constant(as_="kernel")), constant(as_="bias"), swap=True, skip=LAYOUT_OPS),
    ),
]
QUERY_SCALE = [
    Variant("query times a constant", p("Mul", p(as_="query"), constant(), swap=True, as_="scale", skip=LAYOUT_OPS))
]


# ---- embeddings ------------------------------------------------------------------------------------------
# The lookups of a BERT's three tables, matched at the nodes downstream of an input (words, token types) or
# anywhere (positions: computed from no input, or from its Shape only).

LOOKUP_VARIANTS = [
    Variant(
        "gather (google-research, Hugging Face, keras-hub, Model Garden)",
        p("GatherV2|Gather|ResourceGather", constant(as_="table")),
    ),
    Variant(
        "one-hot matmul (a TPU export, use_one_hot_embeddings; Model Garden's token types)",
        p("MatMul", p("OneHot"), constant(as_="table")),
    ),
]
POSITION_VARIANTS = [
    Variant("a slice of the table (google-research, keras-hub)", p("Slice", constant(as_="table"))),
    Variant("a strided slice of the table, then BroadcastTo (Model Garden)", p("StridedSlice", constant(as_="table"))),
    Variant(
        "a gather of a range (Hugging Face)",
        p("GatherV2|ResourceGather", constant(as_="table"), p("Range", skip=LAYOUT_OPS)),
    ),
]


def embedding_tables(
    graph: Graph, input_key: str | None, variants=LOOKUP_VARIANTS, index: Index | None = None
) -> list[str]:
    """The 2-D weights looked up (by `variants`) at the nodes computed from serving input `input_key`, in
    graph order; input_key None: at every node."""
    index = index or Index.of(graph)
    if input_key is None:
        candidates = None
    else:
        candidates = descendants(graph.graph_def, [node_of(graph.inputs[input_key])])
    tables = []
    for name, found in all_matches(index, variants):
        table = weight_behind(index, found["table"])
        if (candidates is None or name in candidates) and table in graph.weights and graph.weights[table].ndim == 2:
            tables.append(table)
    return list(dict.fromkeys(tables))


def find_attention_sites(graph: Graph, sources: dict[str, frozenset[str]] | None = None) -> list[AttentionSite]:
    """Every attention site, in graph order; raises (naming where matching stopped) if none is found.
    `sources`: the graph's value_sources when the caller has them."""
    mask_input = node_of(graph.inputs["input_mask"])
    sources = sources if sources is not None else value_sources(graph)
    index = Index.of(graph)
    variants, remask = _site_variants(mask_input, sources)
    softmaxes = [name for name, node in index.nodes.items() if node.op == "Softmax"]
    sites = [_site(index, found, remask) for name in softmaxes if (found := first_match(index, name, variants))]
    if not sites:
        reached = index.readers(mask_input)
        try:
            require_match(index, softmaxes[0] if softmaxes else mask_input, variants, "attention site")
        except PatternNotFound as error:
            raise GraphError(
                f"no attention site found: {error} The mask input {mask_input} is read by {reached or 'nothing'}."
            ) from None
    for site in sites:
        _check_mask_side(index.nodes, index.inputs(site.node)[site.mask_position], mask_input)
        if site.remask:
            _check_mask_side(index.nodes, index.inputs(site.remask)[0], mask_input)
    return sites


def _site(index: Index, found: Match, remask_variants: list[Variant]) -> AttentionSite:
    site = found["site"]
    position = index.inputs(site).index(found["mask"])
    scores = require_match(index, found["scores"], SCORE_VARIANTS, "attention scores")
    matmul = scores["matmul"]
    scale, scale_on = scores.get("scale"), "scores" if scores.get("scale") else ""
    query = index.inputs(matmul)[0]
    if scale is None:
        for operand in index.inputs(matmul)[:2]:
            if scaled := first_match(index, operand, QUERY_SCALE):
                scale, scale_on, query = scaled["scale"], "query", scaled["query"]
                break
    remask = next((name for name in index.readers(found["softmax"]) if first_match(index, name, remask_variants)), None)
    return AttentionSite(found.variant, found["softmax"], site, position, matmul, scale, scale_on, query, remask)


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


def layer_norm_epsilons(graph: Graph, index: Index | None = None) -> list[float]:
    """The epsilon of each LayerNorm (LAYER_NORM_VARIANTS), in graph order: the Const added to the variance
    before its Rsqrt."""
    index = index or Index.of(graph)
    found = (first_match(index, node.name, LAYER_NORM_VARIANTS) for node in graph.graph_def.node if node.op == "Rsqrt")
    epsilons = (index.nodes[weight_behind(index, match["epsilon"])] for match in found if match)
    return [float(const_value(node)) for node in epsilons if node.op == "Const"]


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
        "Neg",
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


def embedding_output(graph: Graph, index: Index | None = None) -> str:
    """The hidden states entering the first layer: the output of the LayerNorm no other LayerNorm precedes."""
    index = index or Index.of(graph)
    regions = find_layer_norms(graph, index)
    outputs = {region.output for region in regions}
    for region in regions:
        if not (ancestors(graph.graph_def, [region.x]) & outputs):
            return tensor_name(region.output)
    raise GraphError(
        "@embedding_output: no LayerNorm found to end the embeddings (looked for Rsqrt(Mean(...) + eps) "
        f"regions: {len(regions)} found); give the boundary as a tensor name instead."
    )


_MEAN = p("Mean", skip=IDENTITY_OPS)


def _variance_plus_epsilon(spread: Pattern) -> Pattern:
    return p("Rsqrt", p("Add|AddV2", p("Mean", spread), constant(as_="epsilon"), swap=True))


LAYER_NORM_VARIANTS = [  # matched at each Rsqrt: the variance of x, plus epsilon
    Variant(
        "moments: Mean(SquaredDifference(x, mean)) (google-research's contrib, Keras, Model Garden, HF)",
        _variance_plus_epsilon(p("SquaredDifference", p(as_="x"), _MEAN, as_="spread")),
    ),
    Variant("Mean(Square(x - mean))", _variance_plus_epsilon(p("Square", p("Sub", p(as_="x"), _MEAN, as_="spread")))),
]


def _layer_norm_at(rsqrt: str, index: Index) -> Region | None:
    found = first_match(index, rsqrt, LAYER_NORM_VARIANTS)
    if found is None:
        return None
    nodes, spread, x = index.nodes, found["spread"], found["x"]
    # forward from the Rsqrt, taking an op only when everything it reads is the LayerNorm's own (so the
    # residual add after it, which also reads the next block, is not)
    known = _between(x, rsqrt, index) | {x}
    # seeds: the Rsqrt's readers and what else reads the statistics (Keras' Neg(mean)), never x's own readers
    seeds = index.readers(rsqrt) + [user for name in known - {x} for user in index.readers(name) if user not in known]
    forward, stack = set(), seeds
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


def role_matches(role: str | None, wanted: str) -> bool:
    """Whether a node's role is `wanted`, or one of the roles the group `wanted` names."""
    return role is not None and (role == wanted or role in ROLE_GROUPS.get(wanted, ()))


def node_roles(graph: Graph) -> dict[str, str]:
    index = Index.of(graph)
    roles: dict[str, str] = {}

    mask_input = node_of(graph.inputs["input_mask"]) if "input_mask" in graph.inputs else None
    sources = value_sources(graph)

    def tag(names, role: str) -> None:
        for name in names:  # shape arithmetic (computed from Shape reads and constants only) plays no role
            if sources.get(name) or name in index.constants:
                roles.setdefault(name, role)

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
    for attention in find_attention_sites(graph, sources):
        _tag_attention(attention, index, tag)
    _tag_head(graph, index, layer_norms, tag)
    _tag_embedding(graph, index, layer_norms, sources, tag)
    return roles


def follow_layout(
    index: Index, start: str, until: tuple[str, ...], *, steps: int = 16, sole_reader: bool = False
) -> str | None:
    """From `start`, forward through layout ops, at most `steps` of them, to the first `until` op; else None.

    Each step takes the one layout reader; length=pack's gathers between [T, H] and [B*L, H] count as layout (they
    move rows the way a reshape moves them). With `sole_reader` it must be the node's only reader (length=pack
    rewires the path it finds, so nothing else may read it)."""
    name = start
    for _ in range(steps):
        readers = index.readers(name)
        hit = next((user for user in readers if index.nodes[user].op in until), None)
        if hit is not None:
            return hit
        layout = [user for user in readers if index.nodes[user].op in LAYOUT_OPS or user.startswith(PACK_SCOPE + "/")]
        if len(layout) != 1 or (sole_reader and len(readers) != 1):
            return None
        name = layout[0]
    return None


def _bias_after(index: Index, matmul: str) -> str:
    """The bias add after a projection (BiasAdd, or Add of a weight; through Hugging Face's Tensordot reshape),
    else the matmul itself."""
    readers = index.readers(matmul)
    if len(readers) == 1 and index.nodes[readers[0]].op == "Reshape":
        readers = index.readers(readers[0])
    if (
        len(readers) == 1
        and index.nodes[readers[0]].op in ("BiasAdd", "Add", "AddV2")
        and any(parent in index.constants for parent in index.inputs(readers[0]))
    ):
        return readers[0]
    return matmul


def _residual_input(index: Index, block_output: str) -> tuple[str, str] | None:
    """(the residual add after a block, the block's input it adds back), through dropout's Identity."""
    while (readers := index.readers(block_output)) and len(readers) == 1 and index.nodes[readers[0]].op == "Identity":
        block_output = readers[0]
    for user, position in index.users.get(block_output, ()):
        if user.op in ("Add", "AddV2") and position in (0, 1):
            return user.name, split_input(user.input[1 - position])[0]
    return None


def _tag_ffn(site: GeluSite, index: Index, tag) -> None:
    matmul = follow_layout(index, site.output, MATMUL_OPS)
    if matmul is None:
        return
    out = _bias_after(index, matmul)
    residual = _residual_input(index, out)
    if residual is None:
        return
    add, block_input = residual
    x = split_input(site.x)[0]
    tag((_between(x, out, index) | _with_constants({matmul}, index)) - site.nodes, "ffn_out")
    tag(_between(block_input, x, index) | {x}, "ffn_in")
    tag([add], "residual")


def _tag_attention(site: AttentionSite, index: Index, tag) -> None:
    context = follow_layout(index, site.remask or site.softmax, MATMUL_OPS)
    matmul = follow_layout(index, context, MATMUL_OPS) if context else None
    if context is None or matmul is None:
        return
    out = _bias_after(index, matmul)
    residual = _residual_input(index, out)
    if residual is None:
        return
    add, block_input = residual
    tag(_between(matmul, out, index) | _with_constants({matmul}, index), "attention_output")
    tag([site.softmax, *([site.remask] if site.remask else [])], "attention_softmax")
    scores = _between(site.matmul, site.softmax, index) | _with_constants({site.matmul, site.node}, index)
    tag(scores, "attention_scores")
    tag(_between(context, matmul, index) - {matmul} | {context}, "attention_context")
    tag(_between(block_input, out, index), "attention_projection")
    tag([add], "residual")


def _tag_head(graph: Graph, index: Index, layer_norms: list[Region], tag) -> None:
    nodes = index.nodes
    probabilities = through_identity(nodes, node_of(graph.outputs["probabilities"]), ("Identity", "Cast")).name
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
