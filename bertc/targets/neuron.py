"""target=neuron's compile (declared in bertc/targets/neuron_target.py): the device part compiled for AWS
Inferentia/Trainium by tensorflow-neuron(x), when installed.

Inferentia 1 (`tensorflow.neuron`): the whole serving function is traced with a
`subgraph_builder_function` built from the partition: a node pinned to the host device by the
partition step stays on the CPU, every other node may go to Neuron. Inferentia 2 / Trainium
(`tensorflow_neuronx`): the device part alone is traced; the host part stays plain TensorFlow.
Shapes are static at compile (`shape.batch_size`, the model's sequence length); with
`target.dynamic_batch` any batch is served (Inf1: the compiler's `--dynamic-batch-size`; Inf2:
bertc splits and pads the batch into compiled-size chunks). With `length=buckets` (Inf2/Trn only)
the device part is traced once per bucket, at that bucket's width, and the serving function
switches into the bucket the batch's real length picks. The precision becomes the compiler's
cast options in NEURON_CC_FLAGS, set from the plan for the trace only.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from typing import Any

import numpy as np
import tensorflow as tf

from bertc.errors import ConfigError
from bertc.ir.graph import Graph
from bertc.ir.signature import SERVING_INPUTS, SERVING_OUTPUTS
from bertc.targets.base import TargetOptions
from bertc.targets.serving import CompiledBert, Placement, SavedModelArtifact, served_outputs

NOT_INSTALLED = (
    "target=neuron needs tensorflow-neuron (Inferentia 1: import tensorflow.neuron) or tensorflow-neuronx "
    "(Inferentia 2, Trainium: import tensorflow_neuronx), and neither can be imported here. Install it from "
    "the Neuron package repository on a Neuron instance (the PyPI package named tensorflow-neuron is a "
    "placeholder that raises 'WRONG PACKAGE'). The same plan runs elsewhere with target=xla or target=tf."
)
INF1_BUCKETS = (
    "length=buckets with target=neuron needs tensorflow-neuronx (Inferentia 2, Trainium), which traces the device "
    "part once per bucket; Inferentia 1's tensorflow.neuron traces the whole serving function, and the bucket "
    "switch is control flow its compiler does not take. Use length=full on Inferentia 1, or target=xla."
)
# the compute dtype the precision rules use -> the compiler's cast options (neuron-cc for Inf1, neuronx-cc for
# Inf2/Trn1). Keyed by dtype, not by the preset's name: `precision=mixed precision.dtype=bfloat16` is bf16.
CAST_FLAGS = {
    "neuron": {
        "float32": ["--fp32-cast=none"],
        "float16": ["--fp32-cast=matmult-fp16"],
        "bfloat16": ["--fp32-cast=matmult-bf16"],
    },
    "neuronx": {
        "float32": ["--auto-cast=none"],
        "float16": ["--auto-cast=matmult", "--auto-cast-type=fp16"],
        "bfloat16": ["--auto-cast=matmult", "--auto-cast-type=bf16"],
    },
}


def find_compiler() -> tuple[str, object] | tuple[None, None]:
    """("neuronx", module) or ("neuron", module) for the importable tracer, else (None, None)."""
    for kind, name in (("neuronx", "tensorflow_neuronx"), ("neuron", "tensorflow.neuron")):
        try:
            return kind, importlib.import_module(name)
        except Exception:  # the PyPI placeholder raises on import; a broken install is no compiler either
            continue
    return None, None


def _usable_compiler(options: TargetOptions) -> tuple[str, Any]:
    """The importable tracer, if it can build what the options ask for; else the error that says why not."""
    kind, compiler = find_compiler()
    if kind is None or compiler is None:
        raise ConfigError(NOT_INSTALLED)
    if kind == "neuron" and options.length_mode == "buckets":
        raise ConfigError(INF1_BUCKETS)
    return kind, compiler


def compiler_flags(kind: str, compute_dtype: str, dynamic_batch: bool) -> list[str]:
    flags = list(CAST_FLAGS[kind][compute_dtype])
    if dynamic_batch and kind == "neuron":
        flags.append("--dynamic-batch-size")
    return flags


@contextlib.contextmanager
def _neuron_cc_flags(flags: list[str]):
    saved = os.environ.get("NEURON_CC_FLAGS")
    os.environ["NEURON_CC_FLAGS"] = " ".join(flags)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("NEURON_CC_FLAGS", None)
        else:
            os.environ["NEURON_CC_FLAGS"] = saved


def runs_on_neuron(host_device: str):
    """The partition as a subgraph_builder_function: False for host-pinned nodes and the inputs."""
    host = tf.DeviceSpec.from_string(host_device)

    def builder(node_def) -> bool:
        if node_def.op in ("Placeholder", "_Arg", "_Retval", "NoOp"):
            return False
        return not (node_def.device and tf.DeviceSpec.from_string(node_def.device).device_type == host.device_type)

    return builder


class NeuronBert(tf.Module):
    """Serves a Neuron-traced `CompiledBert.serve` under the signature names that module serves."""

    def __init__(self, traced, seq_len: int, owner: CompiledBert | None = None):
        super().__init__(name="bertc_neuron")
        self.traced = traced
        self.owner = owner
        # the user's own input and output keys, as the module it traces serves them
        names = owner.input_keys if owner is not None else list(SERVING_INPUTS)
        self.output_keys = owner.output_keys if owner is not None else {key: key for key in SERVING_OUTPUTS}
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, seq_len], tf.int32, name=name) for name in names],
            autograph=False,
        )

    def _serve(self, input_ids, input_mask, segment_ids):
        outputs = self.traced(input_ids, input_mask, segment_ids)  # the traced serve: already under the user's keys
        return served_outputs(outputs, {key: key for key in self.output_keys.values()})


def _chunked(device, batch_size: int):
    """Run a static-batch device function over any batch: pad to a multiple, map over chunks, trim."""

    def run(boundary: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        keys = sorted(boundary)
        total = tf.shape(boundary[keys[0]])[0]
        chunks = (total + batch_size - 1) // batch_size
        padded = []
        for key in keys:
            tensor = boundary[key]
            pad = chunks * batch_size - total
            tensor = tf.pad(tensor, [[0, pad]] + [[0, 0]] * (tensor.shape.rank - 1))
            padded.append(tf.reshape(tensor, tf.concat([[chunks, batch_size], tf.shape(tensor)[1:]], 0)))
        results = tf.map_fn(
            lambda parts: device(dict(zip(keys, parts))),
            tuple(padded),
            fn_output_signature=dict.fromkeys(SERVING_OUTPUTS, tf.float32),
        )
        return {key: tf.reshape(value, [-1, value.shape[-1]])[:total] for key, value in results.items()}

    return run


class NeuronCompiler:
    """target=neuron's compile (declared in bertc/targets/neuron_target.py)."""

    def check_available(self, options: TargetOptions) -> None:
        _usable_compiler(options)

    def lower(self, graph: Graph, options: TargetOptions):
        kind, compiler = _usable_compiler(options)  # also checked here: lower runs on its own in tests
        placement = Placement(
            options.host_device, None, jit_compile=False, static_shapes=True, input_limits=options.input_limits
        )
        module = CompiledBert(graph, options.seq_len, placement)
        zeros = np.zeros((options.batch_size, options.seq_len), np.int32)
        example = (tf.constant(zeros), tf.constant(np.ones_like(zeros)), tf.constant(zeros))
        with _neuron_cc_flags(compiler_flags(kind, options.compute_dtype, options.params.dynamic_batch)):
            if kind == "neuron":
                traced = compiler.trace(
                    module.serve, example, subgraph_builder_function=runs_on_neuron(options.host_device)
                )
                return SavedModelArtifact(NeuronBert(traced, options.seq_len, owner=module), options)
            return SavedModelArtifact(_trace_device_part(compiler, module, example, options), options)


