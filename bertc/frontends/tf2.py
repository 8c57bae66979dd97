"""A TF2 object-based SavedModel -> one flat Graph: the serving function inlined, variables as weights.

Nothing is executed. The serving signature names a call node in `saved_model.pb`'s outer graph; its
function, and every function it calls (`StatefulPartitionedCall`, `PartitionedCall`, or a library
function used as an op), are inlined into one GraphDef with their node names prefixed by the call
chain. The function's captured inputs are mapped to variables through the object graph (the
concrete function's `bound_inputs`), their values read from `variables/` under the keys the
checkpoint's own object graph gives them (`<path>/.ATTRIBUTES/VARIABLE_VALUE`). A captured variable
becomes a weight Placeholder; its `ReadVariableOp` an Identity and a `ResourceGather` a GatherV2 on
the weight. Any other use of a variable (an assignment, say) is refused with the node named.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import trackable_object_graph_pb2
from tensorflow.python.framework import op_def_registry

from bertc.errors import ModelError, first_line
from bertc.frontends.security import refuse_unsafe_ops, refuse_unsafe_tf2_loading
from bertc.frontends.weights import refuse_bad_weight
from bertc.ir.graph import (
    Graph,
    GraphDef,
    NodeDef,
    make_const,
    make_placeholder,
    node_of,
    prune_to_outputs,
    split_input,
)
from bertc.ir.ops import CALL_OPS

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE_ATTRIBUTE = "VARIABLE_VALUE"


@dataclasses.dataclass(frozen=True)
class _Weight:
    name: str  # the weight Placeholder's node name
    dtype: int  # DataType enum


def is_tf2(meta_graph, signature) -> bool:
    """Whether the signature's outputs come from a call of a function in the library (TF2's layout)."""
    library = {function.signature.name for function in meta_graph.graph_def.library.function}
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    for output in signature.outputs.values():
        node = nodes.get(node_of(output.name))
        if node is None or node.op not in CALL_OPS or node.attr["f"].func.name not in library:
            return False
    return bool(signature.outputs) and len(meta_graph.object_graph_def.nodes) > 0


def read_tf2(path: Path, meta_graph, signature) -> Graph:
    """The serving signature as one flat Graph; inputs and outputs keyed by the signature's own keys."""
    graph_def = meta_graph.graph_def
    library = {function.signature.name: function for function in graph_def.library.function}
    outer = {node.name: node for node in graph_def.node}
    call = _serving_call(path, outer, signature)
    function_name = call.attr["f"].func.name
    args, data_inputs, bound = _call_arguments(path, meta_graph, call, library[function_name])
    explicit = len(data_inputs) - len(bound)

    graph_def_out = GraphDef()
    graph_def_out.versions.CopyFrom(graph_def.versions)
    # the bodies behind function-valued attributes (If, While branches) stay reachable, for the op check
    graph_def_out.library.CopyFrom(graph_def.library)
    fed = zip(args[:explicit], data_inputs[:explicit])
    arg_map, inputs = _signature_placeholders(path, outer, signature, call, fed, graph_def_out)
    values = _variable_values(path, meta_graph, bound, function_name)
    captured = zip(args[explicit:], (values[node_id] for node_id in bound))
    weights, resources = _weight_placeholders(captured, set(inputs), arg_map, graph_def_out)

    inliner = _Inliner(library, resources, graph_def_out, path)
    returns, _ = inliner.inline(function_name, arg_map, "")
    counts = collections.Counter(node.name for node in graph_def_out.node)
    clashes = sorted(name for name, count in counts.items() if count > 1)
    if clashes:  # a variable named like a node of the serving function's body
        raise ModelError(
            f"{path}: inlining the serving function gives two nodes named {clashes[0]}; rename "
            "the variable or layer of that name and save the model again."
        )
    outputs = {}
    for key, value in signature.outputs.items():
        _, index, _ = split_input(value.name)
        outputs[key] = returns[index]
    return Graph(graph_def_out, weights, inputs, outputs)


def _serving_call(path: Path, outer: dict[str, NodeDef], signature) -> NodeDef:
    """The one call node of the outer graph that the signature's outputs come from."""
    calls = {node_of(output.name) for output in signature.outputs.values()}
    if len(calls) != 1:
        raise ModelError(
            f"{path}: the serving signature's outputs come from {len(calls)} function calls "
            f"({sorted(calls)}); bertc reads a signature made by one function."
        )
    return outer[calls.pop()]


