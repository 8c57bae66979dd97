"""A run's record (dict) -> report.json (stable keys) and report.md for a person; and the terminal summary.

report.json keys: status (passed | failed | rejected | planned), failed_step, error, fingerprint,
input {path, digest, shape}, versions, steps [{name, op_delta, ops_before, ops_after, seconds,
matches, details}], target {name, device, compile_seconds, boundaries}, artifact {path, digest},
parity {max_abs_diff, mean_abs_diff, logits_max_abs_diff, argmax_agreement, accuracy, ...},
bench {original, compiled: {throughput, latency_ms}, speedup, peak_rss_mb}.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rich.table import Table


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


def write_reports(run_dir: Path, record: dict) -> None:
    write_atomic(run_dir / "report.json", json.dumps(record, indent=2, sort_keys=False) + "\n")
    write_atomic(run_dir / "report.md", markdown(record))


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def markdown(record: dict) -> str:
    lines = [f"# bertc run: {record.get('status', '?')}", ""]
    if record.get("error"):
        lines += [f"**Failed at {record.get('failed_step')}**: {record['error']}", ""]
    source = record.get("input", {})
    lines += [
        f"- input: `{source.get('path')}` ({source.get('digest', '')[:23]}...)",
        f"- fingerprint: `{record.get('fingerprint')}`",
        f"- precision: {record.get('precision')}, target: {record.get('target', {}).get('name')}",
    ]
    if record.get("artifact"):
        lines.append(f"- model: `{record['artifact']['path']}` ({record['artifact'].get('digest', '')[:23]}...)")
    lines += ["", "## Steps", "", "| step | seconds | op change |", "|---|---|---|"]
    for step in record.get("steps", []):
        delta = ", ".join(f"{op} {count:+d}" for op, count in step.get("op_delta", {}).items()) or "none"
        lines.append(f"| {step['name']} | {step['seconds']:.2f} | {delta} |")
    boundaries = record.get("target", {}).get("boundaries")
    if boundaries:
        lines += ["", "Partition boundaries (host -> device):", ""]
        lines += [f"- `{b}`" for b in boundaries]
    parity = record.get("parity")
    if parity:
        lines += [
            "", "## Parity", "",
            f"- {parity['examples']} examples, gate {parity['gate']} (tolerance {parity['tolerance']}): "
            f"{'passed' if parity['passed'] else 'FAILED'}",
            f"- probabilities: max abs diff {_fmt(parity['max_abs_diff'])}, mean {_fmt(parity['mean_abs_diff'])}",
            f"- logits: max abs diff {_fmt(parity['logits_max_abs_diff'])}, mean {_fmt(parity['logits_mean_abs_diff'])}",
            f"- argmax agreement {parity['argmax_agreement']:.4f} "
            f"({len(parity['disagreements'])} disagreements, {parity['confident_disagreements']} confident)",
        ]
        if parity.get("accuracy"):
            accuracy = parity["accuracy"]
            lines.append(
                f"- accuracy on {accuracy['examples']} labelled examples: original {accuracy['original']:.4f}, "
                f"compiled {accuracy['compiled']:.4f}"
            )
    bench = record.get("bench")
    if bench:
        lines += ["", "## Benchmark", "", "| model | " + " | ".join(f"batch {b} seq/s" for b in bench["original"]["throughput"]) + " | p50 ms | p90 ms | p99 ms |"]
        lines.append("|---" * (len(bench["original"]["throughput"]) + 4) + "|")
        for name in ("original", "compiled"):
            entry = bench[name]
            latency = entry.get("latency_ms", {})
            lines.append(
                f"| {name} | " + " | ".join(f"{v:.1f}" for v in entry["throughput"].values())
                + f" | {_fmt(latency.get('p50'), 2)} | {_fmt(latency.get('p90'), 2)} | {_fmt(latency.get('p99'), 2)} |"
            )
        lines += ["", f"Speedup at batch {bench['speedup_batch']}: **{bench['speedup']:.2f}x**; peak RSS {bench['peak_rss_mb']:.0f} MB."]
    return "\n".join(lines) + "\n"


def summary_table(record: dict) -> Table:
    table = Table(title=f"bertc: {record.get('status')}", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value")
    table.add_row("fingerprint", str(record.get("fingerprint", "-"))[:23] + "...")
    parity = record.get("parity")
    if parity:
        table.add_row("parity", f"max |dp| {_fmt(parity['max_abs_diff'])} (gate {parity['tolerance']}), argmax agree {parity['argmax_agreement']:.3f}")
        if parity.get("accuracy"):
            table.add_row("accuracy", f"original {parity['accuracy']['original']:.4f}, compiled {parity['accuracy']['compiled']:.4f}")
    bench = record.get("bench")
    if bench:
        size = str(bench["speedup_batch"])
        table.add_row(
            f"throughput b{size}",
            f"{bench['original']['throughput'][size]:.1f} -> {bench['compiled']['throughput'][size]:.1f} seq/s ({bench['speedup']:.2f}x)",
        )
        if "latency_ms" in bench["compiled"]:
            table.add_row("latency p50 b1", f"{bench['original']['latency_ms']['p50']:.2f} -> {bench['compiled']['latency_ms']['p50']:.2f} ms")
    if record.get("target", {}).get("compile_seconds") is not None:
        table.add_row("compile", f"{record['target']['compile_seconds']:.1f} s")
    if record.get("artifact"):
        table.add_row("model", record["artifact"]["path"])
    return table
