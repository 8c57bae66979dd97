"""Graph -> the same graph made length-polymorphic: it runs each batch only as long as its longest real row.

The serving signature stays `[batch, S]` (padded inputs, drop-in for the original). In the graph,
the batch's real length L comes from `input_mask` (the largest row sum); the inputs are cut to
`[:, :L]` (`trim`) or to the smallest configured bucket that holds L (`buckets`) before anything
reads them. Every constant that bakes S into a shape (the reshapes [B,S,H], [B*S,H] and
[B,S,heads,size], the position-table Slice [S,-1], the mask bias [-1,1,1,S], a ones-Fill) reads the
cut width instead. A mask that is not right-padded 0/1 with at least one real token per row (a 1
after a 0, an all-padding row, other values) makes L = S, so such a batch runs exactly as before.

    input_mask --> ok? (binary, right-padded, row 0 real) --+
              +--> max(row sums) -> [bucket] --------------> length = ok ? L : S
    input_ids/input_mask/segment_ids --Slice[:, :length]--> bertc/length/<input> --> the model
    Shape(bertc/length/input_mask)[1] = bertc/length/seq --> every former S in a shape

Padded positions get a -10000 bias before the softmax, so exp underflows to exactly 0 in float32:
cutting them changes nothing `[CLS]` sees beyond matmul round-off.

`pack` cuts as `trim` does, then packs the real tokens of all rows into one [T, H] matrix between the
layers (pack_tokens.py). It stays this step, not a pass of its own: a config group has
one pass, and packing needs the cut (the batch's length L for attention, the cut mask for the indices).
On a target that compiles static shapes (static_shapes, derived from the target) pack buckets L as
`buckets` does and pads the packed row count to a multiple of `token_step` (pack_tokens.py).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from bertc.errors import ConfigError
from bertc.ir.graph import (
    LENGTH_SCOPE,
    Graph,
    GraphError,
    const_value,
    copy_graph_def,
    data_inputs,
    descendants,
    element_node,
    input_ref,
    make_const,
    make_node,
    node_of,
    nodes_by_name,
    prune_to_outputs,
    split_input,
    static_shapes,
    tensor_name,
    through_identity,
)
from bertc.ir.lazy import tf
from bertc.passes import Condition, Pass, PassResult
from bertc.passes.length.contract import (
    BUCKET_INDEX,
    LENGTH,
    REAL_LENGTH,
    SEQ,
    SIZES,
    bucket_sizes_of,
    cut_name,
    is_length_polymorphic,
    is_packed,
    token_step_of,
)
from bertc.passes.length.modes import check_length_target
from bertc.passes.length.pack_tokens import pack_matches, pack_tokens
from bertc.schema import bounded, choice, derived

if TYPE_CHECKING:
    from bertc.ir.graph import NodeDef

SCOPE = LENGTH_SCOPE
MODES = ("trim", "buckets", "pack")
# A shape operand reaches its constants through these; anything else is arithmetic on values, not a shape.
SHAPE_PATH_OPS = ("Pack", "Mul", "ConcatV2", "Cast", "Identity")
# (op, input position) that is a shape or size: the constants behind it that hold S are sequence lengths.
SHAPE_OPERANDS = {("Reshape", 1), ("Slice", 2), ("Fill", 0), ("BroadcastTo", 1), ("Tile", 1), ("Range", 1)}


@dataclasses.dataclass(frozen=True)
class LengthParams:
    mode: str = choice("full", ("full", *MODES))  # full: the step does not run
    # buckets, and pack on a static-shape target (the batch's longest row); sizes above S are dropped, S is added
    sizes: tuple[int, ...] = bounded((32, 64, 96, 128), 1, 1 << 16, filled=True, item="size")
    # pack on a static-shape target: the packed rows T run at the next multiple of token_step (at most B*L)
    token_step: int = bounded(64, 1, 1 << 16)
    static_shapes: bool = derived(False)  # the target compiles static shapes (xla): pack buckets L and T


def bucket_sizes(sizes: tuple[int, ...], seq_len: int) -> tuple[int, ...]:
    """The buckets a graph of length `seq_len` gets: the configured sizes below it, then the full length."""
    return tuple(sorted({size for size in sizes if 0 < size < seq_len} | {seq_len}))


def trim_sequence_length(graph: Graph, params: LengthParams) -> PassResult:
    if params.mode not in MODES:
        raise ConfigError(f"length mode {params.mode!r} is not valid; choose one of: full, {', '.join(MODES)}.")
    if params.mode == "buckets" and (not params.sizes or min(params.sizes) < 1):
        raise ConfigError(f"length.sizes={list(params.sizes)} needs at least one size, each >= 1.")
    for key in ("input_ids", "input_mask", "segment_ids"):
        if key not in graph.inputs:
            raise GraphError(f"length: the graph has no serving input {key}; it has {sorted(graph.inputs)}.")
    nodes = nodes_by_name(graph.graph_def)
    mask_node = nodes[node_of(graph.inputs["input_mask"])]
    seq_len = mask_node.attr["shape"].shape.dim[-1].size
    if seq_len < 1:
        raise GraphError(f"length: input_mask ({mask_node.name}) has no static sequence length to cut from.")
    static_pack = params.mode == "pack" and params.static_shapes
    sizes = bucket_sizes(params.sizes, seq_len) if params.mode == "buckets" or static_pack else ()
    if is_length_polymorphic(graph):
        return _already_applied(graph, sizes, params.mode, params.token_step if static_pack else 0)
    _refuse_ambiguous_length(graph, seq_len)

    shapes = static_shapes(graph)
    graph_def = copy_graph_def(graph.graph_def)
    for node in graph_def.node:
        # The exporter's recorded shapes say S; TensorFlow's import would trust them over inference.
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
    shape_uses = _sequence_constant_uses(graph_def, seq_len)
    if not shape_uses:
        raise GraphError(
            f"length: no shape constant holds the sequence length {seq_len}; nothing follows the cut, so "
            "the graph is not a BERT encoder bertc knows. Keep length=full."
        )
    graph_def.node.extend(_length_nodes(graph, seq_len, sizes))
    cut_refs = {input_ref(graph.inputs[key]): cut_name(key) for key in graph.inputs}
    for node in graph_def.node:
        if node.name.startswith(SCOPE + "/"):
            continue
        for position, name in enumerate(node.input):
            if name in cut_refs:
                node.input[position] = cut_refs[name]
    rewired = _rewire_sequence_constants(graph_def, shape_uses, seq_len, shapes)
    result = prune_to_outputs(graph.replace(graph_def=graph_def))
    _check_no_static_length(result, seq_len)
    if params.mode == "pack":
        packed = pack_tokens(result, params.token_step if static_pack else 0).graph
        return PassResult(packed, {**_cut_matches(packed, sizes), **pack_matches(packed)})
    matches = {"sequence_constants": rewired, "inputs_cut": len(cut_refs)}
    if sizes:
        matches["buckets"] = len(sizes)
    return PassResult(result, matches)


def _already_applied(graph: Graph, sizes: tuple[int, ...], mode: str, token_step: int) -> PassResult:
    present = bucket_sizes_of(graph)
    packed = is_packed(graph)
    step = token_step_of(graph)
    if present != sizes or packed != (mode == "pack") or step != token_step:
        was = _mode_label("pack" if packed else "buckets" if present else "trim", present, step)
        wanted = _mode_label(mode, sizes, token_step)
        raise GraphError(
            f"length: the graph is already length-polymorphic (length={was}); it cannot be cut again to "
            f"length={wanted}. Run the length step once."
        )
    return PassResult(graph, {**_cut_matches(graph, sizes), **(pack_matches(graph) if packed else {})})


def _mode_label(mode: str, sizes: tuple[int, ...], token_step: int) -> str:
    if mode == "pack":
        return f"pack, buckets {list(sizes)}, token_step {token_step}" if token_step else "pack"
    return f"buckets {list(sizes)}" if sizes else mode


def _cut_matches(graph: Graph, sizes: tuple[int, ...]) -> dict[str, int]:
    """The cut's match counts, read back from a length-polymorphic graph."""
    rewired = sum(
        1
        for node in graph.graph_def.node
        if not node.name.startswith(SCOPE + "/")
        for ref in data_inputs(node)
        if ref == SEQ or ref.startswith((f"{SCOPE}/shapes/", f"{SCOPE}/seq_of/"))
    )
    matches = {"sequence_constants": rewired, "inputs_cut": len(graph.inputs)}
    if sizes:
        matches["buckets"] = len(sizes)
    return matches


