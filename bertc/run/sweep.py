"""A sweep's job records (or its job folders) -> summary.csv, summary.md and summary.png (speedup vs parity error).

Runs as a Hydra callback at the end of `python -m bertc -m ...`, and as
`python -m bertc.run.sweep <sweep folder>` to summarise again. One record per job, made by `job_record`
where the job's folder is: on this machine for the basic and joblib launchers, on the job's node for
hydra/launcher=ray (bertc/driver/cluster.py hands the records back through Ray, so the driver never reads a
job folder). A job that failed is a row with its reason; each row names its node and folder. Jobs
that ran in parallel (joblib, ray) disturbed each other's timings; the summary says so.
"""

from __future__ import annotations

import csv
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bertc.run.schema import Bench, ModelBench, read_report

# Every bench column names its batch size and unit; the speedup batch is the benchmark's largest.
LEADING_COLUMNS = ("job", "overrides", "status", "max_abs_diff", "argmax_agreement", "accuracy")
BATCH_COLUMNS = (  # (field of a row, its column with {b} the batch size)
    ("throughput_original", "original_throughput_b{b}_seq_s"),
    ("throughput_compiled", "compiled_throughput_b{b}_seq_s"),
    ("speedup", "speedup_b{b}_x"),
    ("speedup_min", "speedup_b{b}_min_x"),  # the lowest and highest per-round speedups
    ("speedup_max", "speedup_b{b}_max_x"),
    ("throughput_cv", "throughput_cv_b{b}_pct"),  # the larger of the two models' coefficients of variation
)
TRAILING_COLUMNS = (
    "original_latency_b1_p50_ms",
    "compiled_latency_b1_p50_ms",
    "reliable",
    "unreliable_reasons",
    "reason",
    "node",  # the host that ran the job, and its Ray node id under hydra/launcher=ray
    "ray_node",
    "folder",  # the job's run folder on that node
)
FIELDS = (*LEADING_COLUMNS, "batch", *(field for field, _ in BATCH_COLUMNS), *TRAILING_COLUMNS)


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The summary's header: one set of batch columns per speedup batch the jobs used (usually one)."""
    batches = sorted({row["batch"] for row in rows if row["batch"] != ""})
    return [*LEADING_COLUMNS, *(column.format(b=b) for b in batches for _, column in BATCH_COLUMNS), *TRAILING_COLUMNS]


def _cells(row: dict[str, Any]) -> dict[str, Any]:
    cells = {column: row[column] for column in (*LEADING_COLUMNS, *TRAILING_COLUMNS)}
    if row["batch"] != "":
        cells.update({column.format(b=row["batch"]): row[field] for field, column in BATCH_COLUMNS})
    return cells


