"""target=stablehlo: the device part -> StableHLO modules (one per static batch size, and per length bucket with
length=buckets) in model/stablehlo/, beside the XLA SavedModel.

The device part (after the partition; the whole graph when the plan has none) becomes one
`tf.function(jit_compile=True)` whose parameters are the part's inputs (the boundary tensors, or
the serving inputs) then its weights; TensorFlow's XLA bridge lowers it to StableHLO
(`experimental_get_compiler_ir(...)(stage="stablehlo")`), written as text and as a StableHLO
portable artifact (versioned bytecode) for each `target.batch_sizes`. Beside them go
`weights.safetensors` and `manifest.json`: the parameter order, shapes and dtypes, the outputs,
the host part as a NumPy recipe (checked here against TensorFlow's host part), how to regenerate
seeded weights, a reference batch with TensorFlow's outputs, and the plan's fingerprint.
`bertc.runtime.stablehlo` serves it with JAX on any PJRT device, without TensorFlow.

With length=buckets the graph is length-polymorphic: its length part (the batch's real length from
input_mask, the fallback to the full length) is not exported; the runtime computes it in NumPy
(`bertc.passes.length.rule.batch_length`, checked here against the graph's own length part), and the body is
exported once per (batch size, bucket) at the static shape [batch, bucket]. The manifest lists the
buckets, each module's width and input shapes, and reference batches that run every bucket.

model/ itself is target=xla's SavedModel (the same device part, jit-compiled by TensorFlow):
verify and bench measure that, unchanged, and the modules are the HLO it runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import tensorflow as tf

from bertc.analysis.match import Index, weight_behind
from bertc.analysis.structure import POSITION_VARIANTS, embedding_tables, layer_norm_epsilons
from bertc.errors import ConfigError
from bertc.evaluate.batches import synthetic_batches
from bertc.evaluate.lengths import synthetic_feeds
from bertc.ir.graph import (
    ATTENTION_BIAS_SCOPE,
    Graph,
    GraphError,
    ancestors,
    const_value,
    nodes_by_name,
    pruned_function,
    run_graph,
    split_input,
    static_shapes,
)
from bertc.ir.signature import SERVING_INPUTS, SERVING_OUTPUTS
from bertc.passes.length.contract import at_width, bucket_sizes_of, split_length
from bertc.passes.length.rule import LENGTH_RULE, batch_length
from bertc.passes.partition.contract import split_partition
from bertc.runtime.manifest import (
    EmbeddingRecipe,
    HostRecipe,
    LayerNormRecipe,
    Length,
    Manifest,
    MaskRecipe,
    Module,
    Parameter,
    Reference,
    ReferenceBatch,
    Regeneration,
    Tensor,
    Weights,
    WeightTensor,
    manifest_json,
)
from bertc.runtime.portable import (
    BUCKETS_FORMAT,
    FORMAT,
    MANIFEST,
    compute_host,
    file_digest,
    tensor_digest,
)
from bertc.targets.base import TargetOptions
from bertc.targets.serving import CompiledBert, SavedModelArtifact
from bertc.targets.xla import xla_module

FOLDER = "stablehlo"
WEIGHTS_FILE = "weights.safetensors"
HOST_KEYS = ("embedding_output", "attention_mask")
_MODULE_NAME = re.compile(r"^module @\S+", re.MULTILINE)
# An op (not an attribute) of XLA's dialects, as the text writes it: `%3 = mhlo.erf %2` or `"mhlo.erf"(%2)`.
_FOREIGN_OP = re.compile(r'= "?((?:mhlo|chlo)\.\w+)"?[ (]')
_FILE_LOCATION = re.compile(r'loc\("[^"]*\.py":\d+:\d+\)')  # TensorFlow's own source lines: machine-specific paths


@dataclasses.dataclass(frozen=True)
class Emitted:
    stem: str  # device_b<batch>[_s<width>]: the files' name, and the module's (bertc_<stem>)
    batch_size: int
    width: int  # the sequence length the module takes: the model's, or its bucket's with length=buckets
    text: str
    bytecode: bytes  # the StableHLO portable artifact of `text`
    version: str  # the StableHLO version it is serialized for: consumers at that version or later read it
    inputs: tuple[list[int], ...]  # the static shape of each input parameter, in the manifest's order


@dataclasses.dataclass(frozen=True)
class PortableBuild:
    """What compile() made for after_save(): the modules and everything the manifest describes."""

    seq_len: int
    inputs: list[dict]  # the modules' leading parameters: name, shape (batch and bucketed lengths null), dtype
    weight_names: list[str]  # then its weights, in this order
    outputs: list[dict]
    host: HostRecipe | None  # the NumPy recipe of the host part; None: the module takes the serving inputs
    modules: tuple[Emitted, ...]
    input_limits: Mapping[str, int] | None
    model_shape: dict | None  # layers, hidden, heads, ...: what a benchmark needs to build the same model elsewhere
    buckets: tuple[int, ...] = ()  # length=buckets: the sizes, ascending, the last the model's length


def _serializer():
    from tensorflow.compiler.mlir.stablehlo import stablehlo

    return stablehlo


class StableHloCompiler:
    """target=stablehlo's compile (declared in bertc/targets/stablehlo_target.py)."""

    def check_available(self, options: TargetOptions) -> None:
        _check_stablehlo_export()

    def lower(self, graph: Graph, options: TargetOptions) -> PortableArtifact:
        module = xla_module(graph, options)
        length, body = split_length(graph)  # length=buckets: the runtime computes the length; the body is exported
        buckets = _buckets(length, options.seq_len)
        widths = buckets or (options.seq_len,)
        parts = {width: split_partition(at_width(body, width) if length else body) for width in widths}
        host, device = split_partition(body) if length else parts[options.seq_len]  # the device part at any width
        recipe = None
        if host is not None:
            recipe = host_recipe(_present(parts[options.seq_len][0]), options.seq_len)
            for width in widths[:-1]:  # the recipe reads the width from its inputs: checked at every bucket
                _check_recipe(_present(parts[width][0]), recipe, width)
        names = _part_input_names(device)
        weight_names = list(device.weights)
        function = _device_function(device, names, weight_names)
        inputs = {width: _part_inputs(parts[width][1], names) for width in widths}
        modules = []
        for width in widths:
            for batch_size in options.params.batch_sizes:
                stem = f"device_b{batch_size}" + (f"_s{width}" if buckets else "")
                text = emit_text(function, inputs[width], device.weights, weight_names, batch_size, f"bertc_{stem}")
                shapes = tuple([batch_size, *entry["shape"][1:]] for entry in inputs[width])
                modules.append(Emitted(stem, batch_size, width, text, *portable_artifact(text), shapes))
        outputs = [
            {"name": key, "dtype": "float32", "shape": [None, *_static_dims(parts[widths[-1]][1], key)]}
            for key in SERVING_OUTPUTS
        ]
        model_shape = {**options.model_shape, "num_labels": outputs[0]["shape"][1]} if options.model_shape else None
        build = PortableBuild(
            options.seq_len,
            _general_inputs([inputs[width] for width in widths]),
            weight_names,
            outputs,
            recipe,
            tuple(modules),
            dict(options.input_limits) if options.input_limits else None,
            model_shape,
            buckets,
        )
        return PortableArtifact(module, options, build)


