"""A run's record (dict) -> report.json (stable keys) and report.md for a person; and the terminal summary.

report.json keys: status (passed | failed | rejected | planned | interrupted: SIGINT or SIGTERM, with
failed_step the stage it stopped in), failed_step, error, traceback (a crash only), warnings (e.g.
a precision that does not pay on this CPU), hardware (the precision probe's rates per dtype, bertc/driver/hardware.py),
speed_check {original_first_s, original_s, compiled_first_s, compiled_s, slowdown, max_slowdown, passed, error}
(one full-length batch timed before verify and bench; failed_step "speed" when over), fingerprint, precision,
input {path, digest, shape, roles (nodes per role,
bertc/analysis/structure.py)}, versions, steps [{name, op_delta, ops_before, ops_after, seconds, matches; the
precision step also converted_roles {role: {dtype: nodes}}}], target {name, device, compile_seconds, boundaries},
artifact {path, digest, note}, parity {examples, gate, tolerance, passed, max_abs_diff,
mean_abs_diff, logits_max_abs_diff, logits_mean_abs_diff, argmax_agreement, disagreement_count,
confident_disagreements, disagreements [{index, source, line (dataset rows), original, compiled,
margin, confident}] (at most 20, confident first), nonfinite_outputs, by_source {synthetic,
dataset: the same figures per source}, accuracy {examples, original, compiled} when the dataset
has labels}, bench {original, compiled: {throughput by batch size, latency_ms {p50, p90, p99} at
batch 1, spread {throughput {batch: {min, max, cv, rounds}}, latency_p50_ms {min, max, cv, rounds}}:
each figure over the rounds, cv the coefficient of variation (null for one round)}, speedup,
speedup_batch, speedup_spread {min, max, cv, rounds} (the per-round speedups), latency_ratio_p50,
load_average {before, after, cores} (1-minute), reliable, unreliable_reasons [why the speedup
should not be trusted], peak_rss_mb, lengths {source, mean_longest_row,
original, compiled, speedup, latency_ratio_p50: the same on batches of real lengths}}, length {mode,
buckets (length=buckets) or warmed_lengths, compile_seconds by bucket (first call, XLA compile
included), ran {width: verify batches run at it}} (length=trim|buckets), serving {base_path
(TensorFlow Serving's --model_base_path: it holds version 1/), model_name, version, inputs (the
compiled signature's: the user's names), dropped_inputs (the user's inputs it no longer takes), outputs,
added_outputs (outputs the user's signature lacks: probabilities beside logits-only models)}, a passed model
only. A key whose part did not run is
absent. NaN and infinity, which JSON lacks, are written as null. The keys' types: bertc/run/schema.py (Report),
through which bertc reads a report back (`read_report`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from bertc.run.schema import parse_report
from bertc.run.serving_layout import serving_lines


def write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_reports(run_dir: Path, record: dict) -> None:
    from bertc.run.rundir import retire_previous

    safe = _json_safe(record)
    # the record as diff, reproduce and the sweep will read it back (bertc/run/schema.py): a field of the wrong type
    # is bertc's bug, stopped here (RecordError naming the field) before anything changes, not found by a reader later
    parse_report(safe)
    # overwrite=true: a model/ or rejected/ this report does not describe goes first (bertc/run/rundir.py)
    published = record.get("status") in ("passed", "rejected")
    keep = (record.get("artifact") or {}).get("path") if published else None
    retire_previous(run_dir, keep=keep, keep_serving=bool(record.get("serving")))
    write_atomic(run_dir / "report.json", json.dumps(safe, indent=2, allow_nan=False) + "\n")
    write_atomic(run_dir / "report.md", markdown(record))


def fmt_number(value, digits: int = 3) -> str:
    """0 as `0`, magnitudes under 1e-3 in scientific notation (2.35e-06, 1e-05), others to `digits`
    significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    if abs(value) < 1e-3:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"
    return f"{value:.{digits}g}"


