"""Reproducible runs: two compiles of one plan give one artifact digest, `bertc.driver.reproduce` says identical
or names what changed, `bertc.run.diff` compares plans, and the fingerprint holds no path or time."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console

from bertc.driver import reproduce
from bertc.driver.cli import CONF_DIR
from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan, fingerprint
from bertc.run import diff
from bertc.run.artifact import artifact_digest, canonical_saved_model

FAST = ["bench=off", "verify.batches=1", "verify.batch_size=2"]


def bertc_process(module: str, *args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )


def finish(process: subprocess.Popen, timeout: int = 300) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Three compiles in separate processes, started together: `first` and `second` of the same plan
    on the shared tiny model, `copied` of a private copy of it that a test may change afterwards."""
    base = tmp_path_factory.mktemp("runs")
    copy = base / "tiny-copy"
    shutil.copytree(tiny_model_dir, copy)
    models = {"first": tiny_model_dir, "second": tiny_model_dir, "copied": copy}
    processes = {
        name: bertc_process("bertc", f"model.path={model}", *FAST, f"hydra.run.dir={base / name}", cwd=base)
        for name, model in models.items()
    }
    for name, process in processes.items():
        code, output = finish(process)
        assert code == 0, f"{name}: {output[-3000:]}"
    return {name: base / name for name in processes} | {"model_copy": copy}


def test_two_compiles_of_one_plan_give_identical_digests(runs):
    first, second = (json.loads((runs[name] / "report.json").read_text()) for name in ("first", "second"))
    assert first["fingerprint"] == second["fingerprint"]
    assert first["artifact"]["digest"] == second["artifact"]["digest"]
    # In two fresh processes TensorFlow writes the same bytes; only fingerprint.pb holds a random UUID.
    for name in ["saved_model.pb"] + [
        f"variables/{file.name}" for file in (runs["first"] / "model" / "variables").iterdir()
    ]:
        assert (runs["first"] / "model" / name).read_bytes() == (runs["second"] / "model" / name).read_bytes(), name


def test_hydra_snapshot_rebuilds_the_same_plan(runs, tmp_path):
    rebuilt = tmp_path / "rebuilt"
    snapshot = ["--config-path", str(runs["first"] / ".hydra"), "--config-name", "config", f"hydra.run.dir={rebuilt}"]
    code, output = finish(bertc_process("bertc", *snapshot, cwd=tmp_path))
    assert code == 0, output[-3000:]
    first, again = (json.loads((folder / "report.json").read_text()) for folder in (runs["first"], rebuilt))
    assert again["fingerprint"] == first["fingerprint"]
    assert again["artifact"]["digest"] == first["artifact"]["digest"]


def test_digest_ignores_tensorflows_per_process_numbering(tiny_model_dir, tmp_path):
    """Two compiles in one process (a sweep, a test) get other function numbers; the digest does not."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model.path={tiny_model_dir}", "bench=off", "verify=off"])
    folders = []
    for name in ("a", "b"):
        assert compile_run(build_plan(cfg), tmp_path / name, Console(file=io.StringIO())) == 0
        folders.append(tmp_path / name / "model")
    raw = [(folder / "saved_model.pb").read_bytes() for folder in folders]
    assert canonical_saved_model(raw[0]) == canonical_saved_model(raw[1])
    assert artifact_digest(folders[0]) == artifact_digest(folders[1])


def test_reproduce_reports_identical(runs, tmp_path):
    code, output = finish(bertc_process("bertc.driver.reproduce", str(runs["first"]), cwd=tmp_path))
    assert code == 0, output[-3000:]
    assert "identical: the rebuild has the same fingerprint and the same artifact digest" in output
    assert "byte-identical" in output


def test_reproduce_names_a_changed_input(runs, tmp_path):
    from bertc.model.export import export_model

    shutil.rmtree(runs["model_copy"])
    export_model("size", "tiny", runs["model_copy"], seq_len=128, num_labels=2, seed=1)  # same path, other weights
    code, output = finish(
        bertc_process("bertc.driver.reproduce", str(runs["copied"]), "--out", str(tmp_path / "again"), cwd=tmp_path)
    )
    assert code == 1, output[-3000:]
    assert "NOT identical" in output and "input changed" in output
    assert "versions differ" not in output and "plan differs" not in output
    recorded = json.loads((runs["copied"] / "plan.json").read_text())["input"]["digest"]
    assert recorded in output and (tmp_path / "again" / "plan.json").is_file()


def test_reproduce_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert reproduce.main([str(tmp_path)]) == 2
    assert "no plan.json" in capsys.readouterr().err


def test_fingerprint_ignores_output_folder_and_time(runs, tiny_model_dir):
    # Two runs in other folders, at other times, in other processes: the same plan.json, byte for byte.
    assert (runs["first"] / "plan.json").read_bytes() == (runs["second"] / "plan.json").read_bytes()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        here = build_plan(compose("config", overrides=[f"model.path={tiny_model_dir}", "hydra.run.dir=/a"]))
        there = build_plan(compose("config", overrides=["model.path=/elsewhere/same-model", "hydra.run.dir=/b"]))
    versions = {"tensorflow": "2.21.0"}
    assert fingerprint(here, "sha256:x", versions) == fingerprint(there, "sha256:x", versions)


def test_diff_shows_parameter_changes_and_identical_plans(runs, tmp_path, capsys):
    assert diff.main([str(runs["first"]), str(runs["second"])]) == 0
    assert "identical plans" in capsys.readouterr().out
    changed = tmp_path / "changed"
    changed.mkdir()
    plan = json.loads((runs["first"] / "plan.json").read_text())
    mask = next(step for step in plan["plan"]["steps"] if step["name"] == "rewrite_attention_mask")
    mask["params"]["fold_scale"] = True
    plan["plan"]["verify"]["batches"] = 9
    plan["versions"]["tensorflow"] = "0.0"
    (changed / "plan.json").write_text(json.dumps(plan))
    assert diff.main([str(runs["first"]), str(changed)]) == 1
    output = capsys.readouterr().out
    assert "step rewrite_attention_mask  fold_scale: false -> true" in output
    assert "tensorflow" in output and "batches: 1 -> 9   (not in the fingerprint)" in output
    assert "identical plans" not in output