def _call_arguments(path: Path, meta_graph, call: NodeDef, function) -> tuple[list, list[str], list[int]]:
    """The serving function's arguments, the call's data inputs feeding them, and the object-graph ids of
    the captures (the last arguments: the inputs before them are the signature's)."""
    function_name = function.signature.name
    concrete = meta_graph.object_graph_def.concrete_functions.get(function_name)
    if concrete is None:
        raise ModelError(
            f"{path}: the serving function {function_name} is not in the object graph's concrete "
            "functions, so its captured variables cannot be found; save the model with "
            "tf.saved_model.save and a serving signature."
        )
    bound = list(concrete.bound_inputs)
    data_inputs = [name for name in call.input if not name.startswith("^")]
    args = list(function.signature.input_arg)
    if len(data_inputs) < len(bound) or len(args) != len(data_inputs):
        raise ModelError(
            f"{path}: the serving call {call.name} has {len(data_inputs)} inputs for {len(args)} function "
            f"arguments and {len(bound)} captures; the SavedModel is inconsistent: save it again."
        )
    return args, data_inputs, bound


def _signature_placeholders(
    path: Path, outer: dict[str, NodeDef], signature, call: NodeDef, fed, out: GraphDef
) -> tuple[dict[str, str], dict[str, str]]:
    """A placeholder in `out` for each (argument, call input) in `fed`, named by the signature's key;
    returns argument -> flat tensor and signature key -> flat tensor."""
    by_tensor = {value.name: key for key, value in signature.inputs.items()}
    arg_map: dict[str, str] = {}
    inputs: dict[str, str] = {}
    for arg, name in fed:
        source, index, _ = split_input(name)
        key = by_tensor.get(f"{source}:{index}")
        placeholder = outer[source]
        if key is None or placeholder.op != "Placeholder":
            raise ModelError(
                f"{path}: serving input {arg.name} of {call.name} is fed by {source} ({placeholder.op}), "
                "not one of the signature's inputs; bertc reads signatures whose inputs are placeholders."
            )
        spec = signature.inputs[key]
        shape = [dim.size if dim.size >= 0 else None for dim in spec.tensor_shape.dim]
        out.node.append(make_placeholder(key, tf.as_dtype(spec.dtype), shape))
        arg_map[arg.name] = f"{key}:0"
        inputs[key] = f"{key}:0"
    return arg_map, inputs


def _weight_placeholders(
    captured, taken: set[str], arg_map: dict[str, str], out: GraphDef
) -> tuple[dict[str, np.ndarray], dict[str, _Weight]]:
    """A weight placeholder in `out` for each (argument, (name, value)) in `captured`, under a name not in
    `taken`; each argument mapped to it in `arg_map`. Returns the weights and flat tensor -> weight."""
    weights: dict[str, np.ndarray] = {}
    resources: dict[str, _Weight] = {}
    for arg, (name, value) in captured:
        name = _unique(name, taken)
        weights[name] = value
        out.node.append(make_placeholder(name, tf.as_dtype(value.dtype), value.shape))
        arg_map[arg.name] = f"{name}:0"
        resources[f"{name}:0"] = _Weight(name, tf.as_dtype(value.dtype).as_datatype_enum)
    return weights, resources


def _unique(name: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_./-]", "_", name).lstrip("_./-") or "weight"
    candidate, number = name, 1
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate


def _variable_values(path: Path, meta_graph, bound: list[int], function_name: str) -> dict[int, tuple]:
    """Object-graph node id -> (weight name, value) for each captured variable, from variables/."""
    objects = meta_graph.object_graph_def.nodes
    prefix = path / "variables" / "variables"
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        checkpoint_graph = trackable_object_graph_pb2.TrackableObjectGraph()
        checkpoint_graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    except Exception as error:  # TF raises several types for a missing or broken index
        raise ModelError(
            f"{path}/variables cannot be read as an object-based checkpoint ({first_line(error)}); the variable "
            "files are missing, truncated or corrupted: save the model again."
        ) from None
    # The checkpoint's object graph has ids of its own: match the two graphs by child names from the root.
    to_checkpoint = {0: 0}
    queue = [0]
    while queue:
        saved_id = queue.pop()
        checkpoint_node = checkpoint_graph.nodes[to_checkpoint[saved_id]]
        checkpoint_children = {child.local_name: child.node_id for child in checkpoint_node.children}
        for child in objects[saved_id].children:
            if child.node_id not in to_checkpoint and child.local_name in checkpoint_children:
                to_checkpoint[child.node_id] = checkpoint_children[child.local_name]
                queue.append(child.node_id)
    result = {}
    for node_id in bound:
        saved = objects[node_id]
        if saved.WhichOneof("kind") != "variable":
            raise ModelError(
                f"{path}: {function_name} captures object {node_id}, a {saved.WhichOneof('kind')}, not a "
                "variable; bertc reads models whose functions capture only variables."
            )
        keys = (
            [
                attribute.checkpoint_key
                for attribute in checkpoint_graph.nodes[to_checkpoint[node_id]].attributes
                if attribute.name == VALUE_ATTRIBUTE
            ]
            if node_id in to_checkpoint
            else []
        )
        if not keys:
            raise ModelError(
                f"{path}/variables has no value for variable {saved.variable.name} (object {node_id}): "
                "the checkpoint does not hold it; save the model again."
            )
        try:
            value = reader.get_tensor(keys[0])
        except Exception:
            raise ModelError(
                f"{path}/variables: reading {keys[0]} failed; a variable shard is missing or short: "
                "save the model again."
            ) from None
        name = saved.variable.name or keys[0].removesuffix(f"/.ATTRIBUTES/{VALUE_ATTRIBUTE}")
        declared = tf.as_dtype(saved.variable.dtype).as_numpy_dtype if saved.variable.dtype else None
        refuse_bad_weight(path, name, np.asarray(value), declared)  # NaN, Inf, another dtype: named before any work
        result[node_id] = (name, np.asarray(value))
    return result