def _trace_device_part(compiler, module: CompiledBert, example, options: TargetOptions) -> CompiledBert:
    """Inf2/Trn: the host part stays TensorFlow; the device part alone is traced at the compiled batch, once
    per bucket with length=buckets (the cut inputs at that bucket's width), else once at the full length."""
    features = dict(zip(SERVING_INPUTS, example))
    widths = module.length.sizes if module.length is not None and module.length.dispatch else ()
    traces = {}  # saved with the module: string keys (a tracked dict with int keys cannot be saved)
    for width in widths or (options.seq_len,):
        cut = {key: value[:, :width] for key, value in features.items()}
        boundary = module.host(cut) if module.host is not None else cut
        keys = tuple(sorted(boundary))
        device_call = tf.function(
            lambda *tensors, keys=keys: module.device_part(dict(zip(keys, tensors))), autograph=False
        )
        traced = compiler.trace(device_call, tuple(boundary[key] for key in keys))
        traces[f"s{width}"] = traced
        call = functools.partial(_call_traced, traced, keys)
        call = _chunked(call, options.batch_size) if options.params.dynamic_batch else call
        if widths:
            module.device_by_width[width] = call
        else:  # length=full: the one trace serves every call
            module._device_fn = call
    module.neuron_device = traces[f"s{options.seq_len}"]
    module.neuron_traces = traces
    return module


def _call_traced(traced, keys: tuple[str, ...], parts: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return traced(*[parts[key] for key in keys])
