"""target=xla's compile (declared in bertc/targets/xla_target.py): the device part compiled by XLA (jit_compile=True);
a host part stays plain TF on the CPU.

XLA compiles one function for one device, so a partitioned model's serving function calls two:
the host function pinned to the CPU, then the jit-compiled device function. The jit attribute is
saved with the function, so TensorFlow Serving uses XLA without bertc.

With length=pack the graph pads its packed row count to a bucket (the length step, static_shapes), and the
pack index is computed in plain TF before the compiled function (`PackedXlaBert`), which then sees a static
[T_bucket] index: one XLA function per (batch size, L bucket, T bucket), compiled at build time.
"""

from __future__ import annotations

import tensorflow as tf

from bertc.ir.graph import Graph, GraphError, pruned_function
from bertc.passes.length.contract import is_packed, split_length, token_step_of
from bertc.passes.length.dispatch import PACK_INDEX_KEY, split_pack_index
from bertc.passes.partition.contract import split_partition
from bertc.targets.base import TargetOptions
from bertc.targets.devices import resolve_device
from bertc.targets.serving import CompiledBert, Placement


def xla_module(graph: Graph, options: TargetOptions) -> CompiledBert:
    placement = Placement(
        options.host_device, resolve_device(options.device), jit_compile=True, input_limits=options.input_limits
    )
    if is_packed(graph):
        if not token_step_of(graph):
            raise GraphError(
                "target=xla: this length=pack graph takes its packed row count as it comes (a dynamic shape); "
                "build it for target=xla (the length step then buckets the row count: length.token_step)."
            )
        return PackedXlaBert(graph, options.seq_len, placement)
    return CompiledBert(graph, options.seq_len, placement)


class PackedXlaBert(CompiledBert):
    """length=pack at static shapes: each L bucket's branch computes the padded pack index in plain TF (on the
    host device), then calls the compiled device function with it: [T_bucket] is a static shape there."""

    def __init__(self, graph: Graph, seq_len: int, placement: Placement):
        super().__init__(graph, seq_len, placement)
        self.token_step = token_step_of(graph)
        _, device = split_partition(split_length(graph)[1])
        index, rest = split_pack_index(device)
        self._index_keys = list(index.inputs)
        self._index = [pruned_function(index, self._index_keys, [], list(index.outputs))]
        # The device part keeps its variables; its function becomes the one that reads the index as an input.
        part = self.device_part
        if set(rest.weights) != set(part._weight_names):
            raise GraphError("length=pack: splitting the pack index off the device part changed its weights.")
        part._input_keys = list(rest.inputs)
        part._pruned = [pruned_function(rest, part._input_keys, part._weight_names, part._output_keys)]

    def _run_parts(self, features):
        if self.host is not None:
            with tf.device(self._placement.host_device):
                features = self.host(features)
        with tf.device(self._placement.host_device):
            (index,) = self._index[0](*(features[key] for key in self._index_keys))
        boundary = {**features, PACK_INDEX_KEY: index}
        if self._placement.device:
            with tf.device(self._placement.device):
                return self._device_fn(boundary)
        return self._device_fn(boundary)
