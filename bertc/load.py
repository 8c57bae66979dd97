"""A SavedModel folder -> the compiler's Graph (weights read from variables/), its BERT shape, its digest.

Nothing of the input graph is executed here: the graph comes from the protobuf, the weights from
the checkpoint files. Variables become weight Placeholders; the graph keeps the model computation
(everything downstream of the serving inputs and what that needs) and drops the saver and the
initialisers. The loss branch is kept: dropping it is the removal step's job.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

from bertc.errors import ModelError
from bertc.frontends.signature import ServedSignature
from bertc.graph import (
    Graph,
    GraphDef,
    ancestors,
    const_value,
    consumers,
    descendants,
    keep_nodes,
    make_placeholder,
    node_of,
    nodes_by_name,
    split_input,
)
from bertc.security import refuse_unsafe_ops

SERVING_INPUTS = ("input_ids", "input_mask", "segment_ids")
VARIABLE_OPS = ("VariableV2", "Variable", "VarHandleOp")


@dataclasses.dataclass(frozen=True)
class BertShape:
    layers: int
    hidden: int
    heads: int
    head_size: int
    intermediate: int
    vocab: int
    type_vocab: int
    max_positions: int
    seq_len: int
    num_labels: int
    epsilon: float


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    path: Path
    graph: Graph
    shape: BertShape
    digest: str
    signature_inputs: dict[str, str]  # every input of the original signature -> tensor name
    served: ServedSignature | None = None  # the user's input names and output (bertc.frontends.signature)
    dialect: str = "tf1"  # the frontend that read it: tf1 | tf2


def model_digest(path: str | Path) -> str:
    """sha256 over saved_model.pb and the variable files (names and bytes), in a fixed order."""
    path = Path(path)
    files = [path / "saved_model.pb"] + sorted((path / "variables").glob("*"))
    digest = hashlib.sha256()
    for file in files:
        if not file.is_file():
            continue
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def load_saved_model(
    path: str | Path, allow_ops: Iterable[str] = (), inputs: Mapping[str, str] | None = None,
    output: str | None = None,
) -> LoadedModel:
    """Read the model; refuse it (before anything could execute it) if it holds impure ops.

    inputs / output: model.inputs (bertc name -> signature key) and model.output, for signatures
    whose names are not the common ones (bertc.frontends.signature).
    """
    path = Path(path)
    meta_graph = _read_meta_graph(path)
    signature = _serving_signature(meta_graph, path)
    # issue 13 hook: the dialect frontend (TF1 graph or TF2 functions) and the signature's names.
    from bertc.frontends import read_graph
    from bertc.frontends.signature import canonical

    dialect, graph = read_graph(path, meta_graph, signature, allow_ops)
    signature_inputs = {key: value.name for key, value in signature.inputs.items()}
    refuse_unsafe_ops(graph, allow_ops)
    graph, served = canonical(graph, path, inputs, output)
    shape = read_bert_shape(graph, path)
    return LoadedModel(path, graph, shape, model_digest(path), signature_inputs, served, dialect)


def _read_meta_graph(path: Path):
    if not path.exists():
        raise ModelError(f"model path {path} does not exist; give model.path=<a SavedModel folder>.")
    proto_file = path / "saved_model.pb"
    if not path.is_dir() or not proto_file.is_file():
        raise ModelError(
            f"{path} is not a SavedModel: no saved_model.pb in it. Give the folder that "
            "estimator.export_saved_model wrote (it holds saved_model.pb and variables/)."
        )
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(proto_file.read_bytes())
    except DecodeError as error:
        raise ModelError(
            f"{proto_file} is not a valid SavedModel protobuf ({error}); the file is truncated or "
            "corrupted: export the model again."
        ) from None
    serving = [graph for graph in saved_model.meta_graphs if "serve" in graph.meta_info_def.tags]
    if not serving:
        raise ModelError(f"{path}: no meta graph is tagged 'serve'; export it for serving.")
    if not serving[0].graph_def.node:
        raise ModelError(
            f"{path}: the 'serve' graph is empty. It looks like a TF2 object-based SavedModel; bertc "
            "reads the TF1 graph that google-research/bert exports (python -m bertc.export makes one)."
        )
    return serving[0]


def _serving_signature(meta_graph, path: Path):
    signatures = meta_graph.signature_def
    if "serving_default" in signatures:
        return signatures["serving_default"]
    raise ModelError(
        f"{path}: no 'serving_default' signature; found {sorted(signatures) or 'none'}. Export with "
        "a serving input receiver so the model has a serving signature."
    )


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
            f"{path}/variables cannot be read as a checkpoint ({_first_line(error)}); the variable "
            "files are missing, truncated or corrupted: export the model again."
        ) from None
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
                f"{path}/variables: reading {name} failed ({_first_line(error)}); a variable shard is "
                "missing or short: export the model again."
            ) from None
    return weights


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


def _to_weight_placeholders(graph_def: GraphDef, weights, inputs, outputs) -> Graph:
    """Variables -> weight Placeholders, their reads -> Identity; keep only the model computation."""
    result = GraphDef()
    result.versions.CopyFrom(graph_def.versions)
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


def _through_identity(nodes, name: str):
    node = nodes[name]
    while node.op in ("Identity", "StopGradient"):
        node = nodes[split_input(node.input[0])[0]]
    return node


def _weight_behind(nodes, weights, name: str) -> np.ndarray | None:
    node = _through_identity(nodes, name)
    return weights.get(node.name)


def read_bert_shape(graph: Graph, path: Path | str = "model") -> BertShape:
    """Read the BERT hyper-parameters from the weights and the graph's structure, not from names."""
    graph_def, weights = graph.graph_def, graph.weights
    nodes, users = nodes_by_name(graph_def), consumers(graph_def)

    def not_bert(what: str, found: str) -> ModelError:
        return ModelError(f"{path} is not a BERT that bertc understands: looked for {what}, found {found}.")

    input_ids = nodes[node_of(graph.inputs["input_ids"])]
    downstream = descendants(graph_def, [input_ids.name])
    gathers = [node for node in graph_def.node if node.name in downstream and node.op in ("GatherV2", "Gather", "ResourceGather")]
    # A TPU export (use_one_hot_embeddings) multiplies a one-hot of the ids by the table instead.
    one_hot_matmuls = [
        user for node in graph_def.node if node.name in downstream and node.op == "OneHot"
        for user, position in users.get(node.name, ()) if user.op == "MatMul" and position == 0
    ]
    tables = [split_input(node.input[0])[0] for node in gathers]
    tables += [split_input(node.input[1])[0] for node in one_hot_matmuls]
    table = next(
        (w for name in tables if (w := _weight_behind(nodes, weights, name)) is not None and w.ndim == 2), None
    )
    if table is None:
        raise not_bert("a word-embedding gather (or one-hot matmul) fed by input_ids",
                       f"{len(tables)} lookup(s) without a 2-D table")
    vocab, hidden = table.shape
    dims = input_ids.attr["shape"].shape.dim
    seq_len = dims[-1].size if dims else -1

    segment_side = descendants(graph_def, [node_of(graph.inputs["segment_ids"])])
    one_hots = [node for node in graph_def.node if node.name in segment_side and node.op == "OneHot"]
    type_gathers = [node for node in graph_def.node if node.name in segment_side and node.op in ("GatherV2", "Gather")]
    type_table = None
    if one_hots:
        type_vocab = int(const_value(nodes[split_input(one_hots[0].input[1])[0]]))
    elif type_gathers:
        type_table = _weight_behind(nodes, weights, split_input(type_gathers[0].input[0])[0])
        type_vocab = type_table.shape[0]
    else:
        raise not_bert("a token-type embedding fed by segment_ids", "none")

    # Positions: a slice of the table to the sequence length, or (Hugging Face) a gather of a range.
    positions = [
        w for node in graph_def.node if node.op in ("Slice", "StridedSlice", "GatherV2")
        if (w := _weight_behind(nodes, weights, split_input(node.input[0])[0])) is not None and w.ndim == 2
        and w.shape[1] == hidden and w is not table and w is not type_table
    ]
    if not positions:
        raise not_bert("a position-embedding table sliced to the sequence length", "none")
    max_positions = positions[0].shape[0]
    if seq_len <= 0:  # a signature of any length (keras-hub's export): the longest the positions allow
        seq_len = max_positions

    final_softmax = _through_identity(nodes, node_of(graph.outputs["probabilities"]))
    attention_softmaxes = [node for node in graph_def.node if node.op == "Softmax" and node is not final_softmax and node.name in downstream]
    if not attention_softmaxes:
        raise not_bert("attention softmaxes downstream of input_ids", "none")
    # Einsum attention (keras-hub, Model Garden) keeps [hidden, heads, head_size] kernels.
    split_kernels = [
        w.shape[1] for w in weights.values() if w.ndim == 3 and w.shape[0] == hidden and w.shape[1] * w.shape[2] == hidden
    ]
    heads = split_kernels[0] if split_kernels else _heads_of(nodes, users, attention_softmaxes[0])
    if heads is None or hidden % heads:
        raise not_bert("the [batch, seq, heads, head_size] reshape of an attention layer", f"heads={heads}")

    kernel_widths = [w.shape[1] for name, w in weights.items() if w.ndim == 2 and w.shape[0] == hidden and w.shape[1] != hidden]
    widest = max(kernel_widths, default=0)
    logits_node = _through_identity(nodes, node_of(graph.outputs["logits"]))
    num_labels = _num_labels(nodes, weights, logits_node)
    epsilons = [
        float(const_value(source))
        for node in graph_def.node if node.op == "Rsqrt"
        for add in [nodes[split_input(node.input[0])[0]]] if add.op in ("Add", "AddV2")
        for source in [nodes[split_input(name)[0]] for name in add.input] if source.op == "Const"
    ]
    return BertShape(
        layers=len(attention_softmaxes), hidden=int(hidden), heads=int(heads), head_size=int(hidden // heads),
        intermediate=int(widest), vocab=int(vocab), type_vocab=int(type_vocab),
        max_positions=int(max_positions), seq_len=int(seq_len), num_labels=int(num_labels),
        epsilon=epsilons[0] if epsilons else 1e-12,
    )


def _heads_of(nodes, users, softmax) -> int | None:
    """Heads from the reshape before the value transpose: [batch, seq, heads, head_size]."""
    readers = list(users.get(softmax.name, ()))
    while readers:
        matmul, _ = readers.pop()
        if matmul.op == "Identity":  # inference-mode dropout (Hugging Face)
            readers.extend(users.get(matmul.name, ()))
            continue
        if not matmul.op.startswith("BatchMatMul"):
            continue
        transpose = nodes[split_input(matmul.input[1])[0]]
        reshape = nodes[split_input(transpose.input[0])[0]] if transpose.op == "Transpose" else transpose
        if reshape.op != "Reshape":
            continue
        shape_node = nodes[split_input(reshape.input[1])[0]]
        if shape_node.op == "Const":
            return int(const_value(shape_node)[2])
        if shape_node.op == "Pack":
            third = nodes[split_input(shape_node.input[2])[0]]
            if third.op == "Const":
                return int(const_value(third))
    return None


def _num_labels(nodes, weights, logits_node) -> int:
    for name in logits_node.input:
        value = _weight_behind(nodes, weights, split_input(name)[0])
        if value is not None and value.ndim == 1:
            return value.shape[0]
    return -1