def _refuse_ambiguous_length(graph: Graph, seq_len: int) -> None:
    """S must differ from every other dimension that shapes carry, or a constant S could mean either."""
    nodes = nodes_by_name(graph.graph_def)
    tables = set()
    for node in graph.graph_def.node:
        if node.op in ("GatherV2", "Slice"):
            # a training export reads weights through Identity
            tables.add(through_identity(nodes, node_of(node.input[0]), ("Identity",)).name)
    dims = {int(graph.weights[name].shape[-1]) for name in tables if name in graph.weights}  # the hidden size
    for node in graph.graph_def.node:
        if node.op == "Reshape":
            elements = _shape_elements(nodes, nodes[split_input(node.input[1])[0]])
            if len(elements) == 4 and elements[1] == seq_len:  # [B, S, heads, head_size]
                dims |= {value for value in elements[2:] if value is not None}
    if seq_len in dims:
        raise GraphError(
            f"length: the sequence length {seq_len} equals another dimension that this model's shapes carry "
            f"(hidden size, heads or head size: {sorted(dims)}), so a shape constant {seq_len} is ambiguous. "
            "Export the model at another sequence length, or keep length=full."
        )


def _shape_elements(nodes, shape: NodeDef) -> list[int | None]:
    """A shape operand's constant elements (None where computed); [] when it is neither Const nor Pack."""
    if shape.op == "Const":
        value = const_value(shape)
        return [int(v) for v in value.ravel()] if value.ndim == 1 else []
    if shape.op != "Pack":
        return []
    elements: list[int | None] = []
    for ref in data_inputs(shape):
        element = nodes[split_input(ref)[0]]
        elements.append(int(const_value(element)) if element.op == "Const" and const_value(element).ndim == 0 else None)
    return elements


