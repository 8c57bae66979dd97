"""A TF1 SavedModel's flat serving graph (google-research run_classifier) -> the compiler's Graph.

Variables are read by node name from the name-keyed checkpoint and become weight Placeholders, their reads
Identity; the graph is cut to what the signature computes (everything downstream of the serving inputs and
what that needs), dropping the saver and the initialisers. The loss branch stays: the removal step drops it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf

from bertc.errors import ModelError, first_line
from bertc.frontends.security import refuse_unsafe_loading
from bertc.frontends.weights import refuse_bad_weight
from bertc.ir.graph import (
    Graph,
    GraphDef,
    ancestors,
    descendants,
    keep_nodes,
    make_placeholder,
    new_graph_def,
    node_of,
)
from bertc.ir.ops import CALL_OPS, VARIABLE_OPS


def is_tf1(meta_graph, signature) -> bool:
    """Outputs made by ordinary nodes of the meta graph itself (no function call between)."""
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    produced = [nodes.get(node_of(output.name)) for output in signature.outputs.values()]
    return bool(produced) and all(node is not None and node.op not in CALL_OPS for node in produced)


def read_tf1(path: Path, meta_graph, signature) -> Graph:
    inputs = {key: value.name for key, value in signature.inputs.items()}
    outputs = {key: value.name for key, value in signature.outputs.items()}
    weights = _read_weights(path, meta_graph.graph_def)
    return _to_weight_placeholders(meta_graph.graph_def, weights, inputs, outputs)


def _read_weights(path: Path, graph_def: GraphDef) -> dict[str, np.ndarray]:
    names = [node.name for node in graph_def.node if node.op in VARIABLE_OPS]
    prefix = path / "variables" / "variables"
    if not names:
        return {}
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        available = reader.get_variable_to_shape_map()
    except Exception as error:  # TF raises several types for a missing or broken index
        raise ModelError(
            f"{path}/variables cannot be read as a checkpoint ({first_line(error)}); the variable "
            "files are missing, truncated or corrupted: export the model again."
        ) from None
    shapes = {node.name: node.attr["shape"].shape for node in graph_def.node if node.op in VARIABLE_OPS}
    dtypes = {
        node.name: tf.as_dtype(node.attr["dtype"].type).as_numpy_dtype
        for node in graph_def.node
        if node.op in VARIABLE_OPS and node.attr["dtype"].type
    }
    weights = {}
    for name in names:
        if name not in available:
            if name == "global_step" or name.endswith(("/adam_m", "/adam_v")):
                continue
            raise ModelError(f"{path}/variables has no value for variable {name}: the checkpoint is incomplete.")
        try:
            weights[name] = reader.get_tensor(name)
        except Exception as error:
            raise ModelError(
                f"{path}/variables: reading {name} failed ({first_line(error)}); a variable shard is "
                "missing or short: export the model again."
            ) from None
        _check_weight(path, name, weights[name], shapes[name], dtypes.get(name))
    return weights


def _check_weight(path: Path, name: str, value: np.ndarray, graph_shape, dtype=None) -> None:
    """The checkpoint's value must have the graph's shape and dtype and finite numbers: bad weights stop here."""
    if not graph_shape.unknown_rank:
        expected = [dim.size for dim in graph_shape.dim]
        differs = any(want >= 0 and want != got for want, got in zip(expected, value.shape))
        if len(expected) != value.ndim or differs:
            raise ModelError(
                f"{path}/variables: variable {name} has shape {list(value.shape)} in the checkpoint but "
                f"{expected} in the graph; the checkpoint belongs to another model: export the model again."
            )
    refuse_bad_weight(path, name, value, dtype)


def _to_weight_placeholders(graph_def: GraphDef, weights, inputs, outputs) -> Graph:
    """Variables -> weight Placeholders, their reads -> Identity; keep only the model computation."""
    result = new_graph_def()
    result.versions.CopyFrom(graph_def.versions)
    result.library.CopyFrom(graph_def.library)  # function calls stay callable (their bodies passed the check)
    for node in graph_def.node:
        if node.op in VARIABLE_OPS and node.name in weights:
            value = weights[node.name]
            result.node.append(make_placeholder(node.name, tf.as_dtype(value.dtype), value.shape))
        elif node.op == "ReadVariableOp":
            read = result.node.add()
            read.CopyFrom(node)
            read.op = "Identity"
            read.attr["T"].type = node.attr["dtype"].type
            del read.attr["dtype"]
        else:
            result.node.add().CopyFrom(node)
    graph = Graph(result, weights, inputs, outputs)
    computation = descendants(result, [node_of(tensor) for tensor in inputs.values()])
    keep = ancestors(result, computation | {node_of(tensor) for tensor in outputs.values()})
    return keep_nodes(graph, keep)


class TF1Frontend:
    """run_classifier's graph: verify prunes it to probabilities and logits (its signature also takes label_ids
    and is_real_example); the static bound covers the meta graph's nodes that loading and serving run."""

    name = "tf1"
    calls_signature = False
    inlines_functions = False

    def detect(self, meta_graph, signature) -> bool:
        return is_tf1(meta_graph, signature)

    def read(self, path: Path, meta_graph, signature, allow_ops: Iterable[str]) -> Graph:
        return read_tf1(path, meta_graph, signature)

    def check_loading(self, path: Path, meta_graph, signature, allow_ops: Iterable[str]) -> dict[str, set[str]]:
        """TensorFlow's TF1 loader runs the restore, init and main ops and their functions; an object graph
        beside the TF1 graph would make it load the file as TF2 instead, running what bertc did not check."""
        if meta_graph.HasField("object_graph_def") and meta_graph.object_graph_def.nodes:
            raise ModelError(
                f"{path} holds a TF1 serving graph and a TF2 object graph: TensorFlow would load it as a TF2 "
                "object-based SavedModel, running the functions its object graph names, which bertc does not check "
                "against this graph. Export it again with one of the two (python -m bertc.model.export makes a TF1 "
                "one)."
            )
        served_outputs = [value.name for value in signature.outputs.values()]
        served_inputs = [value.name for value in signature.inputs.values()]
        return refuse_unsafe_loading(meta_graph, served_outputs, served_inputs, allow_ops)


FRONTEND = TF1Frontend()
