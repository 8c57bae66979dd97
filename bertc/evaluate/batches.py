"""Seeded serving inputs (batches of input_ids, input_mask, segment_ids) for verify, bench and the targets'
self-checks (NumPy only)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    labels: np.ndarray | None = None
    source: str = "synthetic"
    lines: np.ndarray | None = None  # dataset batches: the TSV line of each row

    def feeds(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "input_mask": self.input_mask, "segment_ids": self.segment_ids}


def synthetic_batches(batches: int, batch_size: int, seq_len: int, vocab: int, seed: int) -> list[Batch]:
    """Seeded batches: [CLS] a [SEP] b [SEP] with random lengths, the rest padding. Batch k's rows are at most
    (k % 4 + 1) / 4 of seq_len long, so four batches reach every quarter (each length bucket runs in verify)."""
    return list(SeededBatches(batches, batch_size, seq_len, vocab, seed))


@dataclasses.dataclass(frozen=True)
class SeededBatches:
    """synthetic_batches made one at a time, on each pass over them: verify.batches of them cost one batch of
    memory, however many there are (a list of 100000 batches of 64 rows would take 10 GB)."""

    batches: int
    batch_size: int
    seq_len: int
    vocab: int
    seed: int

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed)
        for number in range(self.batches):
            yield self._batch(rng, max(4, (self.seq_len * (number % 4 + 1)) // 4))

    def _batch(self, rng: np.random.Generator, cap: int) -> Batch:
        vocab = self.vocab
        ids = np.zeros((self.batch_size, self.seq_len), np.int32)
        mask = np.zeros_like(ids)
        segments = np.zeros_like(ids)
        for row in range(self.batch_size):
            length = int(rng.integers(4, cap + 1))
            first = int(rng.integers(1, length - 2))
            ids[row, :length] = rng.integers(1000, vocab, length) if vocab > 1000 else rng.integers(1, vocab, length)
            ids[row, 0], ids[row, first], ids[row, length - 1] = (
                min(101, vocab - 1),
                min(102, vocab - 1),
                min(102, vocab - 1),
            )
            mask[row, :length] = 1
            segments[row, first + 1 : length] = 1
        return Batch(ids, mask, segments)


class Chained:
    """Collections of batches passed over in turn, again on each pass (SeededBatches are made anew)."""

    def __init__(self, *parts: Iterable[Batch]):
        self.parts = parts

    def __iter__(self) -> Iterator[Batch]:
        return itertools.chain.from_iterable(self.parts)