def job_record(job_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A job folder on this machine -> its summary record (a plain dict: it travels back through Ray)."""
    if overrides is None:
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    row: dict[str, Any] = {field: "" for field in FIELDS}
    row.update(job=job_dir.name, overrides=" ".join(overrides), node=socket.gethostname(), folder=str(job_dir))
    report_file = job_dir / "report.json"
    if not report_file.is_file():
        row.update(status="failed", reason="no report.json: the job died before writing it")
        return row
    report = read_report(report_file)
    row["status"] = report.status
    parity = report.parity
    if parity is not None:
        # null: the compiled model gave NaN or infinity (report.json has no NaN); the cell stays empty
        row["max_abs_diff"] = "" if parity.max_abs_diff is None else f"{parity.max_abs_diff:.3g}"
        row["argmax_agreement"] = f"{parity.argmax_agreement:.4f}"
        if parity.accuracy:
            row["accuracy"] = f"{parity.accuracy.original:.4f} -> {parity.accuracy.compiled:.4f}"
    if report.bench is not None:
        _bench_cells(row, report.bench)
    if report.error:
        row["reason"] = f"{report.failed_step}: {report.error}"[:300]
    return row


def _bench_cells(row: dict[str, Any], bench: Bench) -> None:
    size = str(bench.speedup_batch)
    row["batch"] = int(size)
    row["throughput_original"] = f"{bench.original.throughput[size]:.2f}"
    row["throughput_compiled"] = f"{bench.compiled.throughput[size]:.2f}"
    row["speedup"] = f"{bench.speedup:.3f}"
    for name, figures in (("original", bench.original), ("compiled", bench.compiled)):
        if figures.latency_ms is not None:
            row[f"{name}_latency_b1_p50_ms"] = f"{figures.latency_ms['p50']:.2f}"
    if bench.speedup_spread is not None:
        row["speedup_min"] = f"{bench.speedup_spread.min:.3f}"
        row["speedup_max"] = f"{bench.speedup_spread.max:.3f}"
        cvs = [cv for figures in (bench.original, bench.compiled) if (cv := _throughput_cv(figures, size)) is not None]
        row["throughput_cv"] = f"{100 * max(cvs):.1f}" if len(cvs) == 2 else ""  # one round: no cv
        row["reliable"] = "yes" if bench.reliable else "no"
        row["unreliable_reasons"] = "; ".join(bench.unreliable_reasons)


def _throughput_cv(figures: ModelBench, size: str) -> float | None:
    """The coefficient of variation of a model's throughput at batch `size` over the rounds."""
    assert figures.spread is not None, "a benchmark with a speedup spread has each model's spread"
    return figures.spread.throughput[size].cv


def folder_records(sweep_dir: Path) -> list[dict[str, Any]]:
    """The records of the job folders a sweep folder on this machine holds."""
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return [job_record(job.resolve()) for job in jobs]


def summarize(
    sweep_dir: Path, parallel: bool = False, records: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Write the summary files into `sweep_dir`: from `records` when given, else from its job folders."""
    rows = folder_records(sweep_dir) if records is None else sorted(records, key=lambda row: int(row["job"]))
    header = columns(rows)
    with open(sweep_dir / "summary.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerows(_cells(row) for row in rows)
    lines = ["# bertc sweep summary", ""]
    nodes = sorted({row["node"] + (f" ({row['ray_node'][:8]})" if row["ray_node"] else "") for row in rows} - {""})
    if len(nodes) > 1:
        lines += [f"Jobs ran on {len(nodes)} nodes: {', '.join(nodes)}; compare timings across nodes with care.", ""]
    if parallel:
        lines += ["Jobs ran in parallel: their timings disturbed each other; compare speedups with care.", ""]
    unreliable = [row["job"] for row in rows if row["reliable"] == "no"]
    if unreliable:
        lines += [f"Speedups marked unreliable (jobs {', '.join(unreliable)}): see unreliable_reasons.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = [{**_cells(row), "job": _job_link(sweep_dir, row)} for row in rows]
    lines += [
        "| " + " | ".join(" ".join(str(cells.get(c, "")).split()).replace("|", "/") for c in header) + " |"
        for cells in table
    ]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    _plot(sweep_dir / "summary.png", rows)
    return rows


def _job_link(sweep_dir: Path, row: dict[str, Any]) -> str:
    """The job's number, linked to its report.md where this machine sees the job's folder inside the sweep's
    (one disk, or shared storage)."""
    folder = Path(row["folder"]) if row["folder"] else None
    if folder and (folder / "report.md").is_file() and folder.resolve() == (sweep_dir / row["job"]).resolve():
        return f"[{row['job']}]({row['job']}/report.md)"
    return row["job"]


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plot_figure(rows)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_figure(rows: list[dict[str, Any]]):
    """Speedup (with its per-round spread as error bars) against parity error, one labelled point per job."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5.5))
    # Label each point by what sets it apart: overrides every job shares say nothing.
    shared = set.intersection(*(set(row["overrides"].split()) for row in rows)) if rows else set()
    points = [row for row in rows if row["speedup"] and row["max_abs_diff"]]
    for row in points:
        x, y = max(float(row["max_abs_diff"]), 1e-9), float(row["speedup"])
        low = float(row["speedup_min"] or y)
        high = float(row["speedup_max"] or y)
        color = "tab:blue" if row["status"] == "passed" else "tab:red"
        axes.errorbar(
            [x],
            [y],
            yerr=[[y - low], [high - y]],
            fmt="o",
            color=color,
            capsize=3,
            markerfacecolor="white" if row["reliable"] == "no" else color,
        )
    axes.set_xscale("log")
    axes.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes.margins(x=0.15, y=0.2)
    batches = sorted({row["batch"] for row in points})
    at = f"batch {', '.join(map(str, batches))}" if batches else "the largest batch"
    axes.set_xlabel("parity error: max |probability difference| (probability, log scale; 0 drawn at 1e-9)")
    axes.set_ylabel(f"speedup at {at} (compiled / original seq/s, x)")
    failed = sum(1 for row in rows if row["status"] != "passed")
    axes.set_title(
        f"bertc sweep: {len(rows)} jobs, {failed} not passed; bars: per-round min-max, hollow: unreliable"
        + ("" if points else " (no job had verify and bench)"),
        fontsize=9,
    )
    figure.tight_layout()
    _label_points(figure, axes, points, shared)
    return figure


def _label_points(figure, axes, points: list[dict[str, Any]], shared: set[str]) -> None:
    """Labels beside their points, turned towards the middle of the frame so none runs off it."""
    figure.canvas.draw()  # the axis limits are final only once drawn
    frame = axes.get_window_extent()
    for row in points:
        x, y = max(float(row["max_abs_diff"]), 1e-9), float(row["speedup"])
        text = " ".join(o for o in row["overrides"].split() if o not in shared) or f"job {row['job']}"
        text = "\n".join(textwrap.wrap(text, 40))
        px, py = axes.transData.transform((x, y))
        right = px < frame.x0 + frame.width / 2
        upper = py < frame.y0 + frame.height / 2
        offset = (6 if right else -6, 4 if upper else -4)
        axes.annotate(
            text,
            (x, y),
            fontsize=7,
            xytext=offset,
            textcoords="offset points",
            ha="left" if right else "right",
            va="bottom" if upper else "top",
        )


def sweep_size(overrides: list[str], params: dict | None = None) -> int | None:
    """How many jobs the basic sweeper makes of these overrides (and hydra.sweeper.params); None if unknown."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = list(overrides) + [f"{key}={value}" for key, value in (params or {}).items()]
    total = 1
    try:
        for override in OverridesParser.create().parse_overrides(given):
            if override.is_sweep_override():
                total *= len(list(override.sweep_string_iterator()))
    except Exception:  # noqa: BLE001  (glob() sweeps need Hydra's config loader; the count is then unknown)
        return None
    return total


def register_ray_launcher() -> None:
    """hydra/launcher=ray: bertc's launcher class registered with Hydra (its scan of hydra_plugins misses it in an
    editable install) and hydra-ray-launcher's schema of that name dropped (hydra_plugins/bertc_ray_launcher)."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.bertc_ray_launcher.ray_launcher import BertcRayLauncher

    Plugins.instance().register(BertcRayLauncher)


_LAUNCHED: dict[Path, list[dict[str, Any]]] = {}  # sweep folder -> records a launcher brought back from nodes


def keep_records(sweep_dir: Path, records: list[dict[str, Any]]) -> None:
    """A remote launcher (bertc/driver/cluster.py) hands the records of its jobs to the summary, in this process."""
    _LAUNCHED.setdefault(Path(sweep_dir).resolve(), []).extend(records)


class SweepSummary(Callback):
    """Prints `job i/N: <overrides>` as each job starts; writes the summary when the sweep ends."""

    def __init__(self) -> None:
        self.jobs: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        params = OmegaConf.to_container(params) if params is not None else None
        assert params is None or isinstance(params, dict)  # hydra.sweeper.params is a mapping
        self.jobs = sweep_size(list(config.hydra.overrides.task), params)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode", default=None) != RunMode.MULTIRUN:
            return
        number = int(config.hydra.job.num) + 1
        print(f"job {number}/{self.jobs or '?'}: {' '.join(config.hydra.overrides.task)}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="")).lower()
        records = _LAUNCHED.pop(sweep_dir.resolve(), None)
        rows = summarize(sweep_dir, parallel="joblib" in launcher or "ray" in launcher, records=records)
        passed = sum(1 for row in rows if row["status"] == "passed")
        print(f"sweep summary: {passed}/{len(rows)} passed; {sweep_dir / 'summary.md'}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python -m bertc.run.sweep <sweep folder>")
    summarize(Path(sys.argv[1]))
