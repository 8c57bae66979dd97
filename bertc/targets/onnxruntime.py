"""target=onnxruntime: the rewritten graph (every pass applied, the length rewrite included) as an ONNX model,
optimized by ONNX Runtime's transformer fusions, served by plain `onnxruntime` with the user's input names.

The serving function target=tf would save is converted by tf2onnx (weights folded in as initializers), then
`onnxruntime.transformers.optimizer` fuses what it recognises (FastGelu, LayerNormalization) and bertc fuses the rest
by structure (bertc/targets/onnx_fusion.py: one Attention per layer, SkipLayerNormalization at each residual; the
counts are recorded in `bertc_onnx.json` and the report). precision=int8 then quantizes the marked matmuls
(bertc/targets/onnx_int8.py). The artifact is
`model/model.onnx` plus that JSON: nothing of bertc or TensorFlow is needed to serve it:

    import onnxruntime, numpy as np
    session = onnxruntime.InferenceSession("model/model.onnx", providers=["CPUExecutionProvider"])
    probabilities, logits = session.run(["probabilities", "logits"], {"input_ids": ids, ...})  # int32 [batch, S]

Needs the `onnxruntime` extra (pip install 'bertc[onnxruntime]'); without it the target stops before any work.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from bertc.errors import ConfigError
from bertc.ir.graph import Graph, node_of, nodes_by_name, through_identity
from bertc.targets.base import EngineArtifact, QuantizingTarget, TargetOptions
from bertc.targets.onnx_fusion import fuse_attention, fuse_multi_head_attention, fuse_skip_layer_norm
from bertc.targets.onnx_int8 import onnx_names, quantize

EXTRA = "pip install 'bertc[onnxruntime]'"
PACKAGES = {"tf2onnx": "tf2onnx", "onnxruntime": "onnxruntime", "onnx": "onnx"}
OPSET = 17
MODEL_FILE, INFO_FILE = "model.onnx", "bertc_onnx.json"
WEIGHT_BYTES = 1024  # a Const larger than this is a weight: kept out of Grappler while tf2onnx converts
TRITON_MAX_BATCH = 64  # config.pbtxt's max_batch_size: Triton's dynamic batcher joins requests up to it


def _missing() -> list[str]:
    return [package for module, package in PACKAGES.items() if importlib.util.find_spec(module) is None]


class OnnxArtifact(EngineArtifact):
    """An ONNX model (in memory until saved) and what its conversion and fusion found."""

    info_file = INFO_FILE

    def write_model(self, path: Path) -> None:
        import onnx

        onnx.save_model(self.model, str(path / MODEL_FILE))

    def open(self, path: Path, served=None) -> OnnxSession:
        names = dict(served.input_names) if served is not None else {}
        from bertc.frontends.signature import output_names

        return OnnxSession(path / MODEL_FILE, names, output_names(served) if served is not None else {})

    def describe(self, path: Path, run_dir: Path, label: str, user: Mapping) -> dict:
        from bertc.run.serving_layout import SERVING_VERSION, write_repository

        info = self.saved_info(path)
        triton = write_repository(
            path,
            run_dir,
            "triton",
            label,
            {f"{SERVING_VERSION}/{MODEL_FILE}": MODEL_FILE, "config.pbtxt": "text:" + _triton_config(path, label)},
        )
        return {
            "engine": f"onnxruntime {info['versions']['onnxruntime']}",
            "files": f"{path / MODEL_FILE}, {path / INFO_FILE}",
            "inputs": ", ".join(info["inputs"]),
            "outputs": ", ".join(info["outputs"]),
            "fused": ", ".join(f"{op} {count}" for op, count in info["fused"].items() if count) or "nothing",
            **({"int8": _int8_line(info["int8"])} if "int8" in info else {}),
            "how": f"onnxruntime.InferenceSession('{path / MODEL_FILE}').run(None, {{input: int32 [batch, S]}})",
            "triton": f"{triton} (Triton's model repository: tritonserver --model-repository {triton.parent})",
        }


class OnnxSession:
    """model.onnx in an ONNX Runtime session on the CPU, fed under the user's names; outputs read back as
    probabilities and logits whatever keys the user's signature gave them."""

    def __init__(self, model: Path, input_names: Mapping[str, str], output_names: Mapping[str, str]):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self._names = dict(input_names)
        self._outputs = {served: name for name, served in output_names.items()}
        self._expected = {entry.name for entry in self._session.get_inputs()}

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        named = {self._names.get(key, key): np.asarray(value, np.int32) for key, value in feeds.items()}
        fed = {key: value for key, value in named.items() if key in self._expected}
        keys = [entry.name for entry in self._session.get_outputs()]
        return {self._outputs.get(key, key): value for key, value in zip(keys, self._session.run(keys, fed))}


