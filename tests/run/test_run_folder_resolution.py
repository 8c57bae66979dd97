"""The run folder as Hydra resolves it (quoting, interpolation, the working folder), checked before Hydra writes
anything: never in the input, the input never in it; a refused run leaves no file anywhere; and a run that fails
under overwrite=true leaves no servable model its report does not vouch for."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console

from bertc.driver.cli import CONF_DIR
from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan
from bertc.run.rundir import LOCK_FILE


def tree(path: Path) -> dict[str, str]:
    """Every file and folder under `path` (hidden ones too), files with their sha256."""
    return {
        str(entry.relative_to(path)): hashlib.sha256(entry.read_bytes()).hexdigest() if entry.is_file() else "dir"
        for entry in sorted(path.rglob("*"))
    }


def bertc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "bertc", *args], cwd=cwd, capture_output=True, text=True, env=environment, timeout=300
    )


@pytest.fixture
def model(tiny_model_dir, tmp_path) -> Path:
    """A copy of the tiny model the test may see changed (the session's own stays untouched)."""
    import shutil

    copy = tmp_path / "input" / "model"
    shutil.copytree(tiny_model_dir, copy)
    return copy


def test_a_quoted_run_folder_that_is_the_model_is_refused_before_hydra_writes(model, tmp_path):
    before = tree(model)
    done = bertc(f"model.path={model}", f'hydra.run.dir="{model}"', "bench=off", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "is the input model folder" in done.stderr and "Traceback" not in done.stderr
    assert tree(model) == before, "not even .hydra/ was written into the model"


def test_the_default_run_folder_from_inside_the_model_is_refused_and_creates_nothing(model):
    before = tree(model)
    done = bertc("model.path=.", "bench=off", cwd=model)
    assert done.returncode == 2 and "inside the input model folder" in done.stderr, done.stderr
    assert tree(model) == before, "no outputs/ folder was created in the model"


def test_an_interpolated_run_folder_inside_the_model_is_refused(model, tmp_path):
    before = tree(model)
    done = bertc(f"model.path={model}", "hydra.run.dir=${model.path}/out", "bench=off", cwd=tmp_path)
    assert done.returncode == 2 and "inside the input model folder" in done.stderr, done.stderr
    assert tree(model) == before


def test_a_refused_run_rewrites_nothing_of_a_finished_or_a_running_run(model, tmp_path):
    finished = tmp_path / "finished"
    assert bertc(f"model.path={model}", f"hydra.run.dir={finished}", "bench=off", cwd=tmp_path).returncode == 0
    before = tree(finished)
    done = bertc(f"model.path={model}", f'hydra.run.dir="{finished}"', "precision=mixed", cwd=tmp_path)
    assert done.returncode == 2 and "already holds a finished run" in done.stderr, done.stderr
    assert tree(finished) == before, "the finished run's .hydra/*.yaml were not rewritten"
    running = tmp_path / "running"
    (running / ".hydra").mkdir(parents=True)
    (running / ".hydra" / "overrides.yaml").write_text("- precision=fp32\n")
    with open(running / LOCK_FILE, "w") as lock:  # another run holds the folder
        lock.write("4242\n")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = bertc(f"model.path={model}", f'hydra.run.dir="{running}"', "precision=mixed", cwd=tmp_path)
    assert done.returncode == 2 and "another bertc run (process 4242)" in done.stderr, done.stderr
    assert (running / ".hydra" / "overrides.yaml").read_text() == "- precision=fp32\n"


def test_a_quoted_folder_with_spaces_and_accents_is_the_one_used_and_nothing_strays(model, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    wanted = tmp_path / "runs" / "mon dossier é"
    done = bertc(f"model.path={model}", f'hydra.run.dir="{wanted}"', "dry_run=true", cwd=work)
    assert done.returncode == 0, done.stderr
    assert json.loads((wanted / "report.json").read_text())["status"] == "planned"
    assert list(work.iterdir()) == [], "no stray folder (or lock) beside the working folder"
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["mon dossier é"]


def test_an_input_inside_the_run_folder_is_refused(model, tmp_path):
    run = tmp_path / "run"
    assert bertc(f"model.path={model}", f"hydra.run.dir={run}", "bench=off", cwd=tmp_path).returncode == 0
    served = next((run / "serving").iterdir()) / "1"
    before = tree(run)
    done = bertc(f"model.path={served}", f"hydra.run.dir={run}", "overwrite=true", "bench=off", cwd=tmp_path)
    assert done.returncode == 2 and "is inside the run folder" in done.stderr, done.stderr
    assert tree(run) == before, "the served model (hard links to model/) was not rewritten"


def test_a_failed_run_under_overwrite_leaves_no_servable_model_of_the_previous_run(model, tmp_path):
    def compile_with(*overrides: str) -> dict:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[f"model.path={model}", "bench=off", *overrides])
        compile_run(build_plan(cfg), tmp_path / "run", Console(file=io.StringIO()), overwrite=True)
        return json.loads((tmp_path / "run" / "report.json").read_text())

    assert compile_with()["status"] == "passed" and (tmp_path / "run" / "serving").is_dir()
    failed = compile_with("removal.ops=[CheckNumerics]")  # matches nothing: the run fails at the removal step
    assert failed["status"] == "failed"
    assert not (tmp_path / "run" / "serving").exists() and not (tmp_path / "run" / "model").exists()
    rejected = compile_with()  # passes again, then is rejected by an impossible gate
    assert rejected["status"] == "passed"
    rejected = compile_with("precision=mixed", "verify.tolerance=1e-9")
    assert rejected["status"] == "rejected" and (tmp_path / "run" / "rejected").is_dir()
    assert not (tmp_path / "run" / "serving").exists() and not (tmp_path / "run" / "model").exists()


FULL_DISK = """
import errno, os, runpy, sys
def full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.pwrite = full  # the lock file's first write: as on a filesystem with no room left
sys.argv = ["bertc", *sys.argv[1:]]
runpy.run_module("bertc", run_name="__main__")
"""


def test_a_run_folder_on_a_full_disk_is_one_line_and_leaves_nothing(model, tmp_path):
    run = tmp_path / "full" / "run"
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, f"model.path={model}", f"hydra.run.dir={run}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot be written (No space left on device)" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "full").exists(), "the folders the claim created are removed again"
