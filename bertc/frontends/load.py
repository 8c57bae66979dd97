"""A SavedModel folder -> the compiler's Graph (weights read from variables/), its BERT shape, its digest.

Nothing of the input graph is executed here: the graph comes from the protobuf, the weights from
the checkpoint files, read by the dialect's frontend (bertc.frontends: tf1, tf2); what TensorFlow's
loader would run is checked first (bertc.frontends.security).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

from bertc import frontends
from bertc.analysis.match import Index
from bertc.analysis.structure import POSITION_VARIANTS, embedding_tables, layer_norm_epsilons
from bertc.digest import files_digest
from bertc.errors import ModelError
from bertc.frontends import read_graph
from bertc.frontends.security import (
    check_allow_ops_known,
    refuse_outside_assets,
    refuse_outside_links,
    refuse_unsafe_ops,
)
from bertc.frontends.signature import ServedSignature, canonical
from bertc.ir.graph import (
    Graph,
    GraphDef,
    const_value,
    consumers,
    descendants,
    drop_control_edges,
    node_of,
    split_input,
    through_identity,
)


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
    # What TensorFlow's loader and the serving call would run (purpose -> node names), in `meta_graph`,
    # the graph TensorFlow loads: bertc.driver.limits bounds its cost before anything runs.
    meta_graph: Any = None
    executed: Mapping[str, set[str]] = dataclasses.field(default_factory=dict)
    served: ServedSignature | None = None  # the user's input names and output (bertc.frontends.signature)
    dialect: str = "tf1"  # the frontend that read it (bertc.frontends): tf1, tf2 or a registered one


def model_digest(path: str | Path) -> str:
    """sha256 over saved_model.pb and the variable files (names and bytes), in a fixed order."""
    path = Path(path)
    refuse_outside_links(path)
    files = [path / "saved_model.pb"] + sorted((path / "variables").glob("*"))
    return files_digest(path, [file for file in files if file.is_file()])


def load_saved_model(
    path: str | Path,
    allow_ops: Iterable[str] = (),
    inputs: Mapping[str, str] | None = None,
    output: str | None = None,
) -> LoadedModel:
    """Read the model; refuse it (before anything could execute it) if loading or serving runs impure ops.

    inputs / output: model.inputs (bertc name -> signature key) and model.output, for signatures
    whose names are not the common ones (bertc.frontends.signature).
    """
    path = Path(path)
    check_allow_ops_known(allow_ops)
    refuse_outside_links(path)
    meta_graph = _read_meta_graph(path)
    refuse_outside_assets(meta_graph, path)  # NOTE: before the frontend: nothing reads an asset path yet
    signature = _serving_signature(meta_graph, path)
    # the dialect's frontend (a TF1 graph, or a TF2 model's functions inlined) and the signature's names
    dialect, graph = read_graph(path, meta_graph, signature, allow_ops)
    frontend = frontends.get(dialect)
    if frontend.inlines_functions:
        _drop_inlined_call_leftovers(graph.graph_def)
    signature_inputs = {key: value.name for key, value in signature.inputs.items()}
    executed = frontend.check_loading(path, meta_graph, signature, allow_ops)  # what TensorFlow's loader runs
    refuse_unsafe_ops(graph, allow_ops)
    graph, served = canonical(graph, path, inputs, output)
    shape = read_bert_shape(graph, path)
    return LoadedModel(path, graph, shape, model_digest(path), signature_inputs, meta_graph, executed, served, dialect)


def _drop_inlined_call_leftovers(graph_def: GraphDef) -> None:
    """After inlining: the function library (no node calls it; kept, it clashes with TensorFlow's own loading of
    the same folder in this process, verify's reference) and the calls' control outputs, NoOps hanging on every
    op of the body (they order nothing in a graph of pure ops, and would tie the device part to the embeddings)."""
    graph_def.ClearField("library")
    no_ops = {node.name for node in graph_def.node if node.op == "NoOp"}
    drop_control_edges(graph_def, no_ops)
    kept = [node for node in graph_def.node if node.name not in no_ops]
    del graph_def.node[:]
    graph_def.node.extend(kept)


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
    meta_graph = _pick_meta_graph(saved_model, path)
    if not meta_graph.graph_def.node:
        raise ModelError(
            f"{path}: the 'serve' graph is empty. It looks like a TF2 object-based SavedModel; bertc "
            "reads the TF1 graph that google-research/bert exports (python -m bertc.model.export makes one)."
        )
    _check_graph_version(meta_graph.graph_def, path)
    return meta_graph


def _pick_meta_graph(saved_model, path: Path):
    """The meta graph `tf.saved_model.load(path, tags=["serve"])` loads, which verify and bench run.

    TensorFlow takes the first whose tag set is exactly {"serve"}; bertc reads that one, so what it
    checks is what TensorFlow executes. A tag set that only contains "serve", or two graphs tagged
    exactly "serve", would make the two disagree or depend on order: refused.
    """
    tag_sets = [sorted(graph.meta_info_def.tags) for graph in saved_model.meta_graphs]
    exact = [graph for graph in saved_model.meta_graphs if set(graph.meta_info_def.tags) == {"serve"}]
    if not exact:
        near = [tags for tags in tag_sets if "serve" in tags]
        raise ModelError(
            f"{path}: no meta graph is tagged exactly 'serve' (tag sets: {tag_sets or 'none'}). "
            + (
                "TensorFlow's loader, which verify and bench use, loads only the graph tagged exactly "
                "['serve'], so bertc would not check what runs; "
                if near
                else ""
            )
            + "export the serving graph with tags ['serve']."
        )
    if len(exact) > 1:
        raise ModelError(
            f"{path} holds {len(exact)} meta graphs tagged exactly 'serve' (tag sets: {tag_sets}); which one "
            "TensorFlow loads depends on their order. Keep one serving graph."
        )
    return exact[0]


def _check_graph_version(graph_def: GraphDef, path: Path) -> None:
    """The GraphDef versions rule TensorFlow applies on import, as a clear error here, not a crash later."""
    versions, ours = graph_def.versions, tf.version.GRAPH_DEF_VERSION
    too_new = versions.min_consumer > ours or ours in versions.bad_consumers
    too_old = versions.producer < tf.version.GRAPH_DEF_VERSION_MIN_PRODUCER
    if too_new or too_old:
        raise ModelError(
            f"{path}: its graph (GraphDef producer {versions.producer}, min_consumer {versions.min_consumer}"
            + (f", bad_consumers {list(versions.bad_consumers)}" if versions.bad_consumers else "")
            + f") cannot be read by this TensorFlow {tf.version.VERSION} (GraphDef version {ours}, reads "
            f"producers from {tf.version.GRAPH_DEF_VERSION_MIN_PRODUCER}): "
            + (
                "install a newer TensorFlow or export the model with this one."
                if too_new
                else "export the model again with a recent TensorFlow."
            )
        )


def _serving_signature(meta_graph, path: Path):
    signatures = meta_graph.signature_def
    if "serving_default" in signatures:
        return signatures["serving_default"]
    raise ModelError(
        f"{path}: no 'serving_default' signature; found {sorted(signatures) or 'none'}. Export with "
        "a serving input receiver so the model has a serving signature."
    )


def read_bert_shape(graph: Graph, path: Path | str = "model") -> BertShape:
    """Read the BERT hyper-parameters from the weights and the graph's structure (the lookup and attention
    patterns of bertc/analysis/structure.py), not from names."""

    def not_bert(what: str, found: str) -> ModelError:
        return ModelError(f"{path} is not a BERT that bertc understands: looked for {what}, found {found}.")

    index = Index.of(graph)
    words = embedding_tables(graph, "input_ids", index=index)
    if not words:
        raise not_bert("a word-embedding lookup (a gather, or a one-hot matmul) fed by input_ids", "none")
    table = graph.weights[words[0]]
    vocab, hidden = table.shape
    types = [name for name in embedding_tables(graph, "segment_ids", index=index) if name != words[0]]
    if not types:
        raise not_bert("a token-type embedding lookup fed by segment_ids", "none")
    positions = [
        name
        for name in embedding_tables(graph, None, POSITION_VARIANTS, index)
        if name not in (words[0], types[0]) and graph.weights[name].shape[1] == hidden
    ]
    if not positions:
        raise not_bert("a position-embedding table sliced to the sequence length (or gathered by a range)", "none")
    max_positions = graph.weights[positions[0]].shape[0]
    dims = index.nodes[node_of(graph.inputs["input_ids"])].attr["shape"].shape.dim
    seq_len = dims[-1].size if dims else -1
    if seq_len <= 0:  # a signature of any length (keras-hub's export): the longest the positions allow
        seq_len = max_positions
    # every softmax computed from the ids but the classifier's (a mask bertc cannot read still loads: mask=original)
    final = through_identity(index.nodes, node_of(graph.outputs["probabilities"])).name
    downstream = descendants(graph.graph_def, [node_of(graph.inputs["input_ids"])])
    softmaxes = [name for name, node in index.nodes.items() if node.op == "Softmax" and name in downstream]
    softmaxes = [name for name in softmaxes if name != final]  # in graph order
    if not softmaxes:
        raise not_bert("attention softmaxes downstream of input_ids", "none")
    layers = len(softmaxes)
    heads = _heads(graph, index, int(hidden), softmaxes[0])
    if heads is None or hidden % heads:
        raise not_bert("the [batch, seq, heads, head_size] reshape of an attention layer", f"heads={heads}")
    epsilons = layer_norm_epsilons(graph, index)
    return BertShape(
        layers=layers,
        hidden=int(hidden),
        heads=int(heads),
        head_size=int(hidden // heads),
        intermediate=int(_intermediate(graph.weights, int(hidden))),
        vocab=int(vocab),
        type_vocab=int(graph.weights[types[0]].shape[0]),
        max_positions=int(max_positions),
        seq_len=int(seq_len),
        num_labels=int(
            _num_labels(index.nodes, graph.weights, through_identity(index.nodes, node_of(graph.outputs["logits"])))
        ),
        epsilon=epsilons[0] if epsilons else 1e-12,
    )


def _heads(graph: Graph, index: Index, hidden: int, softmax: str) -> int | None:
    """Einsum attention (keras-hub, Model Garden) keeps [hidden, heads, head_size] kernels; otherwise the
    reshape to [batch, seq, heads, head_size] before the value transpose says."""
    split_kernels = [
        w.shape[1]
        for w in graph.weights.values()
        if w.ndim == 3 and w.shape[0] == hidden and w.shape[1] * w.shape[2] == hidden
    ]
    if split_kernels:
        return split_kernels[0]
    return _heads_of(index.nodes, consumers(graph.graph_def), index.nodes[softmax])


def _intermediate(weights, hidden: int) -> int:
    """The FFN width: the widest [hidden, X] kernel that is not square."""
    widths = [w.shape[1] for w in weights.values() if w.ndim == 2 and w.shape[0] == hidden and w.shape[1] != hidden]
    return max(widths, default=0)


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
        value = weights.get(through_identity(nodes, split_input(name)[0]).name)
        if value is not None and value.ndim == 1:
            return value.shape[0]
    return -1
