"""A finished sweep folder -> summary.csv, summary.md and summary.png (speedup vs parity error), one row per job.

Runs as a Hydra callback at the end of `python -m bertc -m ...`, and as
`python -m bertc.sweep <sweep folder>` to summarise again. A job that failed is a row with its
reason. Jobs that ran in parallel (hydra/launcher=joblib) disturbed each other's timings; the
summary says so when it sees a parallel launcher.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

COLUMNS = ("job", "overrides", "status", "max_abs_diff", "argmax_agreement", "accuracy", "throughput_original",
           "throughput_compiled", "speedup", "reason")


def _row(job_dir: Path) -> dict[str, Any]:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = " ".join(OmegaConf.load(overrides_file)) if overrides_file.is_file() else ""
    row: dict[str, Any] = {column: "" for column in COLUMNS}
    row.update(job=job_dir.name, overrides=overrides)
    report_file = job_dir / "report.json"
    if not report_file.is_file():
        row.update(status="failed", reason="no report.json: the job died before writing it")
        return row
    report = json.loads(report_file.read_text())
    row["status"] = report.get("status", "?")
    parity, bench = report.get("parity") or {}, report.get("bench") or {}
    if parity:
        # null: the compiled model gave NaN or infinity (report.json has no NaN); the cell stays empty
        row["max_abs_diff"] = "" if parity["max_abs_diff"] is None else f"{parity['max_abs_diff']:.3g}"
        row["argmax_agreement"] = f"{parity['argmax_agreement']:.4f}"
        if parity.get("accuracy"):
            row["accuracy"] = f"{parity['accuracy']['original']:.4f} -> {parity['accuracy']['compiled']:.4f}"
    if bench:
        size = str(bench["speedup_batch"])
        row["throughput_original"] = f"{bench['original']['throughput'][size]:.2f}"
        row["throughput_compiled"] = f"{bench['compiled']['throughput'][size]:.2f}"
        row["speedup"] = f"{bench['speedup']:.3f}"
    if report.get("error"):
        row["reason"] = f"{report.get('failed_step')}: {report['error']}"[:300]
    return row


def summarize(sweep_dir: Path, parallel: bool = False) -> list[dict[str, Any]]:
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    rows = [_row(job) for job in jobs]
    with open(sweep_dir / "summary.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# bertc sweep summary", ""]
    if parallel:
        lines += ["Jobs ran in parallel: their timings disturbed each other; compare speedups with care.", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(" ".join(str(row[c]).split()).replace("|", "/") for c in COLUMNS) + " |" for row in rows]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    _plot(sweep_dir / "summary.png", rows)
    return rows


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5))
    # Label each point by what sets it apart: overrides every job shares say nothing.
    shared = set.intersection(*(set(row["overrides"].split()) for row in rows)) if rows else set()
    plotted = 0
    for row in rows:
        if row["speedup"] and row["max_abs_diff"]:
            x, y = float(row["max_abs_diff"]), float(row["speedup"])
            label = " ".join(o for o in row["overrides"].split() if o not in shared) or f"job {row['job']}"
            axes.scatter([max(x, 1e-9)], [y], color="tab:blue" if row["status"] == "passed" else "tab:red")
            axes.annotate(label, (max(x, 1e-9), y), fontsize=7, xytext=(4, 4), textcoords="offset points")
            plotted += 1
    axes.set_xscale("log")
    axes.set_xlabel("parity error: max |probability difference| (log; 0 is drawn at 1e-9)")
    axes.set_ylabel("speedup vs original (throughput)")
    axes.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    failed = sum(1 for row in rows if row["status"] != "passed")
    axes.set_title(f"bertc sweep: {len(rows)} jobs, {failed} not passed" + ("" if plotted else " (no job had verify and bench)"))
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
        rows = summarize(sweep_dir, parallel="joblib" in launcher.lower())
        passed = sum(1 for row in rows if row["status"] == "passed")
        print(f"sweep summary: {passed}/{len(rows)} passed; {sweep_dir / 'summary.md'}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python -m bertc.sweep <sweep folder>")
    summarize(Path(sys.argv[1]))