class OnnxRuntimeTarget(QuantizingTarget):
    name = "onnxruntime"  # precision=int8: the marked matmuls become integer matmuls (bertc/targets/onnx_int8.py)
    # Max RSS, python -m bertc target=onnxruntime length=trim verify=off bench=off: the demo 1.37 GB, BERT-Base
    # 5.90 GB (18.2 GB before the bypasses in _convert): 11.9 bytes more per byte of float32 weights.
    weight_copies = 12.0
    float32_only = "ONNX Runtime's CPU kernels have no fast float16 or bfloat16 path."

    def check_available(self, options: TargetOptions) -> None:
        missing = _missing()
        if missing:
            raise ConfigError(
                f"target=onnxruntime needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                f"installed: {EXTRA}. Nothing was compiled."
            )
        self.refuse_gpu_and_narrow_floats(options)

    def engine_versions(self, quantize: str = "") -> dict[str, str]:
        return _versions() if not _missing() else {}

    def lower(self, graph: Graph, options: TargetOptions) -> OnnxArtifact:
        from bertc.targets.serving import CompiledBert, Placement

        module = CompiledBert(graph, options.seq_len, Placement(options.host_device, None, jit_compile=False))
        model = _convert(module)
        heads, hidden = (
            (int(options.model_shape[key]) for key in ("heads", "hidden")) if options.model_shape else (0, 0)
        )
        model, fused = _optimize(model, heads, hidden)
        int8 = onnx_names(model, graph.quantize) if options.quantize else {}  # TensorFlow name -> ONNX node name
        packed = _fuse(model, heads, fused, set(int8.values()), options)
        info: dict[str, Any] = {
            "inputs": [entry.name for entry in model.graph.input],
            "outputs": [entry.name for entry in model.graph.output],
            "opset": OPSET,
            "fused": fused,
            "versions": _versions(),
        }
        if options.quantize:
            nodes = {packed.get(onnx, onnx): graph.quantize[name] for name, onnx in int8.items()}
            model, done = quantize(model, nodes, graph.serving_names, options)
            roles = dict(sorted(collections.Counter(graph.quantize.values()).items()))
            info["int8"] = {**done, "matmuls": len(int8), "roles": roles}
        return OnnxArtifact(model, info)


def _convert(module) -> Any:
    """The module's serving function -> an ONNX ModelProto (tf2onnx folds the variables into initializers).

    tf2onnx deep-copies the whole graph, weights included, before each of its optimizers so as to roll back one that
    fails: that doubles the peak (the demo: 4.4 GB -> 2.7 GB without; BERT-Base was killed for memory beside other
    work). Without the copies a failing optimizer fails the conversion instead of being skipped without a word.
    Three more of its steps held copies of the weights that the model does not need, each bypassed while bertc
    converts, the ONNX model unchanged (the demo: 2.7 GB -> 1.4 GB max RSS; OnnxRuntimeTarget.weight_copies)."""
    import tf2onnx

    signature = list(module.serve.input_signature)
    with (
        _environment(TF2ONNX_CATCH_ERRORS="FALSE"),
        _frozen_without_function(),
        _grappler_without_weights(),
        _const_updates_skipped(),
    ):
        model, _ = tf2onnx.convert.from_function(module.serve, input_signature=signature, opset=OPSET)
    _erfc_as_erf(model)
    return model