def _sequence_constant_uses(graph_def, seq_len: int) -> list[tuple[str, str, int]]:
    """[(Const holding S, consumer, input position)] for every edge by which S reaches a shape operand."""
    nodes = nodes_by_name(graph_def)
    uses: list[tuple[str, str, int]] = []
    seen: set[tuple[str, int]] = set()
    stack = [
        (node.name, position)
        for node in graph_def.node
        for position, _ in enumerate(node.input)
        if (node.op, position) in SHAPE_OPERANDS
    ]
    while stack:
        consumer, position = stack.pop()
        if (consumer, position) in seen:
            continue
        seen.add((consumer, position))
        name, _, control = split_input(nodes[consumer].input[position])
        source = nodes[name]
        if control:
            continue
        if source.op == "Const":
            value = const_value(source)
            if value.dtype.kind == "i" and np.any(value == seq_len):
                uses.append((name, consumer, position))
        elif source.op in SHAPE_PATH_OPS:
            stack.extend((name, slot) for slot, ref in enumerate(source.input) if not ref.startswith("^"))
    return uses


def _rewire_sequence_constants(graph_def, uses: list[tuple[str, str, int]], seq_len: int, shapes) -> int:
    nodes = nodes_by_name(graph_def)
    replacements: dict[tuple[str, str], str] = {}
    for const_name, consumer, position in uses:
        seq = _local_length(graph_def, nodes, nodes[consumer], seq_len, shapes)
        if (const_name, seq) not in replacements:
            new_nodes, replacements[const_name, seq] = _polymorphic_constant(nodes[const_name], seq_len, seq)
            graph_def.node.extend(new_nodes)
        nodes[consumer].input[position] = replacements[const_name, seq]
    return len(uses)


