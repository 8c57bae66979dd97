"""A length-polymorphic graph's length part -> the serving function's first stage: the cut, or a switch.

Dynamic-shape targets (tf) run the length part and pass its cut inputs on. A device part compiled
for static shapes (target=xla or neuron with length=buckets) cannot take a data-dependent width, so
the serving function reads the bucket index the length part computes and `tf.switch_case`s into one
branch per bucket: each slices the inputs statically to its size and calls the parts, so XLA compiles
one function per bucket (at build time, by `warm_up_buckets`) and a Neuron build calls the trace made
for that bucket's width.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf

from bertc.ir.graph import Graph, bucket_sizes_of

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
    seconds = {}
    for size in module.length.sizes or (seq_len,):
        zeros = np.zeros((batch_size, seq_len), np.int32)
        mask = zeros.copy()
        mask[:, :size] = 1
        start = time.perf_counter()
        module.serve(zeros, mask, zeros)
        seconds[str(size)] = round(time.perf_counter() - start, 3)
    return seconds
