"""The compiler's IR (a weight-free GraphDef + a weights dict) and the GraphDef helpers every pass uses.

Weights are not Const nodes: each is a Placeholder whose value lives in `Graph.weights`. The GraphDef
stays small (a BERT-Large graph is a few hundred KB), so a pass can copy it, and a pass that leaves
a weight alone shares its array with the input graph instead of copying it.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from bertc.errors import UserError
from bertc.ir.lazy import tf
from bertc.ir.ops import IDENTITY_OPS

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.core.framework.node_def_pb2 import NodeDef

# TensorFlow's DataType enum values (types.proto), so that importing the IR does not import TensorFlow.
DT_FLOAT, DT_INT32, DT_BFLOAT16, DT_HALF = 1, 3, 14, 19
FLOAT_TYPES = {DT_FLOAT, DT_HALF, DT_BFLOAT16}
# Names the passes give the nodes they create, and the targets read: part of the IR, not of one pass.
ATTENTION_BIAS_SCOPE = "bertc/attention_bias"


def __getattr__(name: str):
    """`NodeDef` and `GraphDef`, the protobuf classes, loaded with TensorFlow on first use."""
    if name == "NodeDef":
        from tensorflow.core.framework.node_def_pb2 import NodeDef

        return NodeDef
    if name == "GraphDef":
        from tensorflow.core.framework.graph_pb2 import GraphDef

        return GraphDef
    raise AttributeError(name)


def new_graph_def() -> GraphDef:
    from tensorflow.core.framework.graph_pb2 import GraphDef

    return GraphDef()


def new_node_def(**fields) -> NodeDef:
    from tensorflow.core.framework.node_def_pb2 import NodeDef

    return NodeDef(**fields)


@dataclasses.dataclass(frozen=True)
class Graph:
    graph_def: GraphDef
    weights: Mapping[str, np.ndarray]  # weight Placeholder name -> value
    inputs: Mapping[str, str]  # serving input name -> tensor name, e.g. "input_ids" -> "input_ids:0"
    outputs: Mapping[str, str]  # serving output name -> tensor name
    # serving input name -> the key the compiled model serves it under (the user's own); {}: the same
    serving_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # probabilities / logits -> the key the compiled model returns it under (the user's own); {}: the same
    serving_outputs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # MatMul node -> its role, for the nodes an engine target computes in int8 (the precision map's int8 rules)
    quantize: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def replace(self, **changes) -> Graph:
        return dataclasses.replace(self, **changes)


class GraphError(UserError):
    """A graph is not what a step expected; the message names the node and what was expected."""


# ---- names -------------------------------------------------------------------------------------


def split_input(name: str) -> tuple[str, int, bool]:
    """A NodeDef input string -> (node name, output index, is control edge)."""
    if name.startswith("^"):
        return name[1:], -1, True
    node, _, index = name.partition(":")
    return node, int(index) if index else 0, False


def tensor_name(node: str, index: int = 0) -> str:
    return f"{node}:{index}"


def input_ref(tensor: str) -> str:
    """A tensor name -> how a NodeDef input refers to it ("x:0" -> "x")."""
    node, index, _ = split_input(tensor)
    return node if index == 0 else f"{node}:{index}"


def node_of(tensor: str) -> str:
    return split_input(tensor)[0]


def through_identity(nodes: Mapping[str, NodeDef], name: str, ops: Collection[str] = IDENTITY_OPS) -> NodeDef:
    """The node `name` reads, past nodes of the `ops` types (each hands its first input on)."""
    node = nodes[name]
    while node.op in ops and node.input:
        node = nodes[split_input(node.input[0])[0]]
    return node


# ---- indexes -----------------------------------------------------------------------------------


def nodes_by_name(graph_def: GraphDef) -> dict[str, NodeDef]:
    return {node.name: node for node in graph_def.node}


def consumers(graph_def: GraphDef) -> dict[str, list[tuple[NodeDef, int]]]:
    """Node name -> [(consumer, input position)], data and control edges (position -1 for control)."""
    result: dict[str, list[tuple[NodeDef, int]]] = collections.defaultdict(list)
    for node in graph_def.node:
        for position, name in enumerate(node.input):
            source, _, control = split_input(name)
            result[source].append((node, -1 if control else position))
    return result


def data_inputs(node: NodeDef) -> list[str]:
    return [name for name in node.input if not name.startswith("^")]


def producer(nodes: Mapping[str, NodeDef], node: NodeDef, position: int) -> NodeDef:
    return nodes[split_input(node.input[position])[0]]


def op_histogram(graph_def: GraphDef) -> dict[str, int]:
    return dict(sorted(collections.Counter(node.op for node in graph_def.node).items()))


def op_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    ops = set(before) | set(after)
    return {op: after.get(op, 0) - before.get(op, 0) for op in sorted(ops) if after.get(op, 0) != before.get(op, 0)}


def match_scope(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


# ---- reachability ------------------------------------------------------------------------------


def reach(roots: Iterable[str], neighbours: Callable[[str], Iterable[str]], stops: set[str]) -> set[str]:
    """The nodes reached from the roots by `neighbours` (a node's producers, or readers), not past the stops."""
    seen: set[str] = set()
    stack = [node_of(root) for root in roots]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in stops:
            stack.extend(neighbours(name))
    return seen


def ancestors(graph_def: GraphDef, roots: Iterable[str], stops: Iterable[str] = ()) -> set[str]:
    """Nodes the roots need (data and control edges), not looking past the `stops` nodes."""
    nodes = nodes_by_name(graph_def)
    return reach(roots, lambda name: [split_input(source)[0] for source in nodes[name].input], set(stops))


def descendants(graph_def: GraphDef, roots: Iterable[str]) -> set[str]:
    """Nodes that read the roots, directly or not (data and control edges)."""
    users = consumers(graph_def)
    return reach(roots, lambda name: [user.name for user, _ in users.get(name, ())], set())


def keep_nodes(graph: Graph, keep: set[str]) -> Graph:
    """The graph restricted to `keep` (order preserved); weights of dropped placeholders go too."""
    graph_def = new_graph_def()
    graph_def.versions.CopyFrom(graph.graph_def.versions)
    graph_def.library.CopyFrom(graph.graph_def.library)
    graph_def.node.extend(node for node in graph.graph_def.node if node.name in keep)
    weights = {name: value for name, value in graph.weights.items() if name in keep}
    inputs = {key: tensor for key, tensor in graph.inputs.items() if node_of(tensor) in keep}
    return graph.replace(graph_def=graph_def, weights=weights, inputs=inputs)


def prune_to_outputs(graph: Graph) -> Graph:
    """Drop every node the outputs do not need (control edges count as needs)."""
    return keep_nodes(graph, ancestors(graph.graph_def, graph.outputs.values()))


def copy_graph_def(graph_def: GraphDef) -> GraphDef:
    result = new_graph_def()
    result.CopyFrom(graph_def)
    return result


def rewire(graph_def: GraphDef, old: str, new: str) -> int:
    """Point every data input that reads tensor `old` at tensor `new`; returns how many moved."""
    old_ref, new_ref, moved = input_ref(old), input_ref(new), 0
    for node in graph_def.node:
        for position, name in enumerate(node.input):
            if name == old_ref:
                node.input[position] = new_ref
                moved += 1
    return moved


# ---- values and types --------------------------------------------------------------------------


def drop_control_edges(graph_def: GraphDef, sources: set[str]) -> None:
    """Remove, in place, every control input on one of `sources`."""
    for node in graph_def.node:
        kept = [name for name in node.input if not (name.startswith("^") and name[1:] in sources)]
        if len(kept) != len(node.input):
            del node.input[:]
            node.input.extend(kept)


def const_value(node: NodeDef) -> np.ndarray:
    return tf.make_ndarray(node.attr["value"].tensor)


def make_const(name: str, value: np.ndarray | np.generic, device: str = "") -> NodeDef:
    value = np.asarray(value)
    node = new_node_def(name=name, op="Const", device=device)
    node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return node


def make_node(op: str, name: str, inputs: Iterable[str], device: str = "", **attrs) -> NodeDef:
    node = new_node_def(name=name, op=op, input=list(inputs), device=device)
    for key, value in attrs.items():
        if isinstance(value, tf.DType):
            node.attr[key].type = value.as_datatype_enum
        elif isinstance(value, bool):
            node.attr[key].b = value
        elif isinstance(value, int):
            node.attr[key].i = value
        elif type(value).__name__ == "AttrValue":
            node.attr[key].CopyFrom(value)
        else:
            raise TypeError(f"attr {key} of {name}: unsupported value {value!r}")
    return node


def element_node(name: str, source: str, begin: str, end: str, step: str, dtype=None) -> NodeDef:
    """`source[begin]` as a scalar (a one-element StridedSlice with shrink_axis_mask), e.g. a dimension out of a
    Shape; `begin`, `end` and `step` name 1-element int32 tensors."""
    return make_node(
        "StridedSlice",
        name,
        [source, begin, end, step],
        T=dtype or tf.int32,
        Index=tf.int32,
        begin_mask=0,
        end_mask=0,
        ellipsis_mask=0,
        new_axis_mask=0,
        shrink_axis_mask=1,
    )


def make_placeholder(name: str, dtype, shape: Iterable[int | None] | None) -> NodeDef:
    """shape None: of unknown rank."""
    node = new_node_def(name=name, op="Placeholder")
    node.attr["dtype"].type = dtype.as_datatype_enum
    node.attr["shape"].shape.CopyFrom(tf.TensorShape(None if shape is None else list(shape)).as_proto())
    return node


def _flat_dtypes(node: NodeDef, args) -> list[int]:
    """The DataType enum of each tensor an op's argument list stands for, in order."""
    dtypes: list[int] = []
    for arg in args:
        if arg.type_list_attr:
            dtypes.extend(node.attr[arg.type_list_attr].list.type)
            continue
        dtype = node.attr[arg.type_attr].type if arg.type_attr else arg.type
        dtypes.extend([dtype] * (node.attr[arg.number_attr].i if arg.number_attr else 1))
    return dtypes


def _op_def(node: NodeDef):
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(node.op)
    if op_def is None:
        raise GraphError(f"node {node.name}: op type {node.op} is unknown to this TensorFlow")
    return op_def


def output_dtype(node: NodeDef, index: int = 0) -> int:
    """The DataType enum of a node's output, from TensorFlow's op registry."""
    dtypes = _flat_dtypes(node, _op_def(node).output_arg)
    if index >= len(dtypes):
        raise GraphError(f"node {node.name} ({node.op}) has no output {index}")
    return dtypes[index]


def input_dtype(node: NodeDef, position: int) -> int:
    """The DataType enum a node expects at data input `position`."""
    dtypes = _flat_dtypes(node, _op_def(node).input_arg)
    if position >= len(dtypes):
        raise GraphError(f"node {node.name} ({node.op}) has no input {position}")
    return dtypes[position]


# ---- checks ------------------------------------------------------------------------------------


def check_graph(graph: Graph) -> None:
    """Raise GraphError if the graph is not well formed: dangling inputs, cycles, bad signature."""
    nodes = nodes_by_name(graph.graph_def)
    if len(nodes) != len(graph.graph_def.node):
        seen: set[str] = set()
        for node in graph.graph_def.node:  # the first name given again
            if node.name in seen:
                raise GraphError(f"two nodes are named {node.name}")
            seen.add(node.name)
    for node in graph.graph_def.node:
        for name in node.input:
            if split_input(name)[0] not in nodes:
                raise GraphError(f"node {node.name} reads {name}, which is not in the graph")
    for key, tensor in {**graph.inputs, **graph.outputs}.items():
        if node_of(tensor) not in nodes:
            raise GraphError(f"signature entry {key} names {tensor}, which is not in the graph")
    for name in graph.weights:
        if name not in nodes or nodes[name].op != "Placeholder":
            raise GraphError(f"weight {name} has no Placeholder node in the graph")
    _check_acyclic(graph.graph_def, nodes)


def _check_acyclic(graph_def: GraphDef, nodes: Mapping[str, NodeDef]) -> None:
    state: dict[str, int] = {}
    for root in nodes:
        if root in state:
            continue
        stack = [(root, iter(nodes[root].input))]
        state[root] = 1
        while stack:
            name, pending = stack[-1]
            source = next(pending, None)
            if source is None:
                state[name] = 2
                stack.pop()
                continue
            source = split_input(source)[0]
            if state.get(source) == 1:
                raise GraphError(f"the graph has a cycle through {source}")
            if source not in state:
                state[source] = 1
                stack.append((source, iter(nodes[source].input)))


# ---- execution (tests, verify of intermediate graphs) -------------------------------------------


def run_graph(graph: Graph, feeds: Mapping[str, np.ndarray], fetches: Iterable[str] | None = None) -> dict:
    """Execute the graph in a TF1 session: feeds by serving input name, fetches by output name."""
    fetch_names = list(fetches) if fetches is not None else list(graph.outputs)
    with tf.Graph().as_default() as tf_graph:
        tf.graph_util.import_graph_def(graph.graph_def, name="")
        feed_dict = {graph.inputs[key]: value for key, value in feeds.items() if key in graph.inputs}
        feed_dict.update({tensor_name(name): value for name, value in graph.weights.items()})
        with tf.compat.v1.Session(graph=tf_graph) as session:
            values = session.run([graph.outputs[name] for name in fetch_names], feed_dict)
    return dict(zip(fetch_names, values))


def static_shapes(graph: Graph) -> dict:
    """Tensor name -> the shape TensorFlow's shape inference gives it (batch dims unknown)."""
    with tf.Graph().as_default() as tf_graph:
        tf.graph_util.import_graph_def(graph.graph_def, name="")
        return {tensor.name: tensor.shape for operation in tf_graph.get_operations() for tensor in operation.outputs}


def pruned_function(graph: Graph, input_keys: Iterable[str], weight_names: Iterable[str], output_keys: Iterable[str]):
    """The GraphDef as a callable (inputs..., weights...) -> outputs: imported once into a wrapped function
    and pruned, so the weight Placeholders are its arguments and nothing unfed is left (for XLA)."""
    graph_def = graph.graph_def
    imported = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    feeds = [imported.graph.get_tensor_by_name(graph.inputs[key]) for key in input_keys]
    feeds += [imported.graph.get_tensor_by_name(f"{name}:0") for name in weight_names]
    fetches = [imported.graph.get_tensor_by_name(graph.outputs[key]) for key in output_keys]
    return imported.prune(feeds, fetches)


# ---- length-polymorphic graphs: the length step's scopes -----------------------------------------------
# Here because the analysis reads them (it skips the cut mask, and walks length=pack's gathers as layout); the
# rest of the feature's contract (its node names, split_length, at_width, ...) is bertc/passes/length/contract.py.

LENGTH_SCOPE = "bertc/length"
PACK_SCOPE = f"{LENGTH_SCOPE}/pack"  # length=pack: the nodes that gather the real tokens into one [T, H] matrix
