"""report.json / report.md / the terminal summary / the sweep summary, from records made by verify and bench
with stand-in models (no TensorFlow): documented keys, valid JSON, readable numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

import bertc.run.report
from bertc.evaluate.batches import Batch, synthetic_batches
from bertc.evaluate.bench import benchmark
from bertc.evaluate.verify import compare
from bertc.run.report import fmt_number, markdown, summary_table, write_reports
from bertc.run.schema import BadReport, read_report
from bertc.run.sweep import columns, plot_figure, summarize, sweep_size


def model(shift: float = 0.0):
    def run(feeds):
        logits = np.stack([feeds["input_mask"].mean(1), feeds["segment_ids"].mean(1) + shift], -1).astype(np.float32)
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        return {"probabilities": exp / exp.sum(-1, keepdims=True), "logits": logits}

    return run


def labelled_batch():
    ids = np.array([[2, 5, 3, 6, 3, 0]] * 2, np.int32)
    mask = (ids > 0).astype(np.int32)
    return Batch(ids, mask, np.array([[0, 0, 0, 1, 1, 0]] * 2, np.int32), np.array([0, 1]), "dataset", np.array([2, 3]))


def record(shift: float = 0.0, bench: bool = True) -> dict:
    batches = synthetic_batches(2, 4, 16, 2000, seed=0) + [labelled_batch()]
    result = {
        "status": "passed",
        "failed_step": None,
        "error": None,
        "fingerprint": "sha256:" + "ab" * 32,
        "precision": "fp16",
        "input": {"path": "/models/m", "digest": "sha256:" + "cd" * 32},
        "steps": [
            {
                "name": "remove_training_ops",
                "op_delta": {"Identity": -3},
                "ops_before": 10,
                "ops_after": 7,
                "seconds": 0.01,
                "matches": {},
            }
        ],
        "target": {"name": "tf", "device": "auto", "compile_seconds": 1.5, "boundaries": []},
        "artifact": {"path": "/runs/x/model", "digest": "sha256:" + "ef" * 32},
        "parity": compare(model(), model(shift), batches, "fp16", None),
    }
    if bench:
        result["bench"] = benchmark(
            {"original": model(), "compiled": model(shift)}, (1, 4), 16, 2000, rounds=2, seconds=0.01, warmup=1
        )
    return result


@pytest.mark.parametrize(
    "value, text",
    [
        (0.0, "0"),
        (0, "0"),
        (1e-5, "1e-05"),
        (2.346e-6, "2.35e-06"),
        (-3e-7, "-3e-07"),
        (0.0023, "0.0023"),
        (0.01446, "0.0145"),
        (0.5, "0.5"),
        (12.345, "12.3"),
        (None, "-"),
        (float("nan"), "nan"),
        ("x", "x"),
    ],
)
def test_numbers_read_well(value, text):
    assert fmt_number(value) == text


def test_every_key_in_report_json_is_documented(tmp_path):
    """The docstring of bertc/run/report.py is the contract for report.json's keys."""
    data = record()
    documented = bertc.run.report.__doc__
    keys = set(data) | set(data["parity"]) | set(data["parity"]["accuracy"]) | set(data["bench"])
    keys |= set(data["bench"]["compiled"]) | set(data["bench"]["compiled"]["latency_ms"])
    keys |= set(data["parity"]["disagreements"][0]) if data["parity"]["disagreements"] else set()
    keys |= (
        set(data["bench"]["compiled"]["spread"])
        | set(data["bench"]["speedup_spread"])
        | set(data["bench"]["load_average"])
    )
    keys -= {"seq_len", "rounds", "seconds_per_measurement"}  # bench's settings, echoed for the reader
    missing = sorted(key for key in keys if key not in documented)
    assert not missing, f"report.json keys missing from bertc/run/report.py's docstring: {missing}"
    assert set(data["parity"]["by_source"]) == {"synthetic", "dataset"}


def test_reports_are_valid_json_even_with_nan(tmp_path):
    data = record(bench=False)
    data["parity"] = compare(
        model(),
        lambda feeds: {key: value * np.nan for key, value in model()(feeds).items()},
        [labelled_batch()],
        "fp32",
        None,
    )
    write_reports(tmp_path, data)
    text = (tmp_path / "report.json").read_text()
    parsed = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in report.json"))
    assert parsed["parity"]["max_abs_diff"] is None and parsed["parity"]["nonfinite_outputs"] == 2
    assert not parsed["parity"]["passed"]
    assert "2 examples with NaN or infinite outputs" in (tmp_path / "report.md").read_text()


def test_markdown_shows_parity_accuracy_and_disagreements():
    data = record(shift=0.3)
    text = markdown(data)
    parity = data["parity"]
    assert "## Parity" in text and "**FAILED**" in text
    assert f"accuracy on 2 labelled examples: original {parity['accuracy']['original']:.4f}" in text
    assert "| synthetic | 8 |" in text and "| dataset | 2 |" in text
    assert "## Benchmark" in text and "Speedup (compiled / original throughput) at batch 4" in text
    assert "0.000 " not in text and "0.000|" not in text


