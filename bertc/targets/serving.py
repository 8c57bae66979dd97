"""A rewritten Graph (one part, or host + device parts) -> a TF2 SavedModel that serves it.

The GraphDef goes into the serving function by `import_graph_def`, with every weight Placeholder
mapped to a `tf.Variable`: weights land in `variables/`, so `saved_model.pb` stays small even for
BERT-Large. The signature keeps the original model's input names (`input_ids`, `input_mask`,
`segment_ids` for google-research; the exporter's own otherwise, `Graph.serving_names`; int32,
any batch) -> `probabilities`, `logits`; with keep_signature also run_classifier's `label_ids` and
`is_real_example`, accepted and ignored. The file serves with plain TensorFlow.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from bertc.ir.graph import Graph, GraphError, pruned_function
from bertc.ir.signature import SERVING_INPUTS, SERVING_OUTPUTS, TRAINING_INPUTS
from bertc.passes.length.contract import split_length
from bertc.passes.length.dispatch import LENGTH_SIGNATURE, LengthStage, warm_up_buckets
from bertc.passes.partition.contract import split_partition
from bertc.targets.base import TargetOptions


@dataclasses.dataclass(frozen=True)
class Placement:
    """How the target runs each part: the device of each, and whether the device part is XLA-compiled."""

    host_device: str = "/device:CPU:0"
    device: str | None = None  # None: TensorFlow's own placement
    jit_compile: bool = False
    # the device part is compiled per input shape (XLA, a Neuron trace): length=buckets then dispatches to one
    # branch per bucket, each with static widths, instead of running the cut inputs at a data-dependent width
    static_shapes: bool = False
    # {"input_ids": vocab size, "segment_ids": type vocab size}: ids outside [0, limit) raise a clear
    # error instead of a GPU gather silently reading zeros. None: no guard.
    input_limits: Mapping[str, int] | None = None


class DeviceByWidth(dict):
    """Bucket width -> the device function a target compiled for it (target=neuron: one trace per bucket).

    A dict subclass on purpose: TensorFlow's attribute tracking wraps plain dicts, and a tracked dict with int
    keys cannot be saved. The functions' own trackable state is kept where the target stores it."""


def _variable_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", ".", name)