def _local_length(graph_def, nodes, consumer: NodeDef, seq_len: int, shapes) -> str:
    """The width a shape should read: dim 1 of the tensor whose Shape gives its batch, else the cut width.

    The encoder takes its batch size from Shape(hidden states); reading the length from the same
    Shape keeps the encoder free of the input mask, so a partition still cuts it at the boundaries
    and an XLA compile sees a constant.
    """
    if consumer.op not in ("Pack", "Mul"):
        return SEQ
    for ref in data_inputs(consumer):
        batch = nodes[split_input(ref)[0]]
        if batch.op != "StridedSlice":
            continue
        shape, begin = (nodes[split_input(name)[0]] for name in batch.input[:2])
        hidden = (
            shapes.get(shape.input[0] if ":" in shape.input[0] else tensor_name(shape.input[0]))
            if shape.op == "Shape"
            else None
        )
        if begin.op != "Const" or const_value(begin).tolist() != [0] or hidden is None or hidden.rank is None:
            continue
        if hidden.rank >= 2 and hidden.as_list()[1] == seq_len:
            name = f"{SCOPE}/seq_of/{shape.name}"
            if name not in nodes:
                out_type = tf.as_dtype(shape.attr["out_type"].type)
                new = [
                    make_const(f"{name}/begin", np.array([1], np.int32)),
                    make_const(f"{name}/end", np.array([2], np.int32)),
                    make_const(f"{name}/step", np.array([1], np.int32)),
                    element_node(name, shape.name, f"{name}/begin", f"{name}/end", f"{name}/step", out_type),
                ]
                if out_type != tf.int32:
                    new.append(make_node("Cast", f"{name}/int32", [name], SrcT=out_type, DstT=tf.int32, Truncate=False))
                graph_def.node.extend(new)
                nodes.update(
                    {node.name: graph_def.node[len(graph_def.node) - len(new) + i] for i, node in enumerate(new)}
                )
            return f"{name}/int32" if f"{name}/int32" in nodes else name
    return SEQ


def _polymorphic_constant(const: NodeDef, seq_len: int, seq: str) -> tuple[list[NodeDef], str]:
    """(new nodes, the tensor to read instead): each S in the Const becomes the width `seq`."""
    value = const_value(const)
    dtype = tf.as_dtype(value.dtype)
    base = f"{SCOPE}/shapes/{const.name}" + ("" if seq == SEQ else f"@{seq.removeprefix(SCOPE + '/seq_of/')}")
    nodes: list[NodeDef] = []
    if dtype != tf.int32:
        nodes.append(make_node("Cast", f"{base}/seq", [seq], SrcT=tf.int32, DstT=dtype, Truncate=False))
        seq = nodes[-1].name
    if value.ndim == 0:
        return nodes, seq
    if value.ndim != 1:
        raise GraphError(f"length: shape constant {const.name} has rank {value.ndim}; a shape is a vector.")
    elements = []
    for index, element in enumerate(value.tolist()):
        if element == seq_len:
            elements.append(seq)
        else:
            nodes.append(make_const(f"{base}/{index}", np.array(element, value.dtype)))
            elements.append(nodes[-1].name)
    nodes.append(make_node("Pack", base, elements, T=dtype, N=len(elements), axis=0))
    return nodes, base


def _length_nodes(graph: Graph, seq_len: int, sizes: tuple[int, ...]) -> list[NodeDef]:
    """The batch's length L computed from input_mask, and every input cut to [:, :L]."""
    mask = input_ref(graph.inputs["input_mask"])
    return [
        *_real_length_nodes(mask, seq_len),
        *(_bucket_nodes(sizes) if sizes else _trim_nodes()),
        *_cut_nodes(graph),
    ]


