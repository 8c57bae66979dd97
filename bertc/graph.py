"""The compiler's IR (a weight-free GraphDef + a weights dict) and the GraphDef helpers every pass uses.

Weights are not Const nodes: each is a Placeholder whose value lives in `Graph.weights`. The GraphDef
stays small (a BERT-Large graph is a few hundred KB), so a pass can copy it, and a pass that leaves
a weight alone shares its array with the input graph instead of copying it.
"""
from __future__ import annotations

import collections
import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, types_pb2
from tensorflow.python.framework import op_def_registry

from bertc.errors import UserError

NodeDef = node_def_pb2.NodeDef
GraphDef = graph_pb2.GraphDef


@dataclasses.dataclass(frozen=True)
class Graph:
    graph_def: GraphDef
    weights: Mapping[str, np.ndarray]  # weight Placeholder name -> value
    inputs: Mapping[str, str]  # serving input name -> tensor name, e.g. "input_ids" -> "input_ids:0"
    outputs: Mapping[str, str]  # serving output name -> tensor name
    # serving input name -> the key the compiled model serves it under (the user's own); {}: the same
    serving_names: Mapping[str, str] = dataclasses.field(default_factory=dict)

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

def _reach(roots: Iterable[str], neighbours, stops: set[str]) -> set[str]:
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
    return _reach(roots, lambda name: [split_input(source)[0] for source in nodes[name].input], set(stops))


def descendants(graph_def: GraphDef, roots: Iterable[str]) -> set[str]:
    """Nodes that read the roots, directly or not (data and control edges)."""
    users = consumers(graph_def)
    return _reach(roots, lambda name: [user.name for user, _ in users.get(name, ())], set())


def keep_nodes(graph: Graph, keep: set[str]) -> Graph:
    """The graph restricted to `keep` (order preserved); weights of dropped placeholders go too."""
    graph_def = GraphDef()
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
    result = GraphDef()
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

def const_value(node: NodeDef) -> np.ndarray:
    return tf.make_ndarray(node.attr["value"].tensor)


def make_const(name: str, value: np.ndarray, device: str = "") -> NodeDef:
    value = np.asarray(value)
    node = NodeDef(name=name, op="Const", device=device)
    node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return node


def make_node(op: str, name: str, inputs: Iterable[str], device: str = "", **attrs) -> NodeDef:
    node = NodeDef(name=name, op=op, input=list(inputs), device=device)
    for key, value in attrs.items():
        if isinstance(value, tf.DType):
            node.attr[key].type = value.as_datatype_enum
        elif isinstance(value, bool):
            node.attr[key].b = value
        elif isinstance(value, int):
            node.attr[key].i = value
        elif isinstance(value, attr_value_pb2.AttrValue):
            node.attr[key].CopyFrom(value)
        else:
            raise TypeError(f"attr {key} of {name}: unsupported value {value!r}")
    return node


def make_placeholder(name: str, dtype: tf.DType, shape: Iterable[int | None]) -> NodeDef:
    node = NodeDef(name=name, op="Placeholder")
    node.attr["dtype"].type = dtype.as_datatype_enum
    node.attr["shape"].shape.CopyFrom(tf.TensorShape(list(shape)).as_proto())
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


FLOAT_TYPES = {types_pb2.DT_FLOAT, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16}


# ---- checks ------------------------------------------------------------------------------------

def check_graph(graph: Graph) -> None:
    """Raise GraphError if the graph is not well formed: dangling inputs, cycles, bad signature."""
    nodes = nodes_by_name(graph.graph_def)
    if len(nodes) != len(graph.graph_def.node):
        seen: set[str] = set()
        duplicate = next(node.name for node in graph.graph_def.node if node.name in seen or seen.add(node.name))
        raise GraphError(f"two nodes are named {duplicate}")
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


def static_shapes(graph: Graph) -> dict[str, tf.TensorShape]:
    """Tensor name -> the shape TensorFlow's shape inference gives it (batch dims unknown)."""
    with tf.Graph().as_default() as tf_graph:
        tf.graph_util.import_graph_def(graph.graph_def, name="")
        return {
            tensor.name: tensor.shape
            for operation in tf_graph.get_operations()
            for tensor in operation.outputs
        }


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What a pass returns: the new graph and, per config entry (op, rule, boundary), its match count."""

    graph: Graph
    matches: Mapping[str, int] = dataclasses.field(default_factory=dict)
