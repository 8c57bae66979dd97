"""The length step's contract: the names it gives the nodes it adds, and how a target splits its graph there.

The step (trim_sequence_length.py, pack_tokens.py) computes, in the graph, how long the batch runs and cuts the
serving inputs to it; the targets (bertc/targets/serving.py, xla.py, stablehlo.py) split there to compile the body
per bucket, and partition_graph.py adds the pack mask as a crossing. Everything here reads a graph; nothing
rewrites one.
"""

from __future__ import annotations

from bertc.ir.graph import (
    LENGTH_SCOPE,
    PACK_SCOPE,
    Graph,
    GraphError,
    ancestors,
    const_value,
    copy_graph_def,
    keep_nodes,
    make_placeholder,
    new_graph_def,
    node_of,
    nodes_by_name,
    tensor_name,
)
from bertc.ir.lazy import tf

LENGTH = f"{LENGTH_SCOPE}/length"  # the width the batch runs at (int32 scalar)
REAL_LENGTH = f"{LENGTH_SCOPE}/real_length"  # the longest real row, before bucketing and fallback
BUCKET_INDEX = f"{LENGTH_SCOPE}/bucket_index"  # buckets only: which size ran (the last one on fallback)
SEQ = f"{LENGTH_SCOPE}/seq"  # the cut inputs' width, read by every former S: the one tensor the body depends on
SIZES = f"{LENGTH_SCOPE}/sizes"  # buckets, and pack at static shapes: the sizes, ascending, the full length last
# length=pack: the real tokens of every row gathered into one [T, H] matrix between the layers (the body's part)
PACK_MASK = f"{PACK_SCOPE}/mask"  # int32 [B, L]: the cut mask, or all ones when it is not right-padded 0/1
PACK_INDEX = f"{PACK_SCOPE}/index"  # int32 [T]: each real token's row of the [B*L, H] matrix
UNPACK_INDEX = f"{PACK_SCOPE}/unpack_index"  # int32 [B*L]: each position's row of the [T, H] matrix
FIRST_TOKENS = f"{PACK_SCOPE}/first_tokens"  # int32 [B]: each row's [CLS] in the [T, H] matrix
PACKED = f"{PACK_SCOPE}/hidden"  # the packed hidden states entering the first layer, [T, H]
# static shapes: the packed rows run at the next multiple of this int32 scalar (its node marks the padded build)
TOKEN_STEP = f"{PACK_SCOPE}/token_step"


def cut_name(key: str) -> str:
    """The node that holds serving input `key` cut to the batch's length."""
    return f"{LENGTH_SCOPE}/{key}"


def is_length_polymorphic(graph: Graph) -> bool:
    return any(node.name == LENGTH for node in graph.graph_def.node)


def is_packed(graph: Graph) -> bool:
    """length=pack: the layers run on the batch's real tokens only, one [T, H] matrix."""
    return any(node.name == PACKED for node in graph.graph_def.node)


def token_step_of(graph: Graph) -> int:
    """The token step a packed graph pads T to (static shapes), or 0 (T as it comes)."""
    node = next((node for node in graph.graph_def.node if node.name == TOKEN_STEP), None)
    return 0 if node is None else int(const_value(node))


def split_length(graph: Graph) -> tuple[Graph | None, Graph]:
    """(length part: serving inputs -> cut inputs + length + bucket index, body: cut inputs -> outputs).

    None and the graph unchanged when the graph was not made length-polymorphic. The body reads the
    cut inputs through Placeholders `[None, None]`, so a target can feed it inputs it cut itself
    (target=xla: statically, one bucket per compiled function).
    """
    if not is_length_polymorphic(graph):
        return None, graph
    cut = {key: cut_name(key) for key in graph.inputs}
    fetches = {
        **{key: tensor_name(name) for key, name in cut.items()},
        "length": tensor_name(LENGTH),
        "real_length": tensor_name(REAL_LENGTH),
    }
    if any(node.name == BUCKET_INDEX for node in graph.graph_def.node):
        fetches["bucket_index"] = tensor_name(BUCKET_INDEX)
    length_part = keep_nodes(graph, ancestors(graph.graph_def, fetches.values())).replace(outputs=fetches)

    body_def = new_graph_def()
    body_def.versions.CopyFrom(graph.graph_def.versions)
    body_def.library.CopyFrom(graph.graph_def.library)
    needed = ancestors(graph.graph_def, graph.outputs.values(), stops=cut.values())
    for node in graph.graph_def.node:
        if node.name in cut.values():
            body_def.node.append(make_placeholder(node.name, tf.int32, [None, None]))
        elif node.name in needed:
            body_def.node.add().CopyFrom(node)
    leaks = sorted(key for key, tensor in graph.inputs.items() if node_of(tensor) in needed)
    if leaks:
        raise GraphError(f"length: the model still reads serving input(s) {leaks} uncut; the cut does not hold.")
    body = graph.replace(  # the user's names and the int8 marks go with the body: it is what serves
        graph_def=body_def,
        weights={name: value for name, value in graph.weights.items() if name in needed},
        inputs={key: tensor_name(name) for key, name in cut.items()},
    )
    return length_part, body


def bucket_sizes_of(length_part: Graph) -> tuple[int, ...]:
    """The bucket sizes a length part dispatches on (length=buckets), or () for length=trim."""
    nodes = nodes_by_name(length_part.graph_def)
    return tuple(int(value) for value in const_value(nodes[SIZES]).ravel()) if SIZES in nodes else ()


def at_width(body: Graph, width: int) -> Graph:
    """The body of `split_length` with its cut inputs declared `[None, width]`: shape inference then gives
    every tensor (the partition's boundaries included) its static shape at that width, as one bucket runs it."""
    graph_def = copy_graph_def(body.graph_def)
    cut = {node_of(tensor) for tensor in body.inputs.values()}
    for node in graph_def.node:
        if node.name in cut:
            node.attr["shape"].shape.dim[1].size = width
    return body.replace(graph_def=graph_def)