def _const(name: str, value) -> NodeDef:
    return make_const(f"{SCOPE}/{name}", np.asarray(value, np.int32))


def _all_of(name: str, boolean: str) -> NodeDef:
    return make_node("All", f"{SCOPE}/{name}", [boolean, f"{SCOPE}/axes_01"], keep_dims=False, Tidx=tf.int32)


def _real_length_nodes(mask: str, seq_len: int) -> list[NodeDef]:
    """Whether the mask can be cut (0/1, right-padded, a real first token in every row), and its longest row."""
    int32, p = tf.int32, SCOPE
    return [
        _const("axes_01", [0, 1]),
        _const("zero", 0),
        _const("one", 1),
        _const("full", seq_len),
        _const("origin", [0, 0]),
        _const("rest", [-1, -1]),
        # binary: every value is 0 or 1
        make_node("Equal", f"{p}/is_zero", [mask, f"{p}/zero"], T=int32, incompatible_shape_error=True),
        make_node("Equal", f"{p}/is_one", [mask, f"{p}/one"], T=int32, incompatible_shape_error=True),
        make_node("LogicalOr", f"{p}/is_binary", [f"{p}/is_zero", f"{p}/is_one"]),
        _all_of("binary", f"{p}/is_binary"),
        # right-padded: no row rises (mask[:, 1:] <= mask[:, :-1])
        _const("head_size", [-1, seq_len - 1]),
        _const("tail_begin", [0, 1]),
        make_node("Slice", f"{p}/head", [mask, f"{p}/origin", f"{p}/head_size"], T=int32, Index=int32),
        make_node("Slice", f"{p}/tail", [mask, f"{p}/tail_begin", f"{p}/rest"], T=int32, Index=int32),
        make_node("LessEqual", f"{p}/no_rise", [f"{p}/tail", f"{p}/head"], T=int32),
        _all_of("right_padded", f"{p}/no_rise"),
        # every row has a real token (its first position)
        _const("column_size", [-1, 1]),
        make_node("Slice", f"{p}/first", [mask, f"{p}/origin", f"{p}/column_size"], T=int32, Index=int32),
        make_node("Equal", f"{p}/first_real", [f"{p}/first", f"{p}/one"], T=int32, incompatible_shape_error=True),
        _all_of("rows_real", f"{p}/first_real"),
        make_node("LogicalAnd", f"{p}/ok_0", [f"{p}/binary", f"{p}/right_padded"]),
        make_node("LogicalAnd", f"{p}/cuttable", [f"{p}/ok_0", f"{p}/rows_real"]),
        # the longest real row (at least 1: an empty batch still has a valid shape)
        make_node("Sum", f"{p}/row_lengths", [mask, f"{p}/one"], keep_dims=False, T=int32, Tidx=int32),
        make_node("Max", f"{p}/longest", [f"{p}/row_lengths", f"{p}/zero"], keep_dims=False, T=int32, Tidx=int32),
        make_node("Maximum", REAL_LENGTH, [f"{p}/longest", f"{p}/one"], T=int32),
    ]


def _trim_nodes() -> list[NodeDef]:
    """trim: L is the longest real row, or the full length when the mask cannot be cut."""
    return [make_node("SelectV2", LENGTH, [f"{SCOPE}/cuttable", REAL_LENGTH, f"{SCOPE}/full"], T=tf.int32)]