def test_a_near_zero_difference_prints_as_zero_not_0_000():
    text = markdown(record(bench=False))
    assert "max abs diff 0, mean 0" in text and "**passed**" in text


def test_an_unverified_model_says_so():
    data = record(bench=False)
    del data["parity"]
    assert "Not verified (verify=off)" in markdown(data)
    console = Console(width=100, record=True)
    console.print(summary_table(data))
    assert "not verified" in console.export_text()


def test_terminal_summary_fits_80_columns():
    console = Console(width=80, record=True)
    console.print(summary_table(record(shift=0.3)))
    text = console.export_text()
    assert "FAILED" in text and "max |dp|" in text and "accuracy" in text and "seq/s" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_failed_plan_record_renders():
    text = markdown({"status": "failed", "failed_step": "plan", "error": "bad override", "steps": []})
    assert "**Failed at plan**: bad override" in text and "None" not in text


def test_sweep_summary_has_one_row_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    for number, (overrides, data) in enumerate(
        [
            (["precision=fp32"], record()),
            (
                ["precision=mixed"],
                {"status": "failed", "failed_step": "rewrite_attention_mask", "error": "must be\nnegative"},
            ),
            (["precision=mixed_bf16"], None),
        ]
    ):
        job = sweep / str(number)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
        if data is not None:
            write_reports(job, data)
    rows = summarize(sweep)
    assert [row["status"] for row in rows] == ["passed", "failed", "failed"]
    assert rows[0]["overrides"] == "precision=fp32" and float(rows[0]["speedup"]) > 0
    assert "must be" in rows[1]["reason"] and "no report.json" in rows[2]["reason"]
    csv_lines = (sweep / "summary.csv").read_text().strip().splitlines()
    assert csv_lines[0].split(",") == columns(rows) and len(csv_lines) >= 4
    table = (sweep / "summary.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in table) == 1 + 3  # header and one line per job, newlines folded
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_reports_each_figures_spread_over_its_rounds():
    bench = record()["bench"]
    for name in ("original", "compiled"):
        for size in ("1", "4"):
            figure = bench[name]["spread"]["throughput"][size]
            assert figure["rounds"] == 2 and figure["min"] <= bench[name]["throughput"][size] <= figure["max"]
            assert figure["cv"] is not None and figure["cv"] >= 0
        assert bench[name]["spread"]["latency_p50_ms"]["min"] <= bench[name]["spread"]["latency_p50_ms"]["max"]
    assert bench["speedup_spread"]["min"] <= bench["speedup_spread"]["max"]
    assert bench["load_average"]["cores"] >= 1 and isinstance(bench["reliable"], bool)
    assert bench["reliable"] == (not bench["unreliable_reasons"])


def test_a_noisy_or_busy_benchmark_marks_the_speedup_unreliable(monkeypatch):
    from bertc.evaluate import spread

    steady = {"throughput": {"8": {"min": 10.0, "max": 10.2, "cv": 0.01, "rounds": 3}}}
    noisy = {"throughput": {"8": {"min": 6.0, "max": 12.0, "cv": 0.3, "rounds": 3}}}
    quiet = [{"one_minute": 0.5, "cores": 2}]
    above = {"min": 1.1, "max": 1.2, "cv": 0.03, "rounds": 3}
    assert spread.unreliable_reasons({"original": steady, "compiled": steady}, above, 8, quiet) == []
    reasons = spread.unreliable_reasons({"original": steady, "compiled": noisy}, above, 8, quiet)
    assert reasons == ["compiled b8 throughput varies 30% between rounds (over 10%)"]
    straddles = {"min": 0.9, "max": 1.3, "cv": 0.2, "rounds": 3}
    assert "both sides of 1" in spread.unreliable_reasons({"original": steady}, straddles, 8, quiet)[0]
    busy = spread.unreliable_reasons({"original": steady}, above, 8, [{"one_minute": 5.0, "cores": 2}])
    assert busy == ["1-minute load average 5.0 exceeds the 2 cores (other work was running)"]
    single = spread.unreliable_reasons({"original": steady}, {**above, "rounds": 1}, 8, quiet)
    assert "one round only" in single[0]
    # The terminal and report.md say so.
    data = record()
    data["bench"].update(reliable=False, unreliable_reasons=reasons)
    console = Console(width=80, record=True)
    console.print(summary_table(data))
    text = " ".join(console.export_text().split())
    assert "unreliable" in text and "varies 30%" in text and "speedup" in text and "rounds" in text
    assert "**The speedup is unreliable**: compiled b8 throughput varies 30%" in markdown(data)
    assert "Spread over the rounds" in markdown(data)


def write_sweep(sweep, jobs):
    for number, (overrides, data) in enumerate(jobs):
        job = sweep / str(number)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
        if data is not None:
            write_reports(job, data)


def test_sweep_columns_name_units_and_batch_sizes(tmp_path):
    write_sweep(tmp_path, [(["precision=fp32"], record()), (["precision=mixed"], record(shift=0.01))])
    rows = summarize(tmp_path)
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    for column in (
        "original_throughput_b4_seq_s",
        "compiled_throughput_b4_seq_s",
        "speedup_b4_x",
        "speedup_b4_min_x",
        "speedup_b4_max_x",
        "throughput_cv_b4_pct",
        "original_latency_b1_p50_ms",
        "compiled_latency_b1_p50_ms",
        "reliable",
        "unreliable_reasons",
    ):
        assert column in header, column
    assert not {"throughput_original", "throughput_compiled", "speedup"} & set(header)
    assert float(rows[0]["speedup_min"]) <= float(rows[0]["speedup"]) <= float(rows[0]["speedup_max"])
    assert "speedup_b4_min_x" in (tmp_path / "summary.md").read_text()


def test_sweep_plot_labels_stay_inside_the_frame_and_axes_name_units():
    rows = []
    for job, (diff, speedup) in enumerate([(1e-9, 0.7), (1e-2, 1.9), (3e-3, 1.2), (0.0, 1.0), (2e-2, 0.6)]):
        rows.append(
            {
                "job": str(job),
                "overrides": f"model.path=/models/mrpc precision=p{job} partition=cpu_embed "
                f"mask.fold_scale=true target.device=cpu extra.long.override{job}=value",
                "status": "passed",
                "max_abs_diff": str(diff),
                "speedup": str(speedup),
                "speedup_min": str(speedup - 0.1),
                "speedup_max": str(speedup + 0.1),
                "reliable": "yes",
                "batch": 8,
            }
        )
    figure = plot_figure(rows)
    axes = figure.axes[0]
    assert "seq/s" in axes.get_ylabel() and "batch 8" in axes.get_ylabel() and "probability" in axes.get_xlabel()
    assert len(axes.containers) == len(rows)  # one error bar per job
    renderer = figure.canvas.get_renderer()
    frame = axes.get_window_extent(renderer)
    labels = axes.texts
    assert len(labels) == len(rows)
    for label in labels:
        box = label.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, label.get_text()


def test_sweep_size_counts_the_jobs():
    assert sweep_size(["precision=fp32,mixed,mixed_bf16", "partition=none,cpu_embed", "bench=quick"]) == 6
    assert sweep_size(["x=range(0,4)"], {"y": "a,b"}) == 8
    assert sweep_size(["model=glob(*)"]) is None


def test_a_written_report_reads_back_as_the_typed_report(tmp_path):
    data = record()
    write_reports(tmp_path, data)
    report = read_report(tmp_path / "report.json")
    assert report.status == "passed" and report.artifact is not None and report.artifact.path == "/runs/x/model"
    assert report.parity is not None and report.parity.max_abs_diff == data["parity"]["max_abs_diff"]
    assert report.parity.accuracy is not None and set(report.parity.by_source) == {"synthetic", "dataset"}
    assert report.bench is not None and report.bench.speedup_batch == 4 and report.bench.speedup_spread is not None
    assert report.steps[0].op_delta == {"Identity": -3}


def test_an_int8_or_nonfinite_parity_reads_back(tmp_path):
    data = record(bench=False)
    data["parity"] = compare(model(), model(0.3), [labelled_batch()], "int8", None)
    write_reports(tmp_path, data)
    assert read_report(tmp_path / "report.json").parity.agreement_on == "dataset"

    def broken(feeds):
        return {key: value * np.nan for key, value in model()(feeds).items()}

    data["parity"] = compare(model(), broken, [labelled_batch()], "fp32", None)
    write_reports(tmp_path, data)
    assert read_report(tmp_path / "report.json").parity.max_abs_diff is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda data: data.update(status=3), 'report.status: expected one of "running", "passed"'),
        (
            lambda data: data["parity"].update(max_abs_diff="0.1"),
            'report.parity.max_abs_diff: expected a number, got "0.1"',
        ),
        (
            lambda data: data["bench"]["original"].update(throughput=[]),
            "report.bench.original.throughput: expected an object, got a list",
        ),
        (lambda data: data["steps"][0].pop("name"), "report.steps[0].name: missing"),
    ],
)
def test_a_bad_report_field_is_named(tmp_path, edit, message):
    data = record()
    edit(data)
    (tmp_path / "report.json").write_text(json.dumps(data))
    with pytest.raises(BadReport) as raised:
        read_report(tmp_path / "report.json")
    assert message in str(raised.value) and str(tmp_path / "report.json") in str(raised.value)


def test_a_record_of_the_wrong_shape_is_not_written(tmp_path):
    from bertc.runtime.records import RecordError

    with pytest.raises(RecordError, match=r"report\.parity\.examples: missing"):
        write_reports(tmp_path, {"status": "passed", "parity": {"max_abs_diff": "small"}})
    assert not (tmp_path / "report.json").exists()
    write_reports(tmp_path, {"status": "failed", "failed_step": "load", "error": "no model"})
    assert read_report(tmp_path / "report.json").status == "failed"