def _fmt_ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _digest(entry: dict) -> str:
    digest = entry.get("digest") or ""
    return f" ({digest[:23]}...)" if digest else ""


def gate_rule(parity: dict) -> str:
    """What the parity gate asked: a bound on max |dp| (float precisions) or on argmax agreement (int8)."""
    if parity.get("min_agreement") is not None:
        where = "the dataset's pairs" if parity.get("agreement_on") == "dataset" else "all examples"
        return f"argmax agreement >= {parity['min_agreement']} on {where}"
    return f"max |dp| <= {fmt_number(parity['tolerance'])}"


def gate_failure(parity: dict) -> str:
    """Why the parity gate failed, in one clause."""
    if parity.get("min_agreement") is not None:
        return (
            f"argmax agreement {parity['gated_agreement']:.4f} < {parity['min_agreement']} "
            f"({parity['disagreement_count']} disagreements, max |dp| {parity['max_abs_diff']:.3g})"
        )
    return (
        f"max |dp| {parity['max_abs_diff']:.3g} > {parity['tolerance']} "
        f"or {parity['confident_disagreements']} confident disagreements"
    )


def _parity_lines(parity: dict) -> list[str]:
    count = parity.get("disagreement_count", len(parity["disagreements"]))
    lines = [
        "",
        "## Parity",
        "",
        f"- {parity['examples']} examples, gate {parity['gate']} ({gate_rule(parity)}): "
        f"**{'passed' if parity['passed'] else 'FAILED'}**",
        f"- probabilities: max abs diff {fmt_number(parity['max_abs_diff'])}, "
        f"mean {fmt_number(parity['mean_abs_diff'])}",
        f"- logits: max abs diff {fmt_number(parity['logits_max_abs_diff'])}, "
        f"mean {fmt_number(parity['logits_mean_abs_diff'])}",
        f"- argmax agreement {parity['argmax_agreement']:.4f}: {count} disagreement{'' if count == 1 else 's'}, "
        f"{parity['confident_disagreements']} where the original was confident (margin > 2 x tolerance)",
    ]
    if parity.get("nonfinite_outputs"):
        lines.append(
            f"- **{parity['nonfinite_outputs']} examples with NaN or infinite outputs** from the compiled model"
        )
    accuracy = parity.get("accuracy")
    if accuracy:
        lines.append(
            f"- accuracy on {accuracy['examples']} labelled examples: original {accuracy['original']:.4f}, "
            f"compiled {accuracy['compiled']:.4f}"
        )
    by_source = parity.get("by_source") or {}
    if len(by_source) > 1:
        lines += _by_source_lines(by_source)
    if parity["disagreements"]:
        lines += _disagreement_lines(parity["disagreements"], count)
    return lines


