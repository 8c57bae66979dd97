"""A length-polymorphic graph's length part -> the serving function's first stage: the cut, or a switch.

Dynamic-shape targets (tf) run the length part and pass its cut inputs on. A device part compiled
for static shapes (target=xla or neuron with length=buckets) cannot take a data-dependent width, so
the serving function reads the bucket index the length part computes and `tf.switch_case`s into one
branch per bucket: each slices the inputs statically to its size and calls the parts, so XLA compiles
one function per bucket (at build time, by `warm_up_buckets`) and a Neuron build calls the trace made
for that bucket's width.

length=pack at static shapes (target=xla) dispatches the same way on L, and its packed row count T is
bucketed in the graph (pack_tokens.py pads PACK_INDEX to the next multiple of token_step):
`split_pack_index` takes the pack index's computation (a data-dependent `Where`, then the padding) out of
the device part, so it runs in plain TensorFlow before the compiled function, which reads the padded index
as an input: XLA compiles one function per (batch size, L bucket, T bucket), all at build time
(`warm_up_packed`, the pairs from modes.pack_shapes).

The targets (bertc/targets/serving.py, xla.py) import this module; pass discovery does not (the package's PASSES).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf

from bertc.ir.graph import Graph, GraphError, ancestors, keep_nodes, make_placeholder, new_graph_def, tensor_name
from bertc.passes.length.contract import PACK_INDEX, bucket_sizes_of
from bertc.passes.length.modes import pack_shapes

PACK_INDEX_KEY = "pack_index"  # the device function's extra input at static shapes: PACK_INDEX, padded

LENGTH_SIGNATURE = "bertc_length"  # a second signature of the artifact: input_mask -> the length it runs at


class LengthStage(tf.Module):
    def __init__(self, length_graph: Graph, part_type, static_shapes: bool, seq_len: int):
        super().__init__(name="length")
        self.sizes = bucket_sizes_of(length_graph)
        self.dispatch = static_shapes and bool(self.sizes)
        self._part = part_type(length_graph, "length")
        self._seq_len = seq_len
        self.lengths = tf.function(
            self._lengths,
            input_signature=[tf.TensorSpec([None, seq_len], tf.int32, name="input_mask")],
            autograph=False,
        )

    def _lengths(self, input_mask):
        """For reports and tests: the width a batch runs at, its longest real row, and its bucket."""
        zeros = tf.zeros_like(input_mask)
        outputs = self._part({"input_ids": zeros, "input_mask": input_mask, "segment_ids": zeros})
        return {key: outputs[key] for key in ("length", "real_length", "bucket_index") if key in outputs}

    def __call__(self, features: Mapping[str, tf.Tensor], run_parts: Callable) -> dict[str, tf.Tensor]:
        outputs = self._part(features)
        if not self.dispatch:
            return run_parts({key: outputs[key] for key in features})

        def branch(size: int):
            def run():
                cut = {key: tf.ensure_shape(value[:, :size], [None, size]) for key, value in features.items()}
                result = run_parts(cut)
                return result["probabilities"], result["logits"]

            return run

        probabilities, logits = tf.switch_case(outputs["bucket_index"], [branch(size) for size in self.sizes])
        return {"probabilities": probabilities, "logits": logits}


def warm_up_buckets(module, batch_size: int, seq_len: int) -> dict[str, float]:
    """One batch per bucket (rows as long as the bucket): {bucket size: seconds of that first call}."""
    token_step = getattr(module, "token_step", 0)
    if token_step and module.length.dispatch:  # length=pack at static shapes: a function per (L, T) pair
        return warm_up_packed(module, batch_size, seq_len, token_step)
    seconds = {}
    for size in module.length.sizes or (seq_len,):
        zeros = np.zeros((batch_size, seq_len), np.int32)
        mask = zeros.copy()
        mask[:, :size] = 1
        start = time.perf_counter()
        module.serve(zeros, mask, zeros)
        seconds[str(size)] = round(time.perf_counter() - start, 3)
    return seconds


def split_pack_index(device: Graph) -> tuple[Graph, Graph]:
    """(index part: the device part's inputs -> PACK_INDEX, the device part reading PACK_INDEX as an input)."""
    names = {node.name for node in device.graph_def.node}
    if PACK_INDEX not in names:
        raise GraphError(f"length=pack at static shapes: the device part has no {PACK_INDEX} to split at.")
    index = keep_nodes(device, ancestors(device.graph_def, [PACK_INDEX]))
    index = index.replace(outputs={PACK_INDEX_KEY: tensor_name(PACK_INDEX)})
    if index.weights:
        raise GraphError(f"length=pack: the pack index reads weights {sorted(index.weights)[:3]}; it should not.")
    needed = ancestors(device.graph_def, device.outputs.values(), stops=[PACK_INDEX])
    rest_def = new_graph_def()
    rest_def.versions.CopyFrom(device.graph_def.versions)
    rest_def.library.CopyFrom(device.graph_def.library)
    for node in device.graph_def.node:
        if node.name == PACK_INDEX:
            rest_def.node.append(make_placeholder(PACK_INDEX, tf.int32, [None]))
        elif node.name in needed:
            rest_def.node.add().CopyFrom(node)
    rest = keep_nodes(device.replace(graph_def=rest_def), needed)
    rest = rest.replace(inputs={**rest.inputs, PACK_INDEX_KEY: tensor_name(PACK_INDEX)})
    return index, rest


def pack_mask(batch_size: int, seq_len: int, size: int, tokens: int, below: int) -> np.ndarray:
    """A right-padded mask whose longest row is in (below, size] and whose rows hold `tokens` real tokens."""
    lengths = np.ones(batch_size, np.int64)
    lengths[0] = min(size, tokens - (batch_size - 1))
    rest = tokens - int(lengths.sum())
    for row in range(1, batch_size):
        extra = min(rest, size - 1)
        lengths[row] += extra
        rest -= extra
    if rest or lengths[0] <= below or lengths.sum() != tokens:
        raise ValueError(f"no batch of {batch_size} rows has {tokens} tokens with its longest in ({below}, {size}]")
    mask = np.zeros((batch_size, seq_len), np.int32)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return mask


def warm_up_packed(module, batch_size: int, seq_len: int, token_step: int) -> dict[str, float]:
    """One batch per (L bucket, T bucket) pair: {"LxT": seconds of that first call, the XLA compile included}."""
    seconds = {}
    sizes = module.length.sizes
    for size, tokens in pack_shapes(sizes, token_step, batch_size):
        below = max((other for other in sizes if other < size), default=0)
        mask = pack_mask(batch_size, seq_len, size, tokens, below)
        zeros = np.zeros_like(mask)
        start = time.perf_counter()
        module.serve(zeros, mask, zeros)
        seconds[f"{size}x{tokens}"] = round(time.perf_counter() - start, 3)
    return seconds