@contextlib.contextmanager
def _const_updates_skipped() -> Iterator[None]:
    """tf2onnx rewrites every node's NodeProto after each of its optimizer passes (Node.update_proto: attributes
    deleted, then added back). Under protobuf's upb runtime a deleted attribute's bytes stay in the message's arena
    as long as the message lives, so each pass left another copy of every weight behind: about 24 copies of the
    weights in all (the demo: +42 MB a pass; BERT-Base: 16 GB at the end of the conversion). A Const's NodeProto is
    never written out (make_graph makes each Const an initializer from its value attribute), so while bertc
    converts, a Const's update is skipped."""
    from tf2onnx.graph import Node

    update = Node.update_proto

    def update_unless_const(node, external_tensor_storage=None):
        if not node.is_const():
            update(node, external_tensor_storage)

    with mock.patch.object(Node, "update_proto", update_unless_const):
        yield


@contextlib.contextmanager
def _grappler_without_weights() -> Iterator[None]:
    """tf2onnx runs Grappler on the frozen graph, which holds every weight as a Const, and Grappler copies the graph
    many times over (the demo: +760 MB for 45 MB of weights). While bertc converts, Grappler sees each weight as a
    Placeholder of its shape instead; the Consts are put back where it left them."""
    from tf2onnx import tf_loader

    optimize = tf_loader.tf_optimize

    def optimize_without_weights(input_names, output_names, graph_def):
        stripped, weights = _weights_as_placeholders(graph_def)
        optimized = optimize(input_names, output_names, stripped)
        for node in optimized.node:
            if node.op == "Placeholder" and node.name in weights:
                node.CopyFrom(weights[node.name])
        return optimized

    with mock.patch.object(tf_loader, "tf_optimize", optimize_without_weights):
        yield


@contextlib.contextmanager
def _frozen_without_function() -> Iterator[None]:
    """tf2onnx freezes the serving function with TensorFlow's convert_variables_to_constants_v2, which imports the
    frozen GraphDef into a new ConcreteFunction only for tf2onnx to read the GraphDef back (as_graph_def): about 8
    copies of the weights at once. While bertc converts, the freeze stops at the GraphDef: tf2onnx's own
    convert_variables_to_constants_large_model, with the options from_function asks for (no control-flow
    lowering, aggressive inlining). Its `_output_shapes` come from Grappler's shape inference, which runs next."""
    import types

    from tf2onnx import tf_loader

    def frozen_graph_def(func, **options):
        graph_def = tf_loader.convert_variables_to_constants_large_model(func)
        return types.SimpleNamespace(graph=types.SimpleNamespace(as_graph_def=lambda add_shapes: graph_def))

    with mock.patch.object(tf_loader, "convert_variables_to_constants_v2", frozen_graph_def):
        yield


def _weights_as_placeholders(graph_def) -> tuple[Any, dict[str, Any]]:
    """A copy of `graph_def` whose weights (Consts over WEIGHT_BYTES) are Placeholders of the same dtype and shape,
    except those Grappler's constant folding computes with; {name: the Const} of those replaced."""
    import tensorflow as tf

    large = {
        node.name
        for node in graph_def.node
        if node.op == "Const" and len(node.attr["value"].tensor.tensor_content) > WEIGHT_BYTES
    }
    replaced = large - _folded_constants(graph_def)
    stripped, weights = tf.compat.v1.GraphDef(), {}
    stripped.versions.CopyFrom(graph_def.versions)
    stripped.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name not in replaced:
            stripped.node.append(node)
            continue
        weights[node.name] = node
        tensor = node.attr["value"].tensor
        placeholder = stripped.node.add(name=node.name, op="Placeholder", device=node.device)
        placeholder.attr["dtype"].type = tensor.dtype
        placeholder.attr["shape"].shape.CopyFrom(tensor.tensor_shape)
    return stripped, weights


def _folded_constants(graph_def) -> set[str]:
    """The Consts that feed, directly or through Identity, an op (not an Identity) whose inputs are all Consts:
    Grappler folds that op, so the Const must keep its value (BERT's position table under a static Slice). Other
    weights meet data (MatMul, BiasAdd, Gather, Mul, AddV2) and an Identity left over is removed by tf2onnx."""
    nodes = nodes_by_name(graph_def)

    def const(name: str) -> str | None:
        node = through_identity(nodes, node_of(name), ops=("Identity",))
        return node.name if node.op == "Const" else None

    folded: set[str] = set()
    for node in graph_def.node:
        sources = [const(name) for name in node.input if not name.startswith("^")]
        if node.op != "Identity" and sources and all(sources):
            folded.update(name for name in sources if name is not None)
    return folded


