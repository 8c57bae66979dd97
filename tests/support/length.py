"""length=trim|buckets: batches of mixed real lengths, a mask that is not right-padded, the bucket a batch takes."""

from __future__ import annotations

import numpy as np

from bertc.evaluate.lengths import synthetic_feeds

SIZES = (32, 64, 96, 128)


# Rows of each batch: real lengths spanning every bucket, plus a batch whose rows all fit the smallest.
MIXED_LENGTHS = [[5, 17, 31, 9], [40, 64, 12, 33], [70, 95, 66, 3], [97, 128, 20, 50], [1, 2, 3, 4]]


def mixed_batches(vocab: int) -> list[dict[str, np.ndarray]]:
    return [synthetic_feeds(np.array(lengths), 128, vocab, seed) for seed, lengths in enumerate(MIXED_LENGTHS)]


def not_right_padded(vocab: int) -> dict[str, np.ndarray]:
    feeds = synthetic_feeds(np.array([10, 20, 30]), 128, vocab, seed=9)
    feeds["input_mask"][1, 100] = 1  # a 1 after a 0: the row's token 100 is real and must be attended to
    feeds["input_ids"][1, 100] = 2000
    return feeds


def expected_length(mask: np.ndarray, sizes: tuple[int, ...]) -> int:
    longest = int(mask.sum(axis=1).max())
    return next(size for size in sizes if size >= longest) if sizes else longest


def serve(module, feeds):
    return module.serve(feeds["input_ids"], feeds["input_mask"], feeds["segment_ids"])
