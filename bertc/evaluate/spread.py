"""Per-round benchmark timings -> each figure's spread over the rounds; whether the speedup can be trusted.

A figure measured once says nothing about how much it moves: the same demo model measured 10 to 29
seq/s across runs on a loaded machine. Each round's figure is kept, the spread is reported as min,
max and coefficient of variation (sample standard deviation / mean), and the speedup is marked
unreliable, with the reasons, when the rounds disagree or the machine was busier than its cores.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence

import numpy as np

CV_LIMIT = 0.10  # a figure whose rounds vary by more than 10% of their mean is too noisy to compare


def spread(values: Sequence[float]) -> dict:
    """{min, max, cv, rounds}; cv is None for a single round (nothing to compare it with)."""
    mean = statistics.fmean(values)
    cv = statistics.stdev(values) / mean if len(values) > 1 and mean > 0 else None
    return {"min": float(min(values)), "max": float(max(values)), "cv": cv, "rounds": len(values)}


def throughput_per_round(rounds: Sequence[Sequence[float]], batch_size: int) -> list[float]:
    """Sequences per second of each round, from its call durations in seconds."""
    return [batch_size * len(calls) / sum(calls) for calls in rounds]


def p50_per_round_ms(rounds: Sequence[Sequence[float]]) -> list[float]:
    return [float(np.percentile(np.array(calls) * 1000, 50)) for calls in rounds]


def load_average() -> dict:
    """The 1-minute load average and the cores it is compared with (None where the OS has no load average)."""
    try:
        one_minute = os.getloadavg()[0]
    except (AttributeError, OSError):
        one_minute = None
    return {"one_minute": one_minute, "cores": os.cpu_count()}


def figure_spreads(per_round: Mapping[str, Mapping[int, Sequence[Sequence[float]]]], batch_sizes) -> dict:
    """Per-round call times -> {model: {"throughput": {batch: spread}, "latency_p50_ms": spread}}."""
    spreads: dict = {}
    for name, by_size in per_round.items():
        entry: dict = {
            "throughput": {str(size): spread(throughput_per_round(by_size[size], size)) for size in batch_sizes}
        }
        if 1 in batch_sizes:
            entry["latency_p50_ms"] = spread(p50_per_round_ms(by_size[1]))
        spreads[name] = entry
    return spreads


def speedup_spread(per_round: Mapping[str, Mapping[int, Sequence[Sequence[float]]]], batch_size: int) -> dict:
    """The speedup of each round (compiled / original, both measured in that round): its min and max."""
    original = throughput_per_round(per_round["original"][batch_size], batch_size)
    compiled = throughput_per_round(per_round["compiled"][batch_size], batch_size)
    return spread([c / o for c, o in zip(compiled, original)])


def unreliable_reasons(spreads: Mapping[str, dict], speedup: dict, batch_size: int, loads: Sequence[dict]) -> list[str]:
    """Why the speedup should not be trusted; empty when nothing says so."""
    reasons = []
    if speedup["rounds"] < 2:
        reasons.append("one round only: the spread was not measured (bench.rounds=3 or more measures it)")
    for name, entry in spreads.items():
        cv = entry["throughput"][str(batch_size)]["cv"]
        if cv is not None and cv > CV_LIMIT:
            reasons.append(f"{name} b{batch_size} throughput varies {cv:.0%} between rounds (over {CV_LIMIT:.0%})")
    if speedup["rounds"] > 1 and speedup["min"] < 1.0 < speedup["max"]:
        reasons.append(f"per-round speedups {speedup['min']:.2f}x to {speedup['max']:.2f}x fall on both sides of 1")
    busiest = max((load["one_minute"] for load in loads if load["one_minute"] is not None), default=None)
    cores = loads[0]["cores"] if loads else None
    if busiest is not None and cores and busiest > cores:
        reasons.append(f"1-minute load average {busiest:.1f} exceeds the {cores} cores (other work was running)")
    return reasons


def add_spread(
    result: dict,
    per_round: Mapping[str, Mapping[int, Sequence[Sequence[float]]]],
    batch_sizes,
    loads: Sequence[dict],
) -> None:
    """Add to a bench result: each model's `spread`; `speedup_spread`, `load_average`, `reliable`, and
    `unreliable_reasons`."""
    spreads = figure_spreads(per_round, batch_sizes)
    for name, entry in spreads.items():
        result[name]["spread"] = entry
    result["load_average"] = {
        "before": loads[0]["one_minute"],
        "after": loads[-1]["one_minute"],
        "cores": loads[0]["cores"],
    }
    if "speedup" in result:
        batch = result["speedup_batch"]
        result["speedup_spread"] = speedup_spread(per_round, batch)
        reasons = unreliable_reasons(spreads, result["speedup_spread"], batch, loads)
        result["reliable"] = not reasons
        result["unreliable_reasons"] = reasons
