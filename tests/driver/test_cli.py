"""`python -m bertc` as a user runs it: the run folder, dry runs, clear errors with no half-written model,
and a sweep with its summary (including a failing job)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def bertc(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bertc", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


def test_compile_leaves_a_complete_run_folder(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = bertc(
        f"model.path={tiny_model_dir}",
        "precision=mixed",
        "partition=cpu_embed",
        "bench=quick",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "resolved.yaml",
        "plan.json",
        "report.json",
        "report.md",
        "model/saved_model.pb",
    ):
        assert (run_dir / name).exists(), name
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "passed"
    assert report["input"]["path"] == str(tiny_model_dir) and report["input"]["digest"].startswith("sha256:")
    assert [s["name"] for s in report["steps"]] == [
        "remove_training_ops",
        "rewrite_attention_mask",
        "apply_precision_map",
        "partition_graph",
    ]
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
        (
            ["partition=cpu_embed", "partition.boundaries=[bert/embeddings/LayerNorm/batchnorm/add_7:0]"],
            2,
            "nearest node names",
        ),
        (["mask.bias_value=-1e6", "precision=mixed"], 2, "not finite in float16"),
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


def test_unknown_option_is_named(tmp_path):
    result = bertc("mask.no_such_option=1", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert result.returncode != 0 and "no_such_option" in result.stderr


def test_sweep_writes_summary_with_a_failed_row(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = bertc(
        "-m",
        f"model.path={tiny_model_dir}",
        "precision=fp32,mixed_bf16",
        "mask.bias_value=-10000,1",
        "bench=quick",
        "bench.batch_sizes=[4]",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    started = [line for line in result.stdout.splitlines() if line.startswith("job ")]
    assert [line.split(":")[0] for line in started] == ["job 1/4", "job 2/4", "job 3/4", "job 4/4"], result.stdout[
        -3000:
    ]
    assert "precision=fp32 mask.bias_value=-10000" in started[0]
    rows = (sweep_dir / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4
    statuses = [row.split(",")[2] for row in rows[1:]]
    assert statuses.count("passed") == 2 and statuses.count("failed") == 2
    assert "mask.bias_value=1.0 is out of range" in (sweep_dir / "summary.md").read_text()
    assert (sweep_dir / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_is_bertcs_own_fast_and_names_no_schema(tmp_path):
    start = time.perf_counter()
    result = bertc("--help", cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert result.returncode == 0 and seconds < 5, (seconds, result.stderr)
    text = result.stdout
    assert "powered by Hydra" not in text and "base_" not in text
    for group in ("model", "removal", "mask", "precision", "partition", "target", "verify", "bench"):
        assert f"\n  {group} " in text, group
    assert "options: fp32, int8, mixed, mixed_bf16" in text and "exit codes" in text and "bertc -m precision=" in text


def test_version_prints_bertcs_version(tmp_path):
    from importlib import metadata

    result = bertc("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"bertc {metadata.version('bertc')}"


@pytest.mark.parametrize(
    "override, words",
    [
        ("precison=mixed", "did you mean precision?"),
        ("precision=mixd", "did you mean mixed?"),
        ("mask.fold_scal=true", "did you mean mask.fold_scale?"),
    ],
)
def test_unknown_keys_and_options_suggest_the_nearest_and_exit_2(tmp_path, override, words):
    start = time.perf_counter()
    result = bertc(override, f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr
    assert time.perf_counter() - start < 5 and not (tmp_path / "x").exists()


def test_a_wrong_type_is_a_config_error_exit_2(tmp_path):
    result = bertc("mask.fold_scale=maybe", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert result.returncode == 2 and "not a valid bool" in result.stderr


def _completion(line: str, cwd: Path) -> list[str]:
    """What bash completion offers for `line` (Hydra's completion query, as the shell would ask it)."""
    env = {**os.environ, "COMP_LINE": line}
    result = subprocess.run(
        [sys.executable, "-m", "bertc", "-sc", "query=bash"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    return result.stdout.split()


def test_shell_completion_offers_groups_and_options_without_schemas(tmp_path):
    groups = _completion("bertc ", tmp_path)
    assert (
        "precision=" in groups and "mask." in groups and not any("base_" in word or "schema" in word for word in groups)
    )
    options = _completion("bertc precision=", tmp_path)
    assert options == ["precision=fp32", "precision=int8", "precision=mixed", "precision=mixed_bf16"]


def test_help_fits_an_80_column_terminal():
    from bertc.driver.cli import CONF_DIR
    from bertc.driver.usage import help_text

    text = help_text(Path(CONF_DIR), width=80)
    assert max(len(line) for line in text.splitlines()) <= 80 and "options: cpu_embed" not in text
    assert "length=trim" in text and "target=xla mask.fold_scale=true length=trim" not in text
