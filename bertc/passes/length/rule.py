"""The length step's rule in NumPy, for a runtime that runs the body without the graph's length part.

bertc/runtime/ (target=stablehlo's artifact, served with no TensorFlow) imports it: keep it NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The rule in words, as target=stablehlo's manifest records it.
LENGTH_RULE = (
    "L = max(1, the largest row sum of input_mask); the smallest size >= L, or the last (full) size when the mask "
    "is not 0/1, not right-padded (a 1 after a 0) or has a row whose first token is padding"
)


def batch_length(input_mask: np.ndarray, sizes: Sequence[int]) -> dict[str, int]:
    """The length step's rule (trim_sequence_length.py computes it in the graph) in NumPy: {length: the bucket
    the batch runs at, real_length: its longest real row, bucket_index}. target=stablehlo checks this against the
    graph's own length computation at build time."""
    mask = np.asarray(input_mask)
    binary = bool(np.all((mask == 0) | (mask == 1)))
    right_padded = bool(np.all(mask[:, 1:] <= mask[:, :-1]))
    rows_real = bool(np.all(mask[:, :1] == 1))
    real = max(int(mask.astype(np.int64).sum(axis=1).max(initial=0)), 1)
    if binary and right_padded and rows_real:
        index = int(np.sum(np.asarray(sizes) < real))
    else:
        index = len(sizes) - 1
    return {"length": int(sizes[index]), "real_length": real, "bucket_index": index}
