"""Batches with realistic real lengths (a GLUE file's, or MRPC-like synthetic ones), for bench and the checks.

A benchmark of padded batches at full length measures work a real request never asks for: the
MRPC dev pairs average 53 tokens at sequence length 128. `length_mix` gives batches with a
realistic mix of real lengths, from a GLUE TSV when one is given, otherwise seeded synthetic
lengths with MRPC's distribution (mean 53, p90 70, max 86), capped at the model's length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bertc.errors import ConfigError

# MRPC dev (408 pairs, uncased WordPiece, [CLS] a [SEP] b [SEP]): token-count quantiles, from
# bertc.evaluate.verify's tokenizer on the GLUE file. A piecewise-linear inverse CDF through them gives
# mean 53, p90 70, max 86.
MRPC_QUANTILES = ((0.0, 26), (0.1, 37), (0.25, 44), (0.5, 53), (0.75, 63), (0.9, 70), (0.97, 78), (1.0, 86))


def mrpc_like_lengths(count: int, seq_len: int, seed: int) -> np.ndarray:
    """`count` real lengths drawn from MRPC's distribution, capped at seq_len (and at least 4)."""
    probabilities, tokens = zip(*MRPC_QUANTILES, strict=True)
    draws = np.random.default_rng(seed).random(count)
    return np.clip(np.rint(np.interp(draws, probabilities, tokens)), 4, seq_len).astype(np.int64)


def synthetic_feeds(lengths: np.ndarray, seq_len: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    """Right-padded inputs with these real lengths: [CLS] ids [SEP] ids [SEP] layout, random ids."""
    rng = np.random.default_rng(seed)
    batch = len(lengths)
    ids = np.zeros((batch, seq_len), np.int32)
    mask = np.zeros_like(ids)
    segments = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1000, vocab, length) if vocab > 1000 else rng.integers(1, vocab, length)
        mask[row, :length] = 1
        segments[row, length // 2 : length] = 1
    return {"input_ids": ids, "input_mask": mask, "segment_ids": segments}


def length_mix(
    seq_len: int,
    vocab: int,
    batch_size: int,
    *,
    tsv: str | Path | None = None,
    vocab_file: str | Path | None = None,
    batches: int = 16,
    seed: int = 0,
) -> tuple[list[dict[str, np.ndarray]], str]:
    """(batches of `batch_size` in file order, a description of the source) with real lengths.

    With a TSV and a vocab, the GLUE pairs are tokenized by bertc.evaluate.verify's reader and tokenizer;
    without, MRPC-like synthetic lengths. At most `batches` batches.
    """
    if tsv is not None:
        from bertc.evaluate.verify import read_glue_tsv, tokenize_pairs

        if vocab_file is None or not Path(vocab_file).is_file():
            raise ConfigError(f"a length mix from {tsv} needs the model's vocab.txt (got {vocab_file}).")
        pairs = read_glue_tsv(tsv, batches * batch_size)
        tokenized = tokenize_pairs(pairs, vocab_file, seq_len, batch_size)
        return [batch.feeds() for batch in tokenized[:batches]], f"{Path(tsv).name} ({len(pairs)} pairs, file order)"
    lengths = mrpc_like_lengths(batches * batch_size, seq_len, seed)
    feeds = [
        synthetic_feeds(lengths[start : start + batch_size], seq_len, vocab, seed + start)
        for start in range(0, len(lengths), batch_size)
    ]
    return feeds, f"synthetic MRPC-like lengths (seed {seed}, mean {lengths.mean():.0f}, max {lengths.max()})"
