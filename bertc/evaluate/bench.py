"""(original, compiled, settings) -> latency and throughput of both, measured in one process, interleaved.

Each round runs every (model, batch size) for a fixed time after warm-up, alternating the models
(and which goes first), so drift in the machine (thermal, other load) hits both alike. Batch-1
calls give the latency percentiles; every batch size gives sequences per second. The speedup is compiled / original
throughput at the largest batch size, and its batch-1 latency ratio is reported beside it. Each
figure's spread over the rounds, and whether the speedup can be trusted, come from bertc/evaluate/spread.py.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Mapping

import numpy as np

from bertc.evaluate.batches import synthetic_batches
from bertc.evaluate.spread import add_spread, load_average


def _feeds(batch_size: int, seq_len: int, vocab: int) -> dict[str, np.ndarray]:
    return synthetic_batches(1, batch_size, seq_len, vocab, seed=1234)[0].feeds()


def _timed_calls(model: Callable, batches: list[Mapping[str, np.ndarray]], seconds: float) -> list[float]:
    """Call durations for `seconds` (3 calls at least), cycling through `batches` from the first."""
    durations = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(durations) < 3:
        start = time.perf_counter()
        model(batches[len(durations) % len(batches)])
        durations.append(time.perf_counter() - start)
    return durations


def _warm_up(
    models: Mapping[str, Callable], feeds: Mapping[int, list], batch_sizes: tuple[int, ...], warmup: int
) -> None:
    """`warmup` calls of every model at every batch size, cycling through that size's batches."""
    for model in models.values():
        for size in batch_sizes:
            for index in range(warmup):
                model(feeds[size][index % len(feeds[size])])


def _interleaved_rounds(
    models: Mapping[str, Callable],
    feeds: Mapping[int, list],
    batch_sizes: tuple[int, ...],
    rounds: int,
    seconds: float,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, dict[int, list[list[float]]]]:
    """Each round times every (batch size, model) for `seconds` on that size's batches (`feeds`): model ->
    size -> one list of call durations per round."""
    durations: dict[str, dict[int, list[list[float]]]] = {name: {size: [] for size in batch_sizes} for name in models}
    order = list(models.items())
    for round_number in range(rounds):
        for size in batch_sizes:
            # NOTE: the order flips every round: a model that always ran second would always inherit the first's heat.
            for name, model in order if round_number % 2 == 0 else order[::-1]:
                progress(f"round {round_number + 1}/{rounds}, batch {size}, {name}")
                durations[name][size].append(_timed_calls(model, feeds[size], seconds))
    return durations


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
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    feeds = {size: [_feeds(size, seq_len, vocab)] for size in batch_sizes}
    _warm_up(models, feeds, batch_sizes, warmup)
    loads = [load_average()]
    # Call durations kept per round: each figure's spread over the rounds is reported (bertc/evaluate/spread.py).
    durations = _interleaved_rounds(models, feeds, batch_sizes, rounds, seconds, progress)
    loads.append(load_average())
    result: dict = {"seq_len": seq_len, "rounds": rounds, "seconds_per_measurement": seconds}
    for name in models:
        entry: dict = {"throughput": {}}
        for size in batch_sizes:
            calls = [call for round_calls in durations[name][size] for call in round_calls]
            entry["throughput"][str(size)] = float(size * len(calls) / sum(calls))
        if 1 in batch_sizes:
            ms = np.array([call for round_calls in durations[name][1] for call in round_calls]) * 1000
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


# ---- realistic lengths (issue 15): batches with a real mix of lengths, beside the full-length ones ----


def benchmark_lengths(
    models: Mapping[str, Callable],
    seq_len: int,
    vocab: int,
    timing: Mapping,
    dataset: str | None = None,
    vocab_file: str | None = None,
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
    _warm_up(models, feeds, batch_sizes, warmup)
    durations = _interleaved_rounds(models, feeds, batch_sizes, rounds, seconds)
    for name in models:
        calls = {size: [call for round_calls in durations[name][size] for call in round_calls] for size in batch_sizes}
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