def _present(part: Graph | None) -> Graph:
    """A part split_partition returned where the model has one (the host part of a partitioned graph)."""
    assert part is not None, "a partitioned graph has a host part at every width"
    return part


class PortableArtifact(SavedModelArtifact):
    """target=xla's SavedModel (what verify and bench measure), with the StableHLO bundle in stablehlo/ beside it."""

    def __init__(self, module: CompiledBert, options: TargetOptions, build: PortableBuild):
        super().__init__(module, options)
        self.build: PortableBuild | None = build

    def write(self, path: Path) -> None:
        super().write(path)
        assert self.build is not None, "an artifact is written once"
        write_portable(self.module, self.build, path, self.options)
        self.build = None  # its arrays are in weights.safetensors now


def _check_stablehlo_export() -> None:
    try:
        probe = tf.function(lambda x: x * 2.0, jit_compile=True, autograph=False)
        text = probe.experimental_get_compiler_ir(tf.TensorSpec([2], tf.float32))(stage="stablehlo")
        _serializer().serialize_portable_artifact_str(text, _serializer().get_current_version())
    except Exception as error:  # an older TensorFlow: no such stage, or no serializer
        raise ConfigError(
            f"target=stablehlo needs TensorFlow's StableHLO export (experimental_get_compiler_ir stage "
            f"'stablehlo' and tensorflow.compiler.mlir.stablehlo); TensorFlow {tf.__version__} failed: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}. Use TensorFlow 2.21, or target=xla."
        ) from None


