"""bertc.compile from Python: the report it returns, config errors raised, failures reported, cheap import."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from rich.console import Console

import bertc
from bertc.errors import ConfigError


def quiet() -> Console:
    return Console(file=io.StringIO())


def test_compile_returns_the_report(tiny_model_dir, tmp_path):
    report = bertc.compile(
        tiny_model_dir,
        overrides=["precision=mixed", "bench=quick", "bench.batch_sizes=[1,2]"],
        run_dir=tmp_path / "run",
        console=quiet(),
    )
    assert report["status"] == "passed" and report["parity"]["passed"] and report["precision"] == "mixed"
    assert report["bench"]["speedup"] > 0 and report["bench"]["speedup_batch"] == 2
    assert (
        report["model_path"] == str(tmp_path / "run" / "model")
        and (tmp_path / "run" / "model" / "saved_model.pb").is_file()
    )
    assert report["run_dir"] == str(tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {key: value for key, value in report.items() if key not in ("run_dir", "model_path")} == on_disk
    assert on_disk["input"]["path"] == str(tiny_model_dir)
    assert "precision=mixed" in (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()


def test_a_failed_compile_is_a_report_not_an_exit(tiny_model_dir, tmp_path):
    report = bertc.compile(
        tiny_model_dir,
        overrides=["removal.ops=[CheckNumerics]", "bench=off"],
        run_dir=tmp_path,
        console=quiet(),
    )
    assert report["status"] == "failed" and "matched nothing" in report["error"] and report["model_path"] is None
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("override, words", [("precison=mixed", "precison"), ("bench.rounds=many", "rounds")])
def test_a_config_the_schema_refuses_raises(tmp_path, override, words):
    with pytest.raises(ConfigError, match=words):
        bertc.compile(overrides=[override], run_dir=tmp_path, console=quiet())
    assert not (tmp_path / "report.json").exists()


def test_import_bertc_is_cheap():
    code = "import sys, bertc; bertc.compile; print(sorted({'tensorflow', 'hydra', 'jax'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
