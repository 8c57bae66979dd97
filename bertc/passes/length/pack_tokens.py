"""A length-cut Graph (length=trim's, [B, L] inputs) -> the same graph whose layers run on one [T, H] matrix: the
real tokens of every row, packed; attention still runs per row at the batch's length L.

The google-research layout keeps the hidden states as a [B*L, H] matrix between the layers. Every op
there works row by row (dense layers, biases, residual adds, LayerNorms over the last axis, GELU), so
it runs unchanged on the real rows only. Attention needs the rows of each sequence side by side: the
query, key and value projections are scattered back to [B*L, H] by a gather (a padding position reads
a real token of its own row; its key is masked by the attention bias and its query's context is
dropped), and the context is packed again before the output projection. The pooler reads each row's
first token from the packed matrix.

    embeddings --Reshape--> X [B*L, H] --Gather(index)--> [T, H] --> Q/K/V dense --Gather(unpack)--> [B*L, H]
        --> Reshape [B, L, heads, size] ... softmax ... context [B*L, H] --Gather(index)--> [T, H] --> output
        dense, residual, LayerNorm, FFN, ... --> last layer [T, H] --Gather(first_tokens)--> [B, H] --> pooler

The indices come from the cut input_mask in the body (not from the length part), through PACK_MASK:
the cut mask when it is right-padded 0/1 with a real first token in every row, else all ones (trim's
fallback to the full length: every position is a row, exactly the original computation).

For a target that compiles static shapes (`token_step` > 0; the length step then buckets L as
length=buckets does), T is rounded up to the next multiple of `token_step`, at most B*L, the flat mask's
size: PACK_INDEX gets pad entries reading flat row 0 (row 0's [CLS], a real token, so every pad row stays
finite). No gather reads a pad row back: UNPACK_INDEX and FIRST_TOKENS point at real rows only, and every op
between them works row by row, so pad rows cannot reach a real one. The target computes PACK_INDEX outside
its compiled function (dispatch.py), which then sees [T_bucket] as a static shape.

    index [T] --Pad [0, min(ceil(T/step)*step, B*L) - T] with 0--> PACK_INDEX [T_bucket]
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from bertc.analysis.match import Index
from bertc.analysis.structure import embedding_output, find_attention_sites, find_layer_norms, follow_layout
from bertc.ir.graph import (
    PACK_SCOPE,
    Graph,
    GraphError,
    const_value,
    copy_graph_def,
    element_node,
    input_ref,
    make_const,
    make_node,
    node_of,
    nodes_by_name,
    output_dtype,
    prune_to_outputs,
    reach,
    split_input,
    static_shapes,
    tensor_name,
)
from bertc.ir.lazy import tf
from bertc.ir.ops import LAYOUT_OPS, MATMUL_OPS
from bertc.passes import PassResult
from bertc.passes.length.contract import (
    FIRST_TOKENS,
    PACK_INDEX,
    PACK_MASK,
    PACKED,
    TOKEN_STEP,
    UNPACK_INDEX,
    cut_name,
)

if TYPE_CHECKING:
    from bertc.ir.graph import NodeDef

FIRST_TOKEN_ROWS = f"{PACK_SCOPE}/first_token_rows"  # [B, H]: each row's [CLS] hidden state, the pooler's input
# What may run on the packed [T, H] matrix: ops that compute each row from that row alone.
ROW_OPS = frozenset(
    {
        *("MatMul", "_FusedMatMul", "BiasAdd", "Add", "AddV2", "Sub", "Mul", "RealDiv", "Maximum", "Minimum"),
        *("Mean", "SquaredDifference", "Square", "Sqrt", "Rsqrt", "Reciprocal", "Neg", "Pow"),
        *("Tanh", "Erf", "Erfc", "Sigmoid", "Relu", "Identity", "Cast"),
    }
)
# From the last layer's output to the pooler's dense layer: the first token taken by a slice, through layout.
FIRST_TOKEN_OPS = (*LAYOUT_OPS, "StridedSlice", "Slice")
REAL_INDEX = f"{PACK_SCOPE}/real_index"  # int32 [T]: PACK_INDEX before the padding (static shapes only)


@dataclasses.dataclass(frozen=True)
class PackSites:
    """Where the packed matrix starts, where attention scatters it back to rows, and where it ends."""

    entry: str  # the [B*L, H] hidden states entering the first layer
    unpack: tuple[tuple[str, int], ...]  # (reader, input position): a projection [B*L, H] read by attention's layout
    pack: tuple[tuple[str, int], ...]  # (output projection, input position): the context [B*L, H]
    pooler: tuple[str, int]  # (pooler's dense layer, input position): the first token of each row
    last: str  # the last layer's output, [B*L, H]


def pack_tokens(graph: Graph, token_step: int = 0) -> PassResult:
    """Pack a graph that the length step cut; raises GraphError naming what was not recognised.

    token_step > 0 (static shapes): the packed matrix has T rounded up to a multiple of it (at most B*L) rows."""
    index = Index.of(graph)
    shapes = static_shapes(graph)
    sites = _find_pack_sites(graph, index, shapes)
    graph_def = copy_graph_def(graph.graph_def)
    nodes = nodes_by_name(graph_def)
    dtype = tf.as_dtype(output_dtype(nodes[node_of(sites.entry)], split_input(sites.entry)[1]))
    graph_def.node.extend(_index_nodes(token_step))
    graph_def.node.append(_gather(PACKED, sites.entry, PACK_INDEX, dtype))
    for node in graph_def.node:
        if node.name != PACKED:
            for position, ref in enumerate(node.input):
                if ref == input_ref(sites.entry):
                    node.input[position] = PACKED
    for kind, edges, indices in (("unpack", sites.unpack, UNPACK_INDEX), ("pack", sites.pack, PACK_INDEX)):
        for reader, position in edges:
            consumer = nodes[reader]
            name = f"{PACK_SCOPE}/{kind}/{reader}"
            graph_def.node.append(_gather(name, consumer.input[position], indices, dtype))
            consumer.input[position] = name
    pooler, position = sites.pooler
    graph_def.node.append(_gather(FIRST_TOKEN_ROWS, input_ref(sites.last), FIRST_TOKENS, dtype))
    nodes[pooler].input[position] = FIRST_TOKEN_ROWS
    result = prune_to_outputs(graph.replace(graph_def=graph_def))
    _check_packed_region(result)
    return PassResult(result, pack_matches(result))


def pack_matches(graph: Graph) -> dict[str, int]:
    """What the packing rewired, counted on a packed graph (so that a second run reports the same)."""
    names = [node.name for node in graph.graph_def.node]
    return {
        "packed_inputs": sum(name == PACKED for name in names),
        "attention_unpacks": sum(name.startswith(f"{PACK_SCOPE}/unpack/") for name in names),
        "context_packs": sum(name.startswith(f"{PACK_SCOPE}/pack/") for name in names),
        "first_token_gathers": sum(name == FIRST_TOKEN_ROWS for name in names),
    }


def _rank(shapes, name: str) -> int | None:
    shape = shapes.get(name if ":" in name else tensor_name(name))
    return None if shape is None else shape.rank


def _refuse(what: str) -> GraphError:
    return GraphError(
        f"length=pack: {what} bertc packs the google-research layout, where the hidden states are a "
        "[B*S, H] matrix between the layers and attention reshapes them to [B, S, heads, size]; this graph "
        "does not have it there. Use length=trim (or buckets) for this model."
    )


def _find_pack_sites(graph: Graph, index: Index, shapes) -> PackSites:
    entry = _matrix_after(index, shapes, split_input(embedding_output(graph, index))[0])
    unpack, pack = [], []
    for site in find_attention_sites(graph):
        context = follow_layout(index, site.remask or site.softmax, MATMUL_OPS, steps=8, sole_reader=True)
        if context is None:
            raise _refuse(f"no context matmul follows the softmax {site.softmax}.")
        query, key = index.inputs(site.matmul)[:2]
        value = next(name for name in index.inputs(context) if name != (site.remask or site.softmax))
        unpack += [_rows_edge(index, shapes, operand, site.matmul) for operand in (query, key, value)]
        output = follow_layout(index, context, MATMUL_OPS, steps=8, sole_reader=True)
        if output is None:
            raise _refuse(f"no output projection follows the attention context {context}.")
        position = _data_position(index, output)
        if _rank(shapes, index.nodes[output].input[position]) != 2:
            raise _refuse(f"the attention output projection {output} does not read a [rows, H] matrix.")
        pack.append((output, position))
    last = split_input(find_layer_norms(graph, index)[-1].output)[0]
    if _rank(shapes, last) != 2:
        raise _refuse(f"the last layer's output {last} is not a [rows, H] matrix.")
    return PackSites(entry, tuple(unpack), tuple(pack), _pooler_edge(index, last), tensor_name(last))


def _matrix_after(index: Index, shapes, start: str) -> str:
    """The embedding output as the [B*L, H] matrix the first layer reads: itself, or the reshape after it."""
    name = start
    for _ in range(4):
        if _rank(shapes, name) == 2:
            return tensor_name(name)
        readers = [user for user in index.readers(name) if index.nodes[user].op in LAYOUT_OPS]
        if len(readers) != 1:
            break
        name = readers[0]
    raise _refuse(
        f"the hidden states entering the first layer ({name}) have rank {_rank(shapes, name)} and no reshape to "
        "a [rows, H] matrix follows them: the layers keep a [B, S, H] layout (the einsum or Tensordot dense "
        "layers of keras-hub, Model Garden and Hugging Face), which bertc does not pack yet."
    )


def _rows_edge(index: Index, shapes, operand: str, where: str) -> tuple[str, int]:
    """From an attention operand back through layout ops to the edge where a [B*L, H] projection enters them."""
    reader, name = None, operand
    for _ in range(8):
        if _rank(shapes, name) == 2:
            if reader is None:
                break
            return reader, 0
        if index.nodes[name].op not in LAYOUT_OPS:
            break
        reader, name = name, index.inputs(name)[0]
    raise _refuse(f"the operand {operand} of {where} is not a [rows, H] projection reshaped per row (at {name}).")


def _data_position(index: Index, node: str) -> int:
    """The input position of a matmul's activation (the one that is not a weight or constant)."""
    inputs = index.inputs(node)
    positions = [position for position, name in enumerate(inputs[:2]) if name not in index.constants]
    if len(positions) != 1:
        raise _refuse(f"{node} does not multiply one activation by a weight.")
    return positions[0]


