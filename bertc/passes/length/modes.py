"""The `length` group's modes against the target: which a target can run, the shapes a static-shape target
compiles for length=pack, and what a run records of the lengths it ran (report.json "length")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bertc.errors import ConfigError

if TYPE_CHECKING:
    from bertc.targets.base import Target


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


def record_lengths_ran(record: dict, compiled: Any, batches: Iterable) -> None:
    """Ask the artifact's length signature what width each verify batch ran at: {width: batches}."""
    if "length" not in record or not hasattr(compiled, "lengths"):
        return  # an engine's artifact without bertc's length signature (onnxruntime): not recorded
    ran: dict[str, int] = {}
    for batch in batches:
        width = int(compiled.lengths(batch.feeds()["input_mask"])["length"])
        ran[str(width)] = ran.get(str(width), 0) + 1
    record["length"]["ran"] = dict(sorted(ran.items(), key=lambda item: int(item[0])))
