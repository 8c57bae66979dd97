"""report.json as records: the Report and its sections (bertc/run/report.py's docstring says what each key
means), and `read_report`, the one loader through which bertc reads a report back (diff, reproduce, the sweep's
summary), each field's type checked and a bad one named (`report.parity.max_abs_diff: expected a number, got
"0.1"`).

A section whose part did not run is absent (None here). Keys a report holds beyond these are ignored when
read: a newer bertc may add some. Sections bertc reads only to show (hardware, versions, the input's shape and
signature, length, serving) stay objects.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bertc.errors import UserError
from bertc.jsonfile import read_json_object
from bertc.runtime.records import RecordError, field, from_json

STATUSES = ("running", "passed", "failed", "rejected", "planned", "interrupted")


class BadReport(UserError):
    """A report.json bertc cannot read: not JSON, or a field of the wrong type (the message names it)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputSection:
    path: str | None = None
    digest: str | None = None
    shape: dict[str, Any] | None = None  # the BERT shape read from the graph
    signature: dict[str, Any] | None = None  # the user's serving signature: dialect, names, inputs, outputs
    roles: dict[str, int] | None = None  # nodes per role (bertc/analysis/structure.py)
    bounds: dict[str, Any] | None = None  # the static cost bound (bertc/driver/limits.py)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Step:
    name: str
    op_delta: dict[str, int] = dataclasses.field(default_factory=dict)
    ops_before: int | None = None
    ops_after: int | None = None
    seconds: float | None = None
    matches: dict[str, Any] | None = None
    converted_roles: dict[str, dict[str, int]] | None = None  # the precision step: {role: {dtype: nodes}}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetSection:
    name: str | None = None
    device: str | None = None
    compile_seconds: float | None = None
    boundaries: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArtifactSection:
    path: str | None = None  # model/ (passed) or rejected/
    digest: str | None = None
    note: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpeedCheck:
    """One full-length batch through both models before verify and bench; a time is null when it did not return."""

    original_first_s: float | None = None
    original_s: float | None = None
    compiled_first_s: float | None = None
    compiled_s: float | None = None
    slowdown: float | None = None
    max_slowdown: float | None = None
    passed: bool
    error: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Figures:
    """Parity figures over a set of examples; a difference is null where the compiled model gave NaN or inf."""

    examples: int = field(low=0)
    max_abs_diff: float | None
    mean_abs_diff: float | None
    logits_max_abs_diff: float | None
    logits_mean_abs_diff: float | None
    argmax_agreement: float | None
    disagreement_count: int = field(low=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Disagreement:
    index: int
    source: str
    line: int | None = None  # the dataset's line
    original: list[float | None]
    compiled: list[float | None]
    margin: float | None
    confident: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class Accuracy:
    examples: int = field(low=0)
    original: float
    compiled: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Parity(Figures):
    gate: str
    tolerance: float | None  # max |dp| (float precisions); null for int8's agreement gate
    min_agreement: float | None = None  # int8
    agreement_on: str | None = None  # int8: dataset | all
    gated_agreement: float | None = None  # int8
    confident_disagreements: int = field(low=0)
    nonfinite_outputs: int = field(0, low=0)
    by_source: dict[str, Figures] = dataclasses.field(default_factory=dict)
    accuracy: Accuracy | None = None
    disagreements: list[Disagreement] = dataclasses.field(default_factory=list)
    passed: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class Spread:
    """A figure over the benchmark's rounds; cv is null for one round."""

    min: float
    max: float
    cv: float | None
    rounds: int = field(low=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpread:
    throughput: dict[str, Spread] = dataclasses.field(default_factory=dict)
    latency_p50_ms: Spread | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelBench:
    throughput: dict[str, float]  # sequences per second by batch size
    latency_ms: dict[str, float] | None = None  # p50, p90, p99 at batch 1
    spread: ModelSpread | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Bench:
    seq_len: int | None = None
    rounds: int | None = None
    seconds_per_measurement: float | None = None
    original: ModelBench
    compiled: ModelBench
    speedup: float | None = None
    speedup_batch: int | None = None
    latency_ratio_p50: float | None = None
    peak_rss_mb: float | None = None
    load_average: dict[str, float | int | None] | None = None
    speedup_spread: Spread | None = None
    reliable: bool | None = None
    unreliable_reasons: list[str] = dataclasses.field(default_factory=list)
    lengths: dict[str, Any] | None = None  # the same on batches of real lengths


@dataclasses.dataclass(frozen=True, kw_only=True)
class Report:
    status: str = field(choices=STATUSES)
    failed_step: str | None = None
    error: str | None = None
    traceback: str | None = None
    precision: str | None = None
    fingerprint: str | None = None
    versions: dict[str, Any] | None = None
    input: InputSection | None = None
    hardware: dict[str, Any] | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    steps: list[Step] = dataclasses.field(default_factory=list)
    length: dict[str, Any] | None = None
    target: TargetSection | None = None
    artifact: ArtifactSection | None = None
    speed_check: SpeedCheck | None = None
    parity: Parity | None = None
    bench: Bench | None = None
    serving: dict[str, Any] | None = None


def parse_report(value: dict, where: str = "report") -> Report:
    """A parsed report.json -> the Report; RecordError naming the first bad field."""
    return from_json(Report, value, where)


def read_report(file: Path, error: type[Exception] = BadReport) -> Report:
    """report.json -> the Report; `error` (BadReport by default) naming the file and the bad field otherwise."""
    value = read_json_object(file, error)
    try:
        return parse_report(value)
    except RecordError as problem:
        raise error(f"{file} is not a report bertc wrote: {problem}.") from None
