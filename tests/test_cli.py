"""`python -m bertc` as a user runs it: the run folder, dry runs, clear errors with no half-written model,
and a sweep with its summary (including a failing job)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def bertc(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertc", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def test_compile_leaves_a_complete_run_folder(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = bertc(f"model.path={tiny_model_dir}", "precision=mixed", "partition=cpu_embed", "bench=quick", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "resolved.yaml", "plan.json", "report.json", "report.md", "model/saved_model.pb"):
        assert (run_dir / name).exists(), name
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "passed"
    assert report["input"]["path"] == str(tiny_model_dir) and report["input"]["digest"].startswith("sha256:")
    assert [s["name"] for s in report["steps"]] == ["remove_training_ops", "rewrite_attention_mask", "apply_precision_map", "partition_graph"]
    assert all({"name", "op_delta", "seconds"} <= set(step) for step in report["steps"])
    assert report["bench"]["speedup"] > 0 and "p50" in report["bench"]["compiled"]["latency_ms"]
    assert len(report["target"]["boundaries"]) == 2
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["fingerprint"] == report["fingerprint"]
    assert "bertc plan" in result.stdout and "passed" in result.stdout
    assert "cuda" not in (result.stdout + result.stderr).lower(), "TensorFlow start-up noise reached the terminal"


def test_dry_run_prints_plan_and_fingerprint_only(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "dry"
    result = bertc(f"model.path={tiny_model_dir}", "dry_run=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fingerprint sha256:" in result.stdout and "nothing compiled" in result.stdout
    assert (run_dir / "plan.json").is_file() and not (run_dir / "model").exists()


@pytest.mark.parametrize(
    "overrides, code, words",
    [
        (["model.path=/no/such/model"], 2, "does not exist"),
        (["removal.ops=[Identity,CheckNumerics]"], 2, "matched nothing"),
        (["precision=mixed", "+precision.rules=[{scope: 'nowhere/*', dtype: float16}]"], 2, "matched nothing"),
        (["partition=cpu_embed", "partition.boundaries=[bert/embeddings/LayerNorm/batchnorm/add_7:0]"], 2, "nearest node names"),
        (["mask.bias_value=1e9", "precision=mixed"], 2, "not finite in float16"),
        (["target=neuron"], 2, "Neuron package repository"),
    ],
)
def test_user_errors_are_clear_and_leave_no_model(tiny_model_dir, tmp_path, overrides, code, words):
    run_dir = tmp_path / "bad"
    if not any(o.startswith("model.path") for o in overrides):
        overrides.append(f"model.path={tiny_model_dir}")
    result = bertc(*overrides, "bench=off", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-3000:]
    assert words in " ".join(output.split()), output[-3000:]
    assert "Traceback" not in output
    assert not (run_dir / "model").exists()
    assert json.loads((run_dir / "report.json").read_text())["status"] == "failed"


def test_unknown_option_gets_hydras_message(tmp_path):
    result = bertc("mask.no_such_option=1", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert result.returncode != 0 and "no_such_option" in result.stderr


def test_sweep_writes_summary_with_a_failed_row(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = bertc("-m", f"model.path={tiny_model_dir}", "precision=fp32,mixed_bf16", "mask.bias_value=-10000,1",
                   "bench=quick", "bench.batch_sizes=[4]", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    started = [line for line in result.stdout.splitlines() if line.startswith("job ")]
    assert [line.split(":")[0] for line in started] == ["job 1/4", "job 2/4", "job 3/4", "job 4/4"], result.stdout[-3000:]
    assert "precision=fp32 mask.bias_value=-10000" in started[0]
    rows = (sweep_dir / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4
    statuses = [row.split(",")[2] for row in rows[1:]]
    assert statuses.count("passed") == 2 and statuses.count("failed") == 2
    assert "must be negative" in (sweep_dir / "summary.md").read_text()
    assert (sweep_dir / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
