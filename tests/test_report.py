"""report.json / report.md / the terminal summary / the sweep summary, from records made by verify and bench
with stand-in models (no TensorFlow): documented keys, valid JSON, readable numbers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

import bertc.report
from bertc.bench import benchmark
from bertc.report import fmt_number, markdown, summary_table, write_reports
from bertc.sweep import COLUMNS, summarize
from bertc.verify import Batch, compare, synthetic_batches


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
        "status": "passed", "failed_step": None, "error": None, "fingerprint": "sha256:" + "ab" * 32,
        "precision": "fp16", "input": {"path": "/models/m", "digest": "sha256:" + "cd" * 32},
        "steps": [{"name": "remove_training_ops", "op_delta": {"Identity": -3}, "ops_before": 10, "ops_after": 7,
                   "seconds": 0.01, "matches": {}}],
        "target": {"name": "tf", "device": "auto", "compile_seconds": 1.5, "boundaries": []},
        "artifact": {"path": "/runs/x/model", "digest": "sha256:" + "ef" * 32},
        "parity": compare(model(), model(shift), batches, "fp16", None),
    }
    if bench:
        result["bench"] = benchmark({"original": model(), "compiled": model(shift)}, (1, 4), 16, 2000,
                                    rounds=2, seconds=0.01, warmup=1)
    return result


@pytest.mark.parametrize("value, text", [
    (0.0, "0"), (0, "0"), (1e-5, "1e-05"), (2.346e-6, "2.35e-06"), (-3e-7, "-3e-07"), (0.0023, "0.0023"),
    (0.01446, "0.0145"), (0.5, "0.5"), (12.345, "12.3"), (None, "-"), (float("nan"), "nan"), ("x", "x"),
])
def test_numbers_read_well(value, text):
    assert fmt_number(value) == text


def test_every_key_in_report_json_is_documented(tmp_path):
    """The docstring of bertc/report.py is the contract for report.json's keys."""
    data = record()
    documented = bertc.report.__doc__
    keys = set(data) | set(data["parity"]) | set(data["parity"]["accuracy"]) | set(data["bench"])
    keys |= set(data["bench"]["compiled"]) | set(data["bench"]["compiled"]["latency_ms"])
    keys |= set(data["parity"]["disagreements"][0]) if data["parity"]["disagreements"] else set()
    keys -= {"seq_len", "rounds", "seconds_per_measurement"}  # bench's settings, echoed for the reader
    missing = sorted(key for key in keys if key not in documented)
    assert not missing, f"report.json keys missing from bertc/report.py's docstring: {missing}"
    assert set(data["parity"]["by_source"]) == {"synthetic", "dataset"}


def test_reports_are_valid_json_even_with_nan(tmp_path):
    data = record(bench=False)
    data["parity"] = compare(model(), lambda feeds: {key: value * np.nan for key, value in model()(feeds).items()},
                             [labelled_batch()], "fp32", None)
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
    for number, (overrides, data) in enumerate([
        (["precision=fp32"], record()),
        (["precision=mixed"], {"status": "failed", "failed_step": "rewrite_attention_mask", "error": "must be\nnegative"}),
        (["precision=mixed_bf16"], None),
    ]):
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
    assert csv_lines[0].split(",") == list(COLUMNS) and len(csv_lines) >= 4
    table = (sweep / "summary.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in table) == 1 + 3  # header and one line per job, newlines folded
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