def _pooler_edge(index: Index, last: str) -> tuple[str, int]:
    """The pooler's dense layer, reached from the last layer's output by layout ops and a first-token slice."""
    name, sliced = last, False
    for _ in range(8):
        readers = index.readers(name)
        if len(readers) != 1:
            raise _refuse(f"the last layer's output is read by {readers or 'nothing'} at {name}, not the pooler alone.")
        reader = index.nodes[readers[0]]
        if reader.op in MATMUL_OPS and sliced:
            return reader.name, _data_position(index, reader.name)
        if reader.op not in FIRST_TOKEN_OPS:
            break
        if reader.op in ("StridedSlice", "Slice"):
            begin = index.nodes[split_input(reader.input[1])[0]]
            if begin.op != "Const" or const_value(begin).any():
                raise _refuse(f"{reader.name} slices the last layer at {begin.name}, not at the first token.")
            sliced = True
        name = reader.name
    raise _refuse(f"no pooler reading each row's first token follows the last layer (stopped at {name}).")


def _gather(name: str, params: str, indices: str, dtype) -> NodeDef:
    return make_node(
        "GatherV2",
        name,
        [params, indices, f"{PACK_SCOPE}/axis_0"],
        Tparams=dtype,
        Tindices=tf.int32,
        Taxis=tf.int32,
        batch_dims=0,
    )