def _by_source_lines(by_source: dict) -> list[str]:
    """report.md: the parity figures per input source (synthetic, dataset), one table row each."""
    lines = [
        "",
        "| inputs | examples | max abs diff (prob) | mean (prob) | max abs diff (logits) "
        "| argmax agreement | disagreements |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, figures in by_source.items():
        lines.append(
            f"| {name} | {figures['examples']} | {fmt_number(figures['max_abs_diff'])} "
            f"| {fmt_number(figures['mean_abs_diff'])} "
            f"| {fmt_number(figures['logits_max_abs_diff'])} | {figures['argmax_agreement']:.4f} "
            f"| {figures['disagreement_count']} |"
        )
    return lines


def _disagreement_lines(disagreements: list[dict], count: int) -> list[str]:
    """report.md: the listed examples whose argmax differs (`count` of them in all)."""
    shown = len(disagreements)
    lines = [
        "",
        f"Examples whose argmax differs{f' (the first {shown} of {count})' if shown < count else ''}:",
        "",
        "| example | original | compiled | margin | confident |",
        "|---|---|---|---|---|",
    ]
    for entry in disagreements:
        where = (
            f"dataset line {entry['line']}" if entry.get("line") is not None else f"{entry['source']} #{entry['index']}"
        )
        lines.append(
            f"| {where} | {', '.join(f'{p:.4f}' for p in entry['original'])} "
            f"| {', '.join(f'{p:.4f}' for p in entry['compiled'])} "
            f"| {fmt_number(entry.get('margin'))} | {'yes' if entry['confident'] else 'no'} |"
        )
    return lines


def markdown(record: dict) -> str:
    lines = _header_lines(record)
    if record.get("steps"):
        lines += _step_lines(record["steps"])
    boundaries = (record.get("target") or {}).get("boundaries")
    if boundaries:
        lines += ["", "Partition boundaries (host -> device):", ""]
        lines += [f"- `{b}`" for b in boundaries]
    if record.get("warnings"):
        lines += ["", "## Warnings", "", *[f"- {warning}" for warning in record["warnings"]]]
    lines += _speed_lines(record.get("speed_check"))
    parity = record.get("parity")
    if parity:
        lines += _parity_lines(parity)
    elif record.get("status") == "passed":
        lines += [
            "",
            "## Parity",
            "",
            "Not verified (verify=off): nothing shows this model computes the same function.",
        ]
    bench = record.get("bench")
    if bench:
        lines += _bench_lines(bench)
    lines += serving_lines(record.get("serving"))
    return "\n".join(lines) + "\n"


def _speed_text(speed: dict) -> str:
    def seconds(key: str) -> str:
        return "did not return" if speed.get(key) is None else f"{speed[key] * 1000:.1f} ms"

    ratio = f" ({speed['slowdown']:g}x)" if speed.get("slowdown") is not None else ""
    return (
        f"original {seconds('original_s')}, compiled {seconds('compiled_s')}{ratio}; first calls "
        f"{seconds('original_first_s')}, {seconds('compiled_first_s')}"
    )


def _speed_lines(speed: dict | None) -> list[str]:
    """The one-batch timing taken before verify and bench (verify.max_slowdown)."""
    if not speed:
        return []
    verdict = "within" if speed.get("passed") else "**over**"
    return [
        "",
        "## Call time",
        "",
        f"One full-length batch through both models: {_speed_text(speed)}; {verdict} "
        f"verify.max_slowdown={speed.get('max_slowdown')}.",
    ]


def _header_lines(record: dict) -> list[str]:
    """report.md's title and what the run read and wrote: status, error, input, fingerprint, model."""
    lines = [f"# bertc run: {record.get('status', '?')}", ""]
    if record.get("error"):
        lines += [f"**Failed at {record.get('failed_step')}**: {record['error']}", ""]
    source = record.get("input") or {}
    if source:
        lines.append(f"- input: `{source.get('path')}`{_digest(source)}")
    if record.get("fingerprint"):
        lines.append(f"- fingerprint: `{record['fingerprint']}`")
    if record.get("precision") or record.get("target"):
        lines.append(f"- precision: {record.get('precision')}, target: {(record.get('target') or {}).get('name')}")
    if record.get("artifact", {}).get("path"):
        lines.append(f"- model: `{record['artifact']['path']}`{_digest(record['artifact'])}")
    return lines


def _step_lines(steps: list[dict]) -> list[str]:
    """report.md: each step's time and op change, then what each precision step converted."""
    lines = ["", "## Steps", "", "| step | seconds | op change |", "|---|---|---|"]
    for step in steps:
        delta = ", ".join(f"{op} {count:+d}" for op, count in step.get("op_delta", {}).items()) or "none"
        lines.append(f"| {step['name']} | {step['seconds']:.2f} | {delta} |")
    for step in steps:
        if step.get("converted_roles"):
            regions = ", ".join(
                f"{role} ({', '.join(f'{count} {dtype}' for dtype, count in dtypes.items())})"
                for role, dtypes in step["converted_roles"].items()
            )
            lines += ["", f"Converted by {step['name']} (nodes per role): {regions}"]
    return lines


def _per_size_table_head(heading: str, bench: dict, extra_columns: tuple[str, ...]) -> list[str]:
    """report.md: `heading`, then the head of a table with a row per model and a column per benchmarked
    batch size (throughput), then `extra_columns`."""
    columns = ["model", *(f"batch {b} seq/s" for b in bench["original"]["throughput"]), *extra_columns]
    return ["", heading, "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def _bench_lines(bench: dict) -> list[str]:
    """report.md: throughput and latency of both models, the speedup, and the spread over the rounds."""
    lines = _per_size_table_head("## Benchmark", bench, ("p50 ms", "p90 ms", "p99 ms"))
    for name in ("original", "compiled"):
        entry = bench[name]
        latency = entry.get("latency_ms", {})
        lines.append(
            f"| {name} | "
            + " | ".join(f"{v:.1f}" for v in entry["throughput"].values())
            + f" | {_fmt_ms(latency.get('p50'))} | {_fmt_ms(latency.get('p90'))} | {_fmt_ms(latency.get('p99'))} |"
        )
    if "speedup" in bench:
        ratio = f"; batch-1 p50 latency ratio {bench['latency_ratio_p50']:.2f}" if "latency_ratio_p50" in bench else ""
        lines += [
            "",
            f"Speedup (compiled / original throughput) at batch {bench['speedup_batch']}: "
            f"**{bench['speedup']:.2f}x**{ratio}; peak RSS {bench['peak_rss_mb']:.0f} MB.",
        ]
    lines += spread_lines(bench)
    return lines


def summary_table(record: dict) -> Table:
    table = Table(title=f"bertc: {record.get('status')}", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("fingerprint", str(record.get("fingerprint", "-"))[:23] + "...")
    if record.get("speed_check"):
        table.add_row("call time", _speed_text(record["speed_check"]))
    parity = record.get("parity")
    if parity:
        _add_parity_rows(table, parity)
    elif record.get("status") == "passed":
        table.add_row("parity", "not verified (verify=off)")
    bench = record.get("bench")
    if bench and "speedup" in bench:
        _add_bench_rows(table, bench)
    if (record.get("target") or {}).get("compile_seconds") is not None:
        table.add_row("compile", f"{record['target']['compile_seconds']:.1f} s")
    if (record.get("artifact") or {}).get("path"):
        table.add_row("model", escape(record["artifact"]["path"]))
    if record.get("serving") and "base_path" not in record["serving"]:
        table.add_row("serving", escape("; ".join(f"{key} {value}" for key, value in record["serving"].items())))
    elif record.get("serving"):
        serving = record["serving"]
        where = f"{serving['base_path']} (TensorFlow Serving, model {serving['model_name']})"
        added = f" ({', '.join(serving['added_outputs'])} added)" if serving.get("added_outputs") else ""
        outputs = f"; outputs {', '.join(serving['outputs'])}{added}" if serving.get("outputs") else ""
        table.add_row("serving", escape(f"{where}; inputs {', '.join(serving['inputs'])}{outputs}"))
    return table


def _add_parity_rows(table: Table, parity: dict) -> None:
    """The terminal summary's parity rows: verdict, differences, argmax agreement, non-finite, accuracy."""
    count = parity.get("disagreement_count", len(parity["disagreements"]))
    verdict = "passed" if parity["passed"] else "[bold red]FAILED[/]"
    table.add_row(
        "parity",
        f"{verdict} ({parity['examples']} examples; gate {parity['gate']}: {gate_rule(parity)})",
    )
    table.add_row(
        "probabilities",
        f"max |dp| {fmt_number(parity['max_abs_diff'])}, mean {fmt_number(parity['mean_abs_diff'])}",
    )
    table.add_row(
        "logits",
        f"max |dl| {fmt_number(parity['logits_max_abs_diff'])}, mean {fmt_number(parity['logits_mean_abs_diff'])}",
    )
    table.add_row(
        "argmax",
        f"agreement {parity['argmax_agreement']:.4f}: {count} disagree, {parity['confident_disagreements']} confident",
    )
    if parity.get("nonfinite_outputs"):
        table.add_row("non-finite", f"[bold red]{parity['nonfinite_outputs']} examples with NaN/inf outputs[/]")
    if parity.get("accuracy"):
        accuracy = parity["accuracy"]
        table.add_row(
            "accuracy",
            f"original {accuracy['original']:.4f}, compiled {accuracy['compiled']:.4f} "
            f"({accuracy['examples']} labelled)",
        )


def _add_bench_rows(table: Table, bench: dict) -> None:
    """The terminal summary's benchmark rows: throughput at the speedup's batch, spread, reliability, latency."""
    size = str(bench["speedup_batch"])
    table.add_row(
        f"throughput b{size}",
        f"{bench['original']['throughput'][size]:.1f} -> {bench['compiled']['throughput'][size]:.1f} seq/s "
        f"({bench['speedup']:.2f}x)",
    )
    if bench.get("speedup_spread"):
        table.add_row("spread", escape(spread_summary(bench)))
    if bench.get("unreliable_reasons"):
        table.add_row("[yellow]unreliable[/]", escape("; ".join(bench["unreliable_reasons"])))
    if "latency_ms" in bench["compiled"]:
        table.add_row(
            "latency p50 b1",
            f"{bench['original']['latency_ms']['p50']:.2f} -> {bench['compiled']['latency_ms']['p50']:.2f} ms",
        )


def _range(figure: dict | None, digits: int = 1, unit: str = "") -> str:
    if not figure:
        return "-"
    cv = f" (cv {figure['cv']:.1%})" if figure.get("cv") is not None else " (one round)"
    return f"{figure['min']:.{digits}f}-{figure['max']:.{digits}f}{unit}{cv}"


def spread_summary(bench: dict) -> str:
    """One line for the terminal: the per-round speedups and how much each compared throughput moved."""
    size = str(bench["speedup_batch"])
    speedup = bench["speedup_spread"]
    if speedup["rounds"] < 2:
        return "one round: no spread measured"
    moved = []
    for name in ("original", "compiled"):
        cv = (bench[name].get("spread") or {}).get("throughput", {}).get(size, {}).get("cv")
        if cv is not None:
            moved.append(f"{name} {fmt_number(cv * 100, 2)}%")
    rounds = f"{speedup['min']:.2f}-{speedup['max']:.2f}x over {speedup['rounds']} rounds"
    return f"speedup {rounds}; b{size} cv {', '.join(moved)}"


def spread_lines(bench: dict) -> list[str]:
    """report.md: each figure's spread over the rounds and the reliability verdict."""
    if not bench.get("speedup_spread"):
        return []
    lines = _per_size_table_head("Spread over the rounds (min-max, coefficient of variation):", bench, ("p50 ms b1",))
    for name in ("original", "compiled"):
        figures = bench[name].get("spread") or {}
        cells = [_range(figures.get("throughput", {}).get(b)) for b in bench[name]["throughput"]]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_range(figures.get('latency_p50_ms'), 2)} |")
    load = bench.get("load_average") or {}
    before, after = fmt_number(load.get("before")), fmt_number(load.get("after"))
    lines += [
        "",
        f"Per-round speedup {_range(bench['speedup_spread'], 2, 'x')}; 1-minute load average "
        f"{before} before, {after} after, on {load.get('cores')} cores.",
    ]
    if bench.get("unreliable_reasons"):
        lines += ["", "**The speedup is unreliable**: " + "; ".join(bench["unreliable_reasons"]) + "."]
    return lines