def _erfc_as_erf(model: Any) -> None:
    """tf2onnx passes TensorFlow's Erfc through as an op ONNX does not have (Hugging Face's exact GELU is
    0.5 x erfc(-x / sqrt 2)): write it 1 - Erf(x). The difference is erf's rounding, under 1e-7 on GELU's range."""
    from onnx import helper, numpy_helper

    nodes = [node for node in model.graph.node if node.op_type == "Erfc" and node.domain in ("", "ai.onnx")]
    if not nodes:
        return
    one = "bertc_erfc/one"
    model.graph.initializer.append(numpy_helper.from_array(np.ones((), np.float32), one))
    for node in nodes:
        position = list(model.graph.node).index(node)
        erf = helper.make_node("Erf", list(node.input), [f"{node.name}/erf:0"], name=f"{node.name}/erf")
        sub = helper.make_node("Sub", [one, erf.output[0]], list(node.output), name=node.name)
        model.graph.node.remove(node)
        model.graph.node.insert(position, sub)
        model.graph.node.insert(position, erf)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _optimize(model: Any, heads: int, hidden: int) -> tuple[Any, dict[str, int]]:
    """ONNX Runtime's transformer fusions on the converted model; the fused operator counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(model, model_type="bert_tf", num_heads=heads, hidden_size=hidden, opt_level=0)
    fused = {key: int(value) for key, value in optimized.get_fused_operator_statistics().items()}
    return optimized.model, fused


def _triton_config(path: Path, label: str) -> str:
    """Triton's config.pbtxt for model.onnx: its inputs and outputs with their shapes, batch as Triton's own axis."""
    import onnx

    from bertc.run.serving_layout import serving_name

    model = onnx.load_model(str(path / MODEL_FILE), load_external_data=False)
    kinds = {onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.FLOAT: "TYPE_FP32"}

    def entries(values) -> str:
        lines = []
        for value in values:
            dims = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in value.type.tensor_type.shape.dim]
            kind = kinds.get(value.type.tensor_type.elem_type, "TYPE_FP32")
            lines.append(f'  {{ name: "{value.name}", data_type: {kind}, dims: {dims[1:]} }}')
        return ",\n".join(lines)

    return (
        f'name: "{serving_name(label)}"\nbackend: "onnxruntime"\nmax_batch_size: {TRITON_MAX_BATCH}\n'
        f"input [\n{entries(model.graph.input)}\n]\noutput [\n{entries(model.graph.output)}\n]\n"
        "dynamic_batching { }\n"
    )


def _fuse(model: Any, heads: int, fused: dict[str, int], int8: set[str], options: TargetOptions) -> dict[str, str]:
    """bertc's own fusions where the optimizer's patterns missed (bertc/targets/onnx_fusion.py); counts into `fused`.
    Returns {Q, K, V MatMul: its Attention}. Static int8 keeps the projections apart (ONNX Runtime's QDQ quantizer has
    no quantized Attention): MultiHeadAttention then takes the attention after them, as it does for length=pack."""
    packed = {}
    if heads and not (options.quantize and options.params.activations == "static"):
        packed = fuse_attention(model, heads, lambda names: len({name in int8 for name in names}) == 1)
    fused["Attention"] = fused.get("Attention", 0) + len(set(packed.values()))
    if heads:  # what Attention could not take (length=pack's gathered Q, K, V; static int8's projections)
        fused["MultiHeadAttention"] = fused.get("MultiHeadAttention", 0) + fuse_multi_head_attention(model, heads)
    fused["SkipLayerNormalization"] = fused.get("SkipLayerNormalization", 0) + fuse_skip_layer_norm(model)
    return packed


def _int8_line(int8: dict) -> str:
    return (
        f"{int8['matmuls']} matmuls ({', '.join(f'{role} {count}' for role, count in int8['roles'].items())}), "
        f"{int8['activations']} activations, weights per channel, reduce_range {int8['reduce_range']}"
    )


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tf2onnx

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "tf2onnx": tf2onnx.__version__}


TARGET = OnnxRuntimeTarget()