def _index_nodes(token_step: int) -> list[NodeDef]:
    """PACK_MASK from the cut mask, then the gather indices from PACK_MASK alone."""
    nodes = _pack_mask_nodes() + _gather_index_nodes(REAL_INDEX if token_step else PACK_INDEX)
    return nodes + (_padded_index_nodes(token_step) if token_step else [])


def _const(name: str, value) -> NodeDef:
    return make_const(f"{PACK_SCOPE}/{name}", np.asarray(value, np.int32))


def _width(name: str, source: str) -> list[NodeDef]:
    """The [B, L] tensor's L, as an int32 scalar named `name`."""
    int32, s = tf.int32, PACK_SCOPE
    return [
        make_node("Shape", f"{s}/{name}_shape", [source], T=int32, out_type=int32),
        element_node(f"{s}/{name}", f"{s}/{name}_shape", f"{s}/axis_1", f"{s}/axis_2", f"{s}/step_1"),
    ]


def _pack_mask_nodes() -> list[NodeDef]:
    """PACK_MASK: the cut mask if each row is 1s then 0s with at least one 1 (it equals the prefix of its row
    sum), else all ones (trim fell back to the full length: every position is a row)."""
    int32, s, mask = tf.int32, PACK_SCOPE, cut_name("input_mask")
    return [
        _const("axis_0", 0),
        _const("axis_1", [1]),
        _const("axis_2", [2]),
        _const("step_1", [1]),
        _const("zero", 0),
        _const("one", 1),
        _const("axes_01", [0, 1]),
        _const("flat", [-1]),
        *_width("mask_width", mask),
        make_node("Sum", f"{s}/mask_rows", [mask, f"{s}/one"], keep_dims=False, T=int32, Tidx=int32),
        make_node("Range", f"{s}/mask_positions", [f"{s}/zero", f"{s}/mask_width", f"{s}/one"], Tidx=int32),
        make_node("ExpandDims", f"{s}/mask_positions_row", [f"{s}/mask_positions", f"{s}/zero"], T=int32, Tdim=int32),
        make_node("ExpandDims", f"{s}/mask_rows_column", [f"{s}/mask_rows", f"{s}/one"], T=int32, Tdim=int32),
        make_node("Less", f"{s}/prefix", [f"{s}/mask_positions_row", f"{s}/mask_rows_column"], T=int32),
        make_node("Cast", f"{s}/prefix_int", [f"{s}/prefix"], SrcT=tf.bool, DstT=int32, Truncate=False),
        make_node("Equal", f"{s}/is_prefix", [mask, f"{s}/prefix_int"], T=int32, incompatible_shape_error=True),
        make_node("All", f"{s}/all_prefix", [f"{s}/is_prefix", f"{s}/axes_01"], keep_dims=False, Tidx=int32),
        make_node("Min", f"{s}/shortest", [f"{s}/mask_rows", f"{s}/zero"], keep_dims=False, T=int32, Tidx=int32),
        make_node("GreaterEqual", f"{s}/rows_real", [f"{s}/shortest", f"{s}/one"], T=int32),
        make_node("LogicalAnd", f"{s}/packable", [f"{s}/all_prefix", f"{s}/rows_real"]),
        make_node("OnesLike", f"{s}/ones", [mask], T=int32),
        make_node("SelectV2", PACK_MASK, [f"{s}/packable", mask, f"{s}/ones"], T=int32),
    ]