class _Part(tf.Module):
    """One GraphDef plus its weights as variables; calling it imports the graph into the caller."""

    def __init__(self, graph: Graph, name: str):
        super().__init__(name=name)
        self._input_keys = list(graph.inputs)
        self._output_keys = list(graph.outputs)
        self._weight_names = list(graph.weights)
        self.weights = {
            _variable_key(key): tf.Variable(value, trainable=False, name=_variable_key(key))
            for key, value in graph.weights.items()
        }
        # a list: not a tracked attribute of the module
        self._pruned = [pruned_function(graph, self._input_keys, self._weight_names, self._output_keys)]

    def arrays(self) -> dict[str, np.ndarray]:
        """The weights by their graph names, as read-only views of the variables' memory for variables on the
        CPU (no copy; `.numpy()` would copy every weight, BERT-Large's 1.3 GB again). A variable on a GPU is
        copied to the host."""
        return {name: np.asarray(self.weights[_variable_key(name)].read_value()) for name in self._weight_names}

    def __call__(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        arguments = [inputs[key] for key in self._input_keys]
        arguments += [self.weights[_variable_key(name)].read_value() for name in self._weight_names]
        values = self._pruned[0](*arguments)
        return dict(zip(self._output_keys, values))


class CompiledBert(tf.Module):
    def __init__(self, graph: Graph, seq_len: int, placement: Placement):
        super().__init__(name="bertc")
        length, graph = split_length(graph)  # length=trim|buckets: the cut or the bucket dispatch runs first
        static = placement.jit_compile or placement.static_shapes
        self.length = None if length is None else LengthStage(length, _Part, static, seq_len)
        host, device = split_partition(graph)
        self.host = _Part(host, "host") if host is not None else None
        self.device_part = _Part(device, "device")
        self._placement = placement
        self._seq_len = seq_len
        # The signature takes the user's own input names (bertc.frontends.signature), in bertc's order.
        self._names = {name: graph.serving_names.get(name, name) for name in SERVING_INPUTS}
        # ... and returns the user's output under its own key (bertc's addition under its name)
        self.output_keys = {name: graph.serving_outputs.get(name, name) for name in SERVING_OUTPUTS}
        serving_names = list(self._names.values())
        self._device_fn = tf.function(self._run_device, jit_compile=placement.jit_compile or None, autograph=False)
        # a target that compiles one device function per bucket (neuron) files them here by width
        self.device_by_width = DeviceByWidth()
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, seq_len], tf.int32, name=name) for name in serving_names],
            autograph=False,
        )

    def _run_device(self, boundary: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self.device_part(boundary)

    def _serve(self, input_ids, input_mask, segment_ids):
        # Python callers use bertc's names; the saved signature's keys are the TensorSpec names above.
        features = {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids}
        # The signature says [None, seq_len]; a caller that bypasses it gets this, not a reshape error.
        # One Assert per check, each a single reduction: the guard must cost next to nothing.
        lengths = tf.stack([tf.shape(tensor)[1] for tensor in features.values()])
        checks = [
            tf.debugging.Assert(
                tf.reduce_all(tf.equal(lengths, self._seq_len)),
                [
                    f"this model was compiled for sequence length {self._seq_len}: pad or truncate "
                    f"{', '.join(self._names.values())} to {self._seq_len} tokens; got lengths",
                    lengths,
                ],
            )
        ]
        for name, limit in (self._placement.input_limits or {}).items():
            # As uint32 a negative id becomes huge, so one comparison checks both ends of [0, limit).
            in_range = tf.reduce_all(tf.cast(features[name], tf.uint32) < limit)
            checks.append(
                tf.debugging.Assert(
                    in_range,
                    [
                        f"{self._names[name]} holds an id outside [0, {limit}), the model's table of {limit} rows; "
                        "check the tokenizer's vocabulary (or the segment ids) against the model's"
                    ],
                )
            )
        with tf.control_dependencies(checks):  # the checks run before any lookup reads an id
            features = {key: tf.identity(tensor) for key, tensor in features.items()}
        if self.length is not None:
            outputs = self.length(features, self._run_parts)
        else:
            outputs = self._run_parts(features)
        return served_outputs(outputs, self.output_keys)

    @property
    def input_keys(self) -> list[str]:
        """The signature's input keys, in bertc's order (input_ids, input_mask, segment_ids)."""
        return list(self._names.values())

    def _run_parts(self, features):
        device_fn = self._device_fn
        if self.device_by_width:  # one device function per bucket: the width is static inside a bucket's branch
            width = features["input_ids"].shape[1]
            if width not in self.device_by_width:
                raise GraphError(
                    f"no device function was compiled for width {width}; the target compiled "
                    f"{sorted(self.device_by_width)}. This is a bug in bertc: please report it."
                )
            device_fn = self.device_by_width[width]
        if self.host is not None:
            with tf.device(self._placement.host_device):
                features = self.host(features)
        if self._placement.device:
            with tf.device(self._placement.device):
                return device_fn(features)
        return device_fn(features)


def served_outputs(outputs: Mapping[str, tf.Tensor], keys: Mapping[str, str]) -> dict[str, tf.Tensor]:
    """{probabilities, logits} -> the same tensors under the keys the signature returns them."""
    return {keys[name]: tf.identity(outputs[name], name=re.sub(r"[^A-Za-z0-9_.]", "_", keys[name])) for name in keys}


def five_input_signature(module: tf.Module):
    """run_classifier's signature: the three served inputs plus label_ids and is_real_example, never read."""
    seq_len = module.serve.input_signature[0].shape[1]
    specs = [tf.TensorSpec([None, seq_len], tf.int32, name=name) for name in SERVING_INPUTS]
    specs += [tf.TensorSpec([None], tf.int32, name=name) for name in TRAINING_INPUTS]

    def serve_with_training_inputs(input_ids, input_mask, segment_ids, label_ids, is_real_example):
        del label_ids, is_real_example  # accepted so that a drop-in client's request is valid
        return module.serve(input_ids, input_mask, segment_ids)

    module.serve_with_training_inputs = tf.function(serve_with_training_inputs, input_signature=specs, autograph=False)
    return module.serve_with_training_inputs.get_concrete_function()


def save_compiled(module: CompiledBert, path: Path, keep_signature: bool = False) -> None:
    signature = five_input_signature(module) if keep_signature else module.serve.get_concrete_function()
    signatures = {"serving_default": signature}
    length = getattr(module, "length", None)
    if length is not None:  # length=trim|buckets: how long each batch ran
        signatures[LENGTH_SIGNATURE] = length.lengths.get_concrete_function()
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(module, str(path), signatures=signatures, options=options)


class SavedModelArtifact:
    """A module with a `serve` function, saved as a TensorFlow SavedModel and served by TensorFlow (Serving)."""

    def __init__(self, module: tf.Module, options: TargetOptions):
        self.module, self.options = module, options

    def warm_up(self, batch_size: int, seq_len: int) -> dict[str, float] | None:
        return warm_up(self.module, batch_size, seq_len)

    def save(self, path: Path) -> None:
        self.write(path)
        self.module = None  # NOTE: the weights live in the saved files now: verify and bench load two models

    def write(self, path: Path) -> None:
        save_compiled(self.module, path, keep_signature=self.options.keep_signature)

    def open(self, path: Path, served=None) -> ServedSavedModel:
        from bertc.frontends.signature import output_names

        names = served.input_names if served is not None else None
        return ServedSavedModel(path, names, output_names(served) if served is not None else None)

    def describe(self, path: Path, run_dir: Path, label: str, user: Mapping) -> dict:
        from bertc.run.serving_layout import write_serving_layout

        return write_serving_layout(path, run_dir, label, dict(user))


class ServedSavedModel:
    """A saved compiled model loaded by TensorFlow, fed under the user's input names; its outputs read back as
    probabilities and logits whatever keys the user's signature gave them (`output_names`: bertc name -> key)."""

    def __init__(
        self, path: Path, input_names: Mapping[str, str] | None = None, output_names: Mapping[str, str] | None = None
    ):
        self._loaded = tf.saved_model.load(str(path))
        self._function = self._loaded.signatures["serving_default"]
        # removal.keep_signature=true: label_ids and is_real_example are in the signature, never read.
        self._ignored = [key for key in self._function.structured_input_signature[1] if key in TRAINING_INPUTS]
        self._names = dict(input_names or {})
        self._outputs = {served: name for name, served in (output_names or {}).items()}

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ignored = {key: tf.zeros([len(feeds["input_ids"])], tf.int32) for key in self._ignored}
        named = {self._names.get(key, key): tf.constant(value) for key, value in feeds.items()}
        outputs = self._function(**named, **ignored)
        return {self._outputs.get(key, key): value.numpy() for key, value in outputs.items()}

    def lengths(self, input_mask: np.ndarray) -> dict[str, np.ndarray]:
        """length=trim|buckets: the width (and bucket) the artifact runs this mask at."""
        outputs = self._loaded.signatures[LENGTH_SIGNATURE](input_mask=tf.constant(input_mask))
        return {key: value.numpy() for key, value in outputs.items()}


def warm_up(module: CompiledBert, batch_size: int, seq_len: int) -> dict[str, float] | None:
    """Run once at the configured shape, so an XLA compile happens at build time, not at first request.

    A length-polymorphic model runs once per bucket: {bucket size: seconds of its first call}."""
    if getattr(module, "length", None) is not None:
        return warm_up_buckets(module, batch_size, seq_len)
    zeros = np.zeros((batch_size, seq_len), np.int32)
    module.serve(zeros, np.ones_like(zeros), zeros)
    return None