def _output_counts(node: NodeDef) -> list[tuple[str, int]]:
    """(output arg name, how many tensors it stands for) for an op node, from TensorFlow's registry."""
    op_def = op_def_registry.get(node.op)
    if op_def is None:
        raise ModelError(f"node {node.name}: op type {node.op} is unknown to this TensorFlow")
    counts = []
    for arg in op_def.output_arg:
        if arg.number_attr:
            counts.append((arg.name, node.attr[arg.number_attr].i))
        elif arg.type_list_attr:
            counts.append((arg.name, len(node.attr[arg.type_list_attr].list.type)))
        else:
            counts.append((arg.name, 1))
    return counts


@dataclasses.dataclass
class _Call:
    """One function call being inlined: its body, where its arguments come from, its node-name prefix."""

    function_name: str
    body: dict[str, NodeDef]
    arg_map: dict[str, str]  # argument -> flat tensor
    prefix: str
    done: dict[str, list[str] | None] = dataclasses.field(default_factory=dict)  # call -> outputs; op -> None

    def flat(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


class _Inliner:
    """Writes the nodes of a function and of everything it calls into one GraphDef."""

    def __init__(self, library, resources: dict[str, _Weight], out: GraphDef, path: Path):
        self.library = library
        self.resources = resources  # flat tensor -> weight, for tensors that were variable handles
        self.out = out
        self.path = path
        self.depth = 0

    def inline(self, function_name: str, arg_map: dict[str, str], prefix: str) -> tuple[list[str], list[str]]:
        """Inline one call; returns its outputs (flat tensors) and the nodes its control outputs name."""
        if self.depth > 64:
            raise ModelError(f"{self.path}: functions nest deeper than 64 calls at {prefix}; is one recursive?")
        function = self.library[function_name]
        call = _Call(function_name, {node.name: node for node in function.node_def}, arg_map, prefix)
        for node in _topological(function.node_def, call.body):
            call.done[node.name] = None
            if _is_call(node, self.library):
                self._emit_call(call, node)
            else:
                self._emit_op(call, node)
        outputs = [self._resolve(call, function.ret[arg.name]) for arg in function.signature.output_arg]
        controls = [call.flat(name) for name in function.control_ret.values()]
        return outputs, controls

    def _resolve(self, call: _Call, reference: str) -> str:
        """A body input (`node:arg:index`, an argument, or `^node`) as the flat tensor or control input."""
        control = reference.startswith("^")
        name = reference[1:] if control else reference
        parts = name.split(":")
        if parts[0] in call.arg_map and parts[0] not in call.body:
            tensor = call.arg_map[parts[0]] if len(parts) == 1 or parts[-1] == "0" else None
            if tensor is None:
                raise ModelError(
                    f"{self.path}: {call.function_name} reads list argument {name}, which bertc does not inline"
                )
            return f"^{node_of(tensor)}" if control else tensor
        node = call.body.get(parts[0])
        if node is None:
            raise ModelError(
                f"{self.path}: {call.function_name} reads {name}, which is neither a node nor an "
                "argument: the function library is corrupted"
            )
        if control:
            return f"^{call.flat(node.name)}"
        if _is_call(node, self.library):
            outputs = call.done[node.name]
            assert outputs is not None, f"call {node.name} is inlined before its consumers"
            return outputs[int(parts[2])]
        if len(parts) == 1:
            return f"{call.flat(node.name)}:0"
        arg, index = parts[1], int(parts[2])
        offset = 0
        for output_name, count in _output_counts(node):
            if output_name == arg:
                return f"{call.flat(node.name)}:{offset + index}"
            offset += count
        raise ModelError(f"{self.path}: {call.function_name}: {node.name} ({node.op}) has no output {arg}")

    def _emit_call(self, call: _Call, node: NodeDef) -> None:
        """Inline the function `node` calls, and a NoOp under the call's name for its control users."""
        callee = node.attr["f"].func.name if node.op in CALL_OPS else node.op
        inputs = [self._resolve(call, name) for name in node.input]
        data = [name for name in inputs if not name.startswith("^")]
        signature = self.library[callee].signature
        callee_args = {arg.name: tensor for arg, tensor in zip(signature.input_arg, data)}
        self.depth += 1
        outputs, controls = self.inline(callee, callee_args, call.flat(node.name))
        self.depth -= 1
        call.done[node.name] = outputs
        # `^call` waits for the whole call: a NoOp on its outputs, control outputs and own controls.
        waits = {f"^{node_of(tensor)}" for tensor in outputs if tensor not in self.resources}
        waits |= {f"^{name}" for name in controls} | {name for name in inputs if name.startswith("^")}
        self.out.node.add(name=call.flat(node.name), op="NoOp", input=sorted(waits))

    def _emit_op(self, call: _Call, node: NodeDef) -> None:
        """Copy an op node under its flat name, reading flat tensors, with variable uses made weight reads."""
        inputs = [self._resolve(call, name) for name in node.input]
        written = self.out.node.add()
        written.CopyFrom(node)
        written.name = call.flat(node.name)
        written.device = ""
        del written.input[:]
        written.input.extend(inputs)
        for key in [key for key in written.attr if key.startswith("_")]:
            del written.attr[key]
        self._replace_variable_use(written)

    def _replace_variable_use(self, node: NodeDef) -> None:
        """A node reading a captured variable reads its weight instead; other uses are refused."""
        handles = [
            (position, self.resources[name]) for position, name in enumerate(node.input) if name in self.resources
        ]
        if not handles:
            return
        weight = handles[0][1]
        if node.op == "ReadVariableOp":
            node.op = "Identity"
            node.attr["T"].type = weight.dtype
            del node.attr["dtype"]
        elif node.op == "ResourceGather" and handles[0][0] == 0:
            axis = make_const(f"{node.name}/axis", np.asarray(0, np.int32))
            self.out.node.append(axis)
            node.op = "GatherV2"
            node.input.insert(2, axis.name)
            node.attr["Tparams"].type = weight.dtype
            node.attr["Taxis"].type = types_pb2.DT_INT32
            for key in ("dtype", "validate_indices"):
                if key in node.attr:
                    del node.attr[key]
        elif node.op == "Identity" and len(handles) == 1:
            node.attr["T"].type = weight.dtype
            self.resources[f"{node.name}:0"] = weight  # still a variable, for whoever reads it next
        else:
            raise ModelError(
                f"{self.path}: node {node.name} ({node.op}) uses variable {weight.name}; bertc turns "
                "variable reads and gathers into weights and cannot compile a graph that does more with a "
                "variable (an assignment, say)."
            )


def _topological(nodes, body) -> list[NodeDef]:
    """A function body's nodes, each after the body nodes it reads (an explicit stack: bodies are long)."""
    order, state = [], {}
    for root in nodes:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                state[node.name] = "done"
                order.append(node)
                continue
            if state.get(node.name):
                continue
            state[node.name] = "open"
            stack.append((node, True))
            for reference in node.input:
                source = body.get(reference.lstrip("^").split(":")[0])
                if source is not None and source.name not in state:
                    stack.append((source, False))
    return order


def _is_call(node: NodeDef, library) -> bool:
    return node.op in CALL_OPS or node.op in library


class TF2Frontend:
    """tf.saved_model.save / Keras export: verify calls the serving signature as it is; the Graph is the serving
    function inlined, so the static bound covers the Graph."""

    name = "tf2"
    calls_signature = True
    inlines_functions = True

    def detect(self, meta_graph, signature) -> bool:
        return is_tf2(meta_graph, signature)

    def read(self, path: Path, meta_graph, signature, allow_ops: Iterable[str]) -> Graph:
        """Checked against the op allowlist as inlined, every node of every function the signature calls, before it
        is cut to what the outputs need: a call is no way around the check."""
        graph = read_tf2(path, meta_graph, signature)
        refuse_unsafe_ops(graph, allow_ops)
        return prune_to_outputs(graph)

    def check_loading(self, path: Path, meta_graph, signature, allow_ops: Iterable[str]) -> dict[str, set[str]]:
        """The init op's and the restore functions (the serving function is the inlined Graph)."""
        return refuse_unsafe_tf2_loading(meta_graph, allow_ops)


FRONTEND = TF2Frontend()