def _gather_index_nodes(pack_index: str) -> list[NodeDef]:
    """PACK_INDEX [T], UNPACK_INDEX [B*L] and FIRST_TOKENS [B], from PACK_MASK alone (a partition can cut there)."""
    int32, s = tf.int32, PACK_SCOPE
    return [
        make_node("Sum", f"{s}/lengths", [PACK_MASK, f"{s}/one"], keep_dims=False, T=int32, Tidx=int32),
        make_node(
            "Cumsum", FIRST_TOKENS, [f"{s}/lengths", f"{s}/zero"], T=int32, Tidx=int32, exclusive=True, reverse=False
        ),
        # each real position's flat row, in row-major order: row b's tokens follow row b-1's
        make_node("Reshape", f"{s}/flat_mask", [PACK_MASK, f"{s}/flat"], T=int32, Tshape=int32),
        make_node("Cast", f"{s}/flat_real", [f"{s}/flat_mask"], SrcT=int32, DstT=tf.bool, Truncate=False),
        make_node("Where", f"{s}/where", [f"{s}/flat_real"], T=tf.bool),
        make_node("Reshape", f"{s}/where_flat", [f"{s}/where", f"{s}/flat"], T=tf.int64, Tshape=int32),
        make_node("Cast", pack_index, [f"{s}/where_flat"], SrcT=tf.int64, DstT=int32, Truncate=False),
        # position l of row b reads packed row first_tokens[b] + min(l, length[b] - 1): padding reads a real token
        *_width("width", PACK_MASK),
        make_node("Range", f"{s}/positions", [f"{s}/zero", f"{s}/width", f"{s}/one"], Tidx=int32),
        make_node("ExpandDims", f"{s}/positions_row", [f"{s}/positions", f"{s}/zero"], T=int32, Tdim=int32),
        make_node("Sub", f"{s}/last_position", [f"{s}/lengths", f"{s}/one"], T=int32),
        make_node("ExpandDims", f"{s}/last_column", [f"{s}/last_position", f"{s}/one"], T=int32, Tdim=int32),
        make_node("Minimum", f"{s}/clamped", [f"{s}/positions_row", f"{s}/last_column"], T=int32),
        make_node("ExpandDims", f"{s}/first_column", [FIRST_TOKENS, f"{s}/one"], T=int32, Tdim=int32),
        make_node("AddV2", f"{s}/unpack_rows", [f"{s}/clamped", f"{s}/first_column"], T=int32),
        make_node("Reshape", UNPACK_INDEX, [f"{s}/unpack_rows", f"{s}/flat"], T=int32, Tshape=int32),
    ]