# ---- the device function and its StableHLO -------------------------------------------------------


def _buckets(length: Graph | None, seq_len: int) -> tuple[int, ...]:
    """The bucket sizes of a length part (checked against the runtime's NumPy rule); () without one."""
    if length is None:
        return ()
    sizes = bucket_sizes_of(length)
    if not sizes or sizes[-1] != seq_len:
        raise GraphError(
            f"target=stablehlo exports static shapes: it needs length=buckets with the full length {seq_len} "
            f"as the last bucket, and this graph's length part has buckets {list(sizes) or 'none (trim)'}."
        )
    _check_length_rule(length, sizes, seq_len)
    return sizes


def _check_length_rule(length: Graph, sizes: tuple[int, ...], seq_len: int) -> None:
    """The runtime's NumPy length rule must pick the bucket the graph's own length part picks, on masks that
    reach every bucket's edges and on the masks that must fall back to the full length."""
    masks = []
    for size in sorted({1, *sizes, *(size + 1 for size in sizes[:-1])}):
        masks.append(synthetic_feeds(np.array([size, max(1, size // 2), 1]), seq_len, 1000, seed=size)["input_mask"])
    rises = masks[1].copy()
    rises[1, seq_len - 1] = 1  # a 1 after a 0
    empty, two, late = masks[1].copy(), masks[1].copy(), masks[1].copy()
    empty[2] = 0  # a row of padding only
    two[0, 0] = 2  # not 0/1
    late[1, 0] = 0  # a row whose first token is padding
    masks += [rises, empty, two, late, np.ones((2, seq_len), np.int32)]
    for mask in masks:
        zeros = np.zeros_like(mask)
        graph = run_graph(length, {"input_ids": zeros, "input_mask": mask, "segment_ids": zeros}, ["length"])
        ours = batch_length(mask, sizes)["length"]
        if int(graph["length"]) != ours:
            raise GraphError(
                f"target=stablehlo: the runtime's length rule picks width {ours} for a mask where the graph's "
                f"length part picks {int(graph['length'])} (row sums {mask.sum(axis=1).tolist()}); the runtime "
                "could not reproduce the compiled model's buckets. Use target=xla for this graph."
            )


def _part_input_names(device: Graph) -> list[str]:
    """The inputs the outputs read (not label_ids and is_real_example when removal=none kept them)."""
    needed = ancestors(device.graph_def, device.outputs.values())
    return [key for key in sorted(device.inputs) if split_input(device.inputs[key])[0] in needed]


def _part_inputs(device: Graph, names: list[str]) -> list[dict]:
    """Each input's name, shape (the batch null) and dtype; every other dimension must be static."""
    nodes = nodes_by_name(device.graph_def)
    result = []
    for key in names:
        node = nodes[split_input(device.inputs[key])[0]]
        dims = [dim.size for dim in node.attr["shape"].shape.dim]
        if not dims or any(size < 0 for size in dims[1:]):
            raise GraphError(
                f"target=stablehlo: input {key} of the device part has shape {dims}; only the batch may be unknown."
            )
        result.append({"name": key, "shape": [None, *dims[1:]], "dtype": tf.as_dtype(node.attr["dtype"].type).name})
    return result


def _general_inputs(per_width: list[list[dict]]) -> list[dict]:
    """The inputs at every width -> one description: a dimension that differs between buckets is null."""
    result = []
    for entries in zip(*per_width, strict=True):
        shapes = [entry["shape"] for entry in entries]
        shape = [dims[0] if len(set(dims)) == 1 else None for dims in zip(*shapes, strict=True)]
        result.append({**entries[0], "shape": shape})
    return result


def _static_dims(device: Graph, key: str) -> list[int]:
    shape = static_shapes(device)[device.outputs[key]]
    return shape.as_list()[1:]


def _device_function(device: Graph, input_keys: list[str], weight_names: list[str]):
    """(inputs..., weights...) -> (probabilities, logits), jit-compiled: the weights are parameters, not captures."""
    pruned = pruned_function(device, input_keys, weight_names, SERVING_OUTPUTS)
    return tf.function(lambda *arguments: tuple(pruned(*arguments)), jit_compile=True, autograph=False)


def emit_text(
    function,
    inputs: list[dict],
    weights: Mapping[str, np.ndarray],
    weight_names: list[str],
    batch_size: int,
    name: str,
) -> str:
    specs = [tf.TensorSpec([batch_size, *entry["shape"][1:]], tf.as_dtype(entry["dtype"])) for entry in inputs]
    specs += [tf.TensorSpec(weights[name].shape, tf.as_dtype(weights[name].dtype)) for name in weight_names]
    text = function.experimental_get_compiler_ir(*specs)(stage="stablehlo")
    # NOTE: canonical text: the module is named for its shape, not TensorFlow's per-process function counter.
    text = _MODULE_NAME.sub(f"module @{name}", text, count=1)
    text = _FILE_LOCATION.sub("loc(unknown)", text)
    foreign = sorted(set(_FOREIGN_OP.findall(text)))
    if foreign:
        gelu = " (mhlo.erf: the exact GELU's erf; gelu=tanh replaces it)" if "mhlo.erf" in foreign else ""
        raise GraphError(
            f"target=stablehlo: the module {name} uses {foreign}, ops of XLA's own dialects that a "
            f"StableHLO portable artifact cannot hold{gelu}. Use target=xla for this graph."
        )
    calls = sorted(set(re.findall(r"custom_call @(\w+)", text)))
    if calls:
        raise GraphError(
            f"target=stablehlo: the module {name} calls {calls}, custom calls tied to one platform; "
            "it would not be portable. Use target=xla for this graph."
        )
    return text


def portable_artifact(text: str) -> tuple[bytes, str]:
    """StableHLO text -> (portable artifact, its version): the oldest version TensorFlow can write it for,
    since a consumer reads any version from the oldest it supports up to its own."""
    serializer = _serializer()
    try:
        version = serializer.get_minimum_version()
        return serializer.serialize_portable_artifact_str(text, version), version
    except Exception:  # an op or attribute newer than that version: the producer's own version
        version = serializer.get_current_version()
        return serializer.serialize_portable_artifact_str(text, version), version


# ---- the host part as a NumPy recipe -------------------------------------------------------------


def host_recipe(host: Graph, seq_len: int) -> HostRecipe:
    """The host part (embedding lookups + LayerNorm, the mask) -> the recipe bertc.runtime.stablehlo computes it from,
    checked against TensorFlow running the host part on seeded batches."""
    if set(host.outputs) != set(HOST_KEYS):
        raise ConfigError(
            "target=stablehlo computes the host part in NumPy and knows the cut at "
            f"{', '.join('@' + key for key in HOST_KEYS)} "
            f"(partition=cpu_embed); this plan's boundaries are {sorted(host.outputs)}. Use those, or partition=none."
        )
    shapes = _output_specs(host)
    found = _embedding_weights(host)
    absent = [role for role, value in found.items() if not value]
    if absent:
        raise GraphError(
            f"target=stablehlo: the host part has no {', '.join(absent)} where BERT's embedding has one; "
            "use partition=none."
        )
    recipe = HostRecipe(
        embedding_output=EmbeddingRecipe(
            word_embeddings=found["word"][0],
            token_type_embeddings=found["token type"][0],
            position_embeddings=found["position"][0],
            layer_norm=LayerNormRecipe(gamma=found["gamma"][0], beta=found["beta"][0], epsilon=found["epsilon"][0]),
            dtype=shapes["embedding_output"][1],
            formula="LayerNorm((word[input_ids] + token_type[segment_ids]) + position[:seq_len]), float32",
        ),
        attention_mask=_mask_recipe(nodes_by_name(host.graph_def), shapes["attention_mask"], seq_len),
    )
    _check_recipe(host, recipe, seq_len)
    return recipe


def _embedding_weights(host: Graph) -> dict[str, list]:
    """What the embedding is made of -> the weights found (empty where none): the lookups by the shape reader's
    own patterns (bertc/analysis/structure.py: LOOKUP_VARIANTS, POSITION_VARIANTS), the LayerNorm's parameters."""
    index = Index.of(host)

    def read_by(op_types: tuple[str, ...], position: int) -> list[str]:
        behind = (
            weight_behind(index, split_input(node.input[position])[0])
            for node in host.graph_def.node
            if node.op in op_types
        )
        return [weight for weight in behind if weight in host.weights]

    words = embedding_tables(host, "input_ids", index=index)[:1]
    token_types = [name for name in embedding_tables(host, "segment_ids", index=index) if name not in words]
    lookups = [*words, *token_types]
    positions = [name for name in embedding_tables(host, None, POSITION_VARIANTS, index) if name not in lookups]
    return {
        "word": words,
        "token type": token_types[:1],
        "position": positions[:1],
        "gamma": (read_by(("Mul",), 1) + read_by(("Mul",), 0))[:1],
        "beta": read_by(("Sub",), 0)[:1],
        "epsilon": layer_norm_epsilons(host)[:1],
    }


def _output_specs(part: Graph) -> dict[str, tuple[list, str]]:
    shapes = static_shapes(part)
    nodes = nodes_by_name(part.graph_def)
    result = {}
    for key, tensor in part.outputs.items():
        node = nodes[split_input(tensor)[0]]
        dtype = tf.as_dtype(node.attr["T"].type).name if "T" in node.attr else "float32"
        result[key] = (shapes[tensor].as_list(), dtype)
    return result


def _mask_recipe(nodes, spec: tuple[list, str], seq_len: int) -> MaskRecipe:
    shape, dtype = spec
    if shape[1:] == [1, 1, seq_len] and f"{ATTENTION_BIAS_SCOPE}/value" in nodes:
        value = float(const_value(nodes[f"{ATTENTION_BIAS_SCOPE}/value"]))
        return MaskRecipe(
            form="bias",
            bias_value=value,
            dtype=dtype,
            shape=[None, 1, 1, seq_len],
            formula="(1 - float32(input_mask))[:, None, None, :] * bias_value",
        )
    if shape[1:] == [seq_len, seq_len]:
        return MaskRecipe(
            form="mask",
            dtype=dtype,
            shape=[None, seq_len, seq_len],
            formula="float32(input_mask)[:, None, :] broadcast over the from axis (mask=original)",
        )
    raise GraphError(
        f"target=stablehlo: the attention mask boundary is {shape} {dtype}; "
        "the runtime knows [B,1,1,T] biases and [B,F,T] masks."
    )


def _check_recipe(host: Graph, recipe: HostRecipe, seq_len: int) -> None:
    vocab = host.weights[recipe.embedding_output.word_embeddings].shape[0]
    for batch in synthetic_batches(2, 3, seq_len, vocab, seed=7):
        feeds = batch.feeds()
        expected = run_graph(host, feeds)
        computed = compute_host(recipe, host.weights, feeds)
        for key in HOST_KEYS:
            want, got = np.asarray(expected[key], np.float32), np.asarray(computed[key], np.float32)
            scale = max(1.0, float(np.abs(want).max()))
            tolerance = (
                1e-5 * scale
                if expected[key].dtype == np.float32
                else float(ml_dtypes.finfo(expected[key].dtype).eps) * scale
            )
            diff = float(np.abs(want - got).max())
            if want.shape != got.shape or not diff <= tolerance:
                raise GraphError(
                    f"target=stablehlo: the NumPy recipe of the host part's {key} differs from TensorFlow's "
                    f"by {diff:.3g} "
                    f"(allowed {tolerance:.3g}); the runtime could not reproduce it. Use partition=none."
                )


# ---- after the SavedModel is written: model/stablehlo/ -------------------------------------------


def write_portable(module: CompiledBert, build: PortableBuild, artifact: Path, options: TargetOptions) -> None:
    """Write model/stablehlo/: the modules, weights.safetensors and manifest.json."""
    from safetensors.numpy import save_file

    folder = Path(artifact) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    modules = _write_modules(folder, build)
    # NOTE: from the module's variables: the graph's arrays were freed once the variables held them (one copy)
    weights = module.device_part.arrays() | (module.host.arrays() if module.host is not None else {})
    save_file({name: np.ascontiguousarray(weights[name]) for name in sorted(weights)}, str(folder / WEIGHTS_FILE))
    length = None
    if build.buckets:
        length = Length(mode="buckets", sizes=list(build.buckets), rule=LENGTH_RULE, computed_by="the runtime")
    manifest = Manifest(
        format=BUCKETS_FORMAT if build.buckets else FORMAT,
        fingerprint=options.fingerprint,
        precision=options.precision,
        seq_len=build.seq_len,
        length=length,
        model_shape=build.model_shape,
        tensorflow=tf.__version__,
        serving_inputs=[Tensor(name=name, dtype="int32", shape=[None, build.seq_len]) for name in SERVING_INPUTS],
        input_limits=dict(build.input_limits) if build.input_limits is not None else None,
        host=build.host,
        modules=modules,
        parameters=[Parameter(kind="input", **entry) for entry in build.inputs]
        + [
            Parameter(kind="weight", name=name, shape=list(weights[name].shape), dtype=weights[name].dtype.name)
            for name in build.weight_names
        ],
        outputs=[Tensor(**entry) for entry in build.outputs],
        weights=_regeneration(weights, options),
        reference=_reference(module, options, build),
    )
    (folder / MANIFEST).write_text(_json(manifest_json(manifest)) + "\n")


def _write_modules(folder: Path, build: PortableBuild) -> list[Module]:
    """Each module as text and bytecode -> its manifest entry: batch size, width, input shapes, files, digests."""
    entries = []
    for emitted in build.modules:
        text_name, bytecode_name = f"{emitted.stem}.mlir", f"{emitted.stem}.mlirbc"
        (folder / text_name).write_text(emitted.text)
        (folder / bytecode_name).write_bytes(emitted.bytecode)
        entries.append(
            Module(
                batch_size=emitted.batch_size,
                seq_len=emitted.width,
                inputs=[list(shape) for shape in emitted.inputs],
                text=text_name,
                text_sha256=file_digest(emitted.text.encode()),
                bytecode=bytecode_name,
                bytecode_sha256=file_digest(emitted.bytecode),
                stablehlo_version=emitted.version,
            )
        )
    return entries


def _json(value, indent: str = "") -> str:
    """JSON with one key per line and lists of numbers on one line (a reference batch stays readable)."""
    inner = indent + " "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(key)}: {_json(item, inner)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value and any(isinstance(item, (dict, list)) for item in value):
        return "[\n" + ",\n".join(inner + _json(item, inner) for item in value) + "\n" + indent + "]"
    return json.dumps(value)


def _regeneration(weights: Mapping[str, np.ndarray], options: TargetOptions) -> Weights:
    """Per weight: digest, dtype, and (for a preset's seeded weights) how to remake it with NumPy, each
    recipe checked here by remaking the weight and comparing bytes."""
    digests = {name: tensor_digest(value) for name, value in sorted(weights.items())}
    scales: dict[str, float | None] = {}
    recipe: Regeneration | None = None
    note = None
    if options.seeded_preset is not None:
        recipe, note = _seeded_recipe(weights, digests, scales, options.seeded_preset, options.scale_folded)
    tensors = {
        name: WeightTensor(
            shape=list(weights[name].shape),
            dtype=weights[name].dtype.name,
            sha256=digest,
            source=name,
            scale=scales.get(name),
        )
        for name, digest in digests.items()
    }
    return Weights(file=WEIGHTS_FILE, regenerate=recipe, regenerate_note=note, tensors=tensors)


def _seeded_recipe(
    weights: Mapping[str, np.ndarray],
    digests: Mapping[str, str],
    scales: dict[str, float | None],
    seeded_preset: tuple[str, int],
    scale_folded: bool,
) -> tuple[Regeneration | None, str | None]:
    """How to remake a preset's seeded weights -> (the recipe, or None and why not); `scales` gets the factor
    each weight was found to be drawn with (fold_scale's query scaling), in order, up to the first it cannot remake."""
    from bertc.model.config import preset
    from bertc.model.weights import random_weight

    size, seed = seeded_preset
    config = preset(size)
    candidates = [None] + ([float(np.float32(1.0 / math.sqrt(float(config.head_size))))] if scale_folded else [])
    for name, digest in digests.items():
        base = random_weight(name, tuple(weights[name].shape), config, seed)
        for scale in candidates:
            value = base if scale is None else (base * np.float32(scale)).astype(np.float32)
            if tensor_digest(value.astype(weights[name].dtype)) == digest:
                scales[name] = scale
                break
        else:
            return None, f"{name} is not a transform bertc knows of its seeded value"
    recipe = Regeneration(
        generator="bertc.model.weights.random_weight",
        size=size,
        seed=seed,
        initializer_range=config.initializer_range,
        steps=(
            "random_weight(source, shape) [* float32(scale), in float32] -> astype(dtype); digest sha256 of the bytes"
        ),
    )
    return recipe, None


def _reference(module: CompiledBert, options: TargetOptions, build: PortableBuild) -> Reference:
    """Seeded batches and what the TensorFlow build computes for them: the runtime's self-check, anywhere.

    Without buckets, one batch. With buckets, one batch per bucket (its longest row the bucket's size,
    the others shorter) and one whose mask is not right-padded (the full length): each with the width
    the TensorFlow build ran it at, so the self-check runs every bucket module and the length rule."""
    buckets = build.buckets
    vocab = (build.input_limits or {}).get("input_ids", 1000)
    note = "outputs of model/ (TensorFlow, XLA on the build machine's CPU) for these inputs"
    if not buckets:
        batch = synthetic_batches(1, options.batch_size, options.seq_len, vocab, seed=11)[0]
        return Reference(**_reference_batch(module, batch.feeds()), tolerance=options.gate_tolerance, note=note)
    rng = np.random.default_rng(11)
    batches = []
    for index, size in enumerate(buckets):
        shorter = buckets[index - 1] + 1 if index else 1  # rows that would fit no smaller bucket
        lengths = rng.integers(shorter, size + 1, options.batch_size)
        lengths[0], lengths[-1] = size, 1  # the bucket's longest row, and a one-token row beside it
        batches.append(synthetic_feeds(lengths, options.seq_len, vocab, seed=11 + index))
    fallback = synthetic_feeds(rng.integers(1, buckets[0] + 1, options.batch_size), options.seq_len, vocab, seed=10)
    fallback["input_mask"][-1, options.seq_len - 1] = 1  # a 1 after a 0: not right-padded, the full length
    batches.append(fallback)
    return Reference(
        batches=[ReferenceBatch(**_reference_batch(module, feeds)) for feeds in batches],
        tolerance=options.gate_tolerance,
        note=note + "; width: the sequence length that build ran each batch at",
    )


def _reference_batch(module: CompiledBert, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A ReferenceBatch's fields: the feeds, (with buckets) the width the build ran them at, its outputs."""
    outputs = module.serve(**{key: tf.constant(value) for key, value in feeds.items()})
    entry = {key: value.tolist() for key, value in feeds.items()}
    if module.length is not None:
        entry["width"] = int(module.length.lengths(feeds["input_mask"])["length"])
    return {
        **entry,
        "probabilities": outputs[module.output_keys["probabilities"]].numpy().tolist(),
        "logits": outputs[module.output_keys["logits"]].numpy().tolist(),
    }
