"""length=pack: its parameters, batches of mixed real lengths, and parity of a packed graph with the original."""

from __future__ import annotations

import numpy as np

from bertc.evaluate.lengths import synthetic_feeds
from bertc.ir.graph import run_graph
from bertc.passes.length.contract import PACKED
from bertc.passes.length.trim_sequence_length import LengthParams

PACK = LengthParams("pack")


# Rows of each batch: one row at the full length beside rows of 2 and 3 tokens, a row of 1, lengths of every size.
MIXED_LENGTHS = [[5, 17, 31, 9], [128, 2, 3, 60], [3, 128], [1, 2, 3, 4], [70, 95, 66, 3, 41, 12, 88, 7]]


def mixed_batches(vocab: int) -> list[dict[str, np.ndarray]]:
    return [synthetic_feeds(np.array(lengths), 128, vocab, seed) for seed, lengths in enumerate(MIXED_LENGTHS)]


def with_packed(graph):
    """The graph with the packed hidden states entering the first layer as an extra output."""
    return graph.replace(outputs={**graph.outputs, "packed": f"{PACKED}:0"})


def assert_matches_original(loaded, graph, feeds, atol=1e-5):
    reference = run_graph(loaded.graph, feeds)
    outputs = run_graph(graph, feeds)
    for key in ("probabilities", "logits"):
        np.testing.assert_allclose(outputs[key], reference[key], atol=atol, rtol=0)
    return outputs