def _bucket_nodes(sizes: tuple[int, ...]) -> list[NodeDef]:
    """buckets: L is the smallest size holding the longest real row (the last, the full length, on fallback)."""
    int32, p = tf.int32, SCOPE
    return [
        make_const(SIZES, np.array(sizes, np.int32)),
        make_node("Less", f"{p}/too_short", [SIZES, REAL_LENGTH], T=int32),
        make_node("Cast", f"{p}/too_short_count", [f"{p}/too_short"], SrcT=tf.bool, DstT=int32, Truncate=False),
        make_node(
            "Sum", f"{p}/fitting_index", [f"{p}/too_short_count", f"{p}/zero"], keep_dims=False, T=int32, Tidx=int32
        ),
        _const("last_index", len(sizes) - 1),
        make_node("SelectV2", BUCKET_INDEX, [f"{p}/cuttable", f"{p}/fitting_index", f"{p}/last_index"], T=int32),
        make_node(
            "GatherV2",
            LENGTH,
            [SIZES, BUCKET_INDEX, f"{p}/zero"],
            Tparams=int32,
            Tindices=int32,
            Taxis=int32,
            batch_dims=0,
        ),
    ]


def _cut_nodes(graph: Graph) -> list[NodeDef]:
    """Every serving input sliced to [:, :L], and SEQ: the cut width every former S reads."""
    int32, p = tf.int32, SCOPE
    nodes = [
        _const("keep_rows", -1),
        make_node("Pack", f"{p}/cut_size", [f"{p}/keep_rows", LENGTH], T=int32, N=2, axis=0),
    ]
    nodes += [
        make_node("Slice", cut_name(key), [input_ref(tensor), f"{p}/origin", f"{p}/cut_size"], T=int32, Index=int32)
        for key, tensor in graph.inputs.items()
    ]
    return nodes + [
        make_node("Shape", f"{p}/cut_shape", [cut_name("input_mask")], T=int32, out_type=int32),
        _const("axis_1", [1]),
        _const("axis_2", [2]),
        element_node(SEQ, f"{p}/cut_shape", f"{p}/axis_1", f"{p}/axis_2", f"{p}/one_step"),
        _const("one_step", [1]),
    ]


def _check_no_static_length(graph: Graph, seq_len: int) -> None:
    """After the cut, a tensor whose inferred shape still has S there has a constant bertc did not find."""
    shapes = static_shapes(graph)
    cut = [cut_name(key) for key in graph.inputs]
    for name in sorted(descendants(graph.graph_def, cut)):
        if name.startswith(SCOPE + "/"):
            continue
        shape = shapes.get(tensor_name(name))
        if shape is not None and shape.rank and seq_len in shape.as_list()[1:]:
            raise GraphError(
                f"length: {name} still has the static sequence length {seq_len} in its shape "
                f"{shape.as_list()} after the cut; a constant bertc does not recognise bakes it in. "
                "Keep length=full for this graph."
            )


def _cut_inputs(graph: Graph, params: LengthParams) -> str | None:
    if not is_length_polymorphic(graph):
        return "the graph computes no batch length"
    nodes = nodes_by_name(graph.graph_def)
    uncut = [key for key in graph.inputs if cut_name(key) not in nodes]
    return f"inputs {uncut} are not cut" if uncut else None


def _length_suits_target(facts) -> dict:
    """The mode is checked against the target (bertc/targets/base.py: Target), which must be able to run it; pack on
    a target that compiles static shapes buckets its lengths (static_shapes)."""
    mode = facts["length"].mode
    check_length_target(mode, tuple(facts["length"].sizes), facts["target"])
    return {"static_shapes": mode == "pack" and facts["target"].static_shapes}


PASS = Pass(
    trim_sequence_length,
    "length",
    LengthParams,
    help="run each batch only as long as its longest real row: trim (dynamic), buckets (one compile each), "
    "or pack (the layers run on the real tokens of all rows, one [T, H] matrix)",
    enabled=lambda node: node.mode != "full",
    # NOTE: after the mask rewrite: the shared bias's [-1,1,1,S] reshape exists and follows the cut; before
    # precision and partition: the cut lands in the host part, boundaries carry [B, L, H].
    after=("rewrite_attention_mask",),
    before=("apply_precision_map",),
    derive=_length_suits_target,
    facts=lambda params, node: {"length_mode": params.mode if params else "full"},  # read by the target
    ensures=(Condition("the batch length is computed in the graph and every input is cut to it", _cut_inputs),),
)