def _padded_index_nodes(token_step: int) -> list[NodeDef]:
    """PACK_INDEX: REAL_INDEX padded with 0 (a real token) to min(ceil(T / token_step) * token_step, B*L) entries."""
    int32, s = tf.int32, PACK_SCOPE
    return [
        make_const(TOKEN_STEP, np.asarray(token_step, np.int32)),
        _const("step_less_one", token_step - 1),
        make_node("Size", f"{s}/tokens", [REAL_INDEX], T=int32, out_type=int32),
        make_node("Size", f"{s}/positions_all", [f"{s}/flat_mask"], T=int32, out_type=int32),
        make_node("AddV2", f"{s}/tokens_up", [f"{s}/tokens", f"{s}/step_less_one"], T=int32),
        make_node("FloorDiv", f"{s}/token_steps", [f"{s}/tokens_up", TOKEN_STEP], T=int32),
        make_node("Mul", f"{s}/tokens_rounded", [f"{s}/token_steps", TOKEN_STEP], T=int32),
        make_node("Minimum", f"{s}/token_bucket", [f"{s}/tokens_rounded", f"{s}/positions_all"], T=int32),
        make_node("Sub", f"{s}/pad_rows", [f"{s}/token_bucket", f"{s}/tokens"], T=int32),
        make_node("Pack", f"{s}/pad_pair", [f"{s}/zero", f"{s}/pad_rows"], T=int32, N=2, axis=0),
        _const("pad_shape", [1, 2]),
        make_node("Reshape", f"{s}/paddings", [f"{s}/pad_pair", f"{s}/pad_shape"], T=int32, Tshape=int32),
        make_node("Pad", PACK_INDEX, [REAL_INDEX, f"{s}/paddings"], T=int32, Tpaddings=int32),
    ]


def _check_packed_region(graph: Graph) -> None:
    """Every op between the packing and the gathers back must work row by row on [T, H], with constants only
    beside it (else a padded tensor would meet a packed one, or a Shape would read T as B*L)."""
    index = Index.of(graph)
    nodes = index.nodes
    entries = [PACKED, *(name for name in nodes if name.startswith(f"{PACK_SCOPE}/pack/"))]
    exits = {name for name in nodes if name.startswith(f"{PACK_SCOPE}/unpack/")} | {FIRST_TOKEN_ROWS}
    region = reach(entries, index.readers, exits)
    outputs = {node_of(tensor) for tensor in graph.outputs.values()}
    for name in sorted(region - set(entries) - exits):
        node = nodes[name]
        if node.op not in ROW_OPS or name in outputs:
            raise _refuse(f"{name} ({node.op}) reads the packed [T, H] matrix but is not a row-wise op.")
        for position, parent in enumerate(index.inputs(name)):
            if parent in region:
                continue
            value = const_value(nodes[parent]) if nodes[parent].op == "Const" else None
            if parent not in index.constants:
                raise _refuse(f"{name} ({node.op}) adds {parent}, a tensor that is not packed, to the packed matrix.")
            if node.op == "Mean" and position == 1 and value is not None and set(value.ravel().tolist()) - {-1, 1}:
                raise _refuse(f"{name} reduces axis {value.tolist()} of the packed matrix, not its last axis.")
