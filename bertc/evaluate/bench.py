"""(original, compiled, settings) -> latency and throughput of both, measured in one process, interleaved.

Each round runs every (model, batch size) for a fixed time after warm-up, rotating the models' order
each round (with two, which goes first alternates), so drift in the machine (thermal, other load) hits
all alike. Batch-1 calls give the latency percentiles; every batch size gives sequences per second. The
speedup is compiled / original throughput at the largest batch size, and its batch-1 latency ratio is
reported beside it. Each figure's spread over the rounds, and whether the speedup can be trusted, come
from bertc/evaluate/spread.py.

The loop itself (warm_up, timed_calls, interleaved_rounds) takes plain callables and the batches each
is called with, so the scripts in bench/ time through it too.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bertc.evaluate.batches import synthetic_batches
from bertc.evaluate.spread import add_spread, load_average

# model -> workload (a batch size, or a caller's name for one) -> call durations in seconds, one list per round
Durations = dict[str, dict[Any, list[list[float]]]]


def _feeds(batch_size: int, seq_len: int, vocab: int) -> dict[str, np.ndarray]:
    return synthetic_batches(1, batch_size, seq_len, vocab, seed=1234)[0].feeds()


def warm_up(model: Callable, batches: Sequence, calls: int) -> None:
    """`calls` untimed calls of `model`, cycling through `batches` from the first."""
    for index in range(calls):
        model(batches[index % len(batches)])


def timed_calls(model: Callable, batches: Sequence, seconds: float, start: int = 0, min_calls: int = 3) -> list[float]:
    """Call durations for `seconds` (`min_calls` calls at least), cycling through `batches` from batch `start`."""
    durations: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(durations) < min_calls:
        batch = batches[(start + len(durations)) % len(batches)]
        began = time.perf_counter()
        model(batch)
        durations.append(time.perf_counter() - began)
    return durations


def interleaved_rounds(
    models: Mapping[str, Callable],
    feeds: Mapping[str, Mapping[Any, Sequence]],
    seconds: Mapping[Any, float],
    rounds: int,
    after_round: Callable[[int, Durations], None] = lambda number, durations: None,
) -> Durations:
    """Each round times every (workload, model) for `seconds[workload]` on that model's batches of it (`feeds`:
    model -> workload -> batches), each model going on through its batches where its previous round stopped;
    `after_round(round index, the durations so far)` follows each round."""
    durations: Durations = {name: {load: [] for load in seconds} for name in models}
    names = list(models)
    for number in range(rounds):
        # NOTE: the order rotates every round: a model that always ran second would always inherit the first's heat.
        order = names[number % len(names) :] + names[: number % len(names)]
        for load, limit in seconds.items():
            for name in order:
                done = sum(len(calls) for calls in durations[name][load])
                durations[name][load].append(timed_calls(models[name], feeds[name][load], limit, start=done))
        after_round(number, durations)
    return durations


def _warm_up_all(models: Mapping[str, Callable], feeds: Mapping[int, Sequence], calls: int) -> None:
    """`calls` warm-up calls of every model at every batch size (`feeds`: batch size -> batches)."""
    for model in models.values():
        for batches in feeds.values():
            warm_up(model, batches, calls)


def _all_calls(rounds: Sequence[Sequence[float]]) -> list[float]:
    return [call for round_calls in rounds for call in round_calls]


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def benchmark(
    models: Mapping[str, Callable],
    batch_sizes: tuple[int, ...],
    seq_len: int,
    vocab: int,
    rounds: int,
    seconds: float,
    warmup: int,
) -> dict:
    feeds = {size: [_feeds(size, seq_len, vocab)] for size in batch_sizes}
    _warm_up_all(models, feeds, warmup)
    loads = [load_average()]
    # Call durations kept per round: each figure's spread over the rounds is reported (bertc/evaluate/spread.py).
    durations = interleaved_rounds(models, dict.fromkeys(models, feeds), dict.fromkeys(batch_sizes, seconds), rounds)
    loads.append(load_average())
    result: dict = {"seq_len": seq_len, "rounds": rounds, "seconds_per_measurement": seconds}
    for name in models:
        entry: dict = {"throughput": {}}
        for size in batch_sizes:
            calls = _all_calls(durations[name][size])
            entry["throughput"][str(size)] = float(size * len(calls) / sum(calls))
        if 1 in batch_sizes:
            ms = np.array(_all_calls(durations[name][1])) * 1000
            entry["latency_ms"] = {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99)}
        result[name] = entry
    if "original" in models and "compiled" in models:
        largest = str(max(batch_sizes))
        result["speedup"] = result["compiled"]["throughput"][largest] / result["original"]["throughput"][largest]
        result["speedup_batch"] = int(largest)
        if 1 in batch_sizes:
            result["latency_ratio_p50"] = (
                result["compiled"]["latency_ms"]["p50"] / result["original"]["latency_ms"]["p50"]
            )
    add_spread(result, durations, batch_sizes, loads)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


# ---- realistic lengths: batches with a real mix of lengths, beside the full-length ones ----


def benchmark_lengths(
    models: Mapping[str, Callable],
    seq_len: int,
    vocab: int,
    timing: Mapping,
    dataset: str | None = None,
    vocab_file: str | Path | None = None,
) -> dict:
    """Throughput (and batch-1 p50) on batches of real lengths: the dataset's pairs in file order when
    given, else seeded MRPC-like lengths; each model cycles through the same batches, interleaved.
    `timing`: batch_sizes, rounds, seconds, warmup, as benchmark() takes them."""
    from bertc.evaluate.lengths import length_mix

    batch_sizes, rounds, seconds, warmup = (timing[key] for key in ("batch_sizes", "rounds", "seconds", "warmup"))
    result: dict = {}
    feeds: dict[int, list] = {}
    for size in batch_sizes:
        feeds[size], result["source"] = length_mix(
            seq_len, vocab, size, tsv=dataset, vocab_file=vocab_file, batches=max(8, 64 // size), seed=0
        )
    longest = [int(batch["input_mask"].sum(1).max()) for batch in feeds[max(batch_sizes)]]
    result["mean_longest_row"] = float(np.mean(longest))
    _warm_up_all(models, feeds, warmup)
    durations = interleaved_rounds(models, dict.fromkeys(models, feeds), dict.fromkeys(batch_sizes, seconds), rounds)
    for name in models:
        calls = {size: _all_calls(durations[name][size]) for size in batch_sizes}
        throughput = {str(size): float(size * len(calls[size]) / sum(calls[size])) for size in batch_sizes}
        entry: dict = {"throughput": throughput}
        if 1 in batch_sizes:
            entry["latency_ms"] = {"p50": float(np.percentile(np.array(calls[1]) * 1000, 50))}
        result[name] = entry
    if "original" in models and "compiled" in models:
        largest = str(max(batch_sizes))
        compiled, original = result["compiled"], result["original"]
        result["speedup"] = compiled["throughput"][largest] / original["throughput"][largest]
        if 1 in batch_sizes:
            result["latency_ratio_p50"] = compiled["latency_ms"]["p50"] / original["latency_ms"]["p50"]
    return result
