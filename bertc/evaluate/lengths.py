"""The `length` group's checks against the target, what a run records of the lengths it ran, and realistic length

A benchmark of padded batches at full length measures work a real request never asks for: the
MRPC dev pairs average 53 tokens at sequence length 128. `length_mix` gives batches with a
realistic mix of real lengths, from a GLUE TSV when one is given, otherwise seeded synthetic
lengths with MRPC's distribution (mean 53, p90 70, max 86), capped at the model's length.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bertc.errors import ConfigError

if TYPE_CHECKING:
    from bertc.targets.base import Target

# MRPC dev (408 pairs, uncased WordPiece, [CLS] a [SEP] b [SEP]): token-count quantiles, from
# bertc.evaluate.verify's tokenizer on the GLUE file. A piecewise-linear inverse CDF through them gives
# mean 53, p90 70, max 86.
MRPC_QUANTILES = ((0.0, 26), (0.1, 37), (0.25, 44), (0.5, 53), (0.75, 63), (0.9, 70), (0.97, 78), (1.0, 86))


def check_length_target(mode: str, sizes, target: Target) -> None:
    """A length mode the target cannot run, or buckets without sizes, is a config error before anything runs."""
    if mode == "buckets" and (not sizes or min(sizes) < 1):
        raise ConfigError(f"length.sizes={list(sizes)} needs at least one size, each >= 1.")
    if mode == "trim" and target.static_shapes:
        raise ConfigError(
            f"length=trim needs a target with dynamic shapes, and target={target.name} compiles static shapes "
            "(one compile per distinct length). Use length=buckets (one compiled function per bucket) "
            "or target=tf."
        )
    if mode == "pack" and target.pack_refused:
        raise ConfigError(
            f"length=pack on target={target.name}: {target.pack_refused} On this target use length=buckets "
            "(one compiled function per bucket of the batch's longest row) or length=full; length=pack runs on "
            "target=tf, target=onnxruntime (dynamic shapes) and target=xla (its row count and the batch's "
            "longest row bucketed, one compiled function per pair)."
        )


def pack_shapes(sizes, token_step: int, batch_size: int) -> list[tuple[int, int]]:
    """length=pack at static shapes: the (L bucket, T bucket) pairs a batch of `batch_size` can run at, each a
    compiled function. L is the smallest of `sizes` holding the longest row; T, the batch's real tokens, is
    rounded up to a multiple of token_step, at most batch*L (the fallback, every position a row, is batch*S)."""
    shapes = []
    below = 0
    for size in sorted(sizes):
        fewest = below + 1 + (batch_size - 1)  # one row just longer than the bucket below, the others 1 token
        buckets = {
            min(step * token_step, batch_size * size) for step in range(1, -(-batch_size * size // token_step) + 1)
        }
        shapes += [(size, tokens) for tokens in sorted(buckets) if tokens >= fewest]
        below = size
    return shapes


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


# ---- what the run reports (report.json "length") -----------------------------------------------


def length_record(plan: Any, warmed: dict[str, float] | None) -> dict:
    """{"length": {mode, buckets, compile_seconds by bucket}} for a plan with the length step, else {}."""
    step = next((step for step in plan.steps if step.group == "length"), None)
    if step is None:
        return {}
    entry: dict = {"mode": step.params.mode}
    if warmed and step.params.mode == "pack":  # static shapes: "LxT" keys, a function per (L bucket, T bucket)
        entry["compiled_shapes"] = list(warmed)
        entry["compile_seconds"] = dict(warmed)
    elif warmed:
        entry["buckets" if step.params.mode == "buckets" else "warmed_lengths"] = [int(size) for size in warmed]
        entry["compile_seconds"] = dict(warmed)
    return {"length": entry}


def record_lengths_ran(record: dict, compiled: Any, batches: list) -> None:
    """Ask the artifact's length signature what width each verify batch ran at: {width: batches}."""
    if "length" not in record or not hasattr(compiled, "lengths"):
        return  # an engine's artifact without bertc's length signature (onnxruntime): not recorded
    ran: dict[str, int] = {}
    for batch in batches:
        width = int(compiled.lengths(batch.feeds()["input_mask"])["length"])
        ran[str(width)] = ran.get(str(width), 0) + 1
    record["length"]["ran"] = dict(sorted(ran.items(), key=lambda item: int(item[0])))
