"""Bad inputs: the tiny model copied and its saved_model.pb edited, a compile run in-process with its report, and a
refusal checked (exit code, key words, no model/ or staging folder, the input folder's state unchanged)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

from hydra import compose, initialize_config_dir
from rich.console import Console
from tensorflow.core.protobuf import saved_model_pb2

from bertc.driver.cli import CONF_DIR
from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan


def copy_model(tiny_model_dir, tmp_path) -> Path:
    target = tmp_path / "model_copy"
    shutil.copytree(tiny_model_dir, target)
    return target


def edit_saved_model(path: Path, edit) -> None:
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    edit(proto.meta_graphs[0])
    (path / "saved_model.pb").write_bytes(proto.SerializeToString())


def folder_state(path: Path) -> dict:
    """Every entry under `path` without following links: files by content, links by target."""
    state = {}
    for folder, subfolders, files in os.walk(path):
        for name in subfolders + files:
            entry = Path(folder) / name
            key = str(entry.relative_to(path))
            if entry.is_symlink():
                state[key] = "link:" + os.readlink(entry)
            elif entry.is_file():
                state[key] = hashlib.sha256(entry.read_bytes()).hexdigest()
    return state


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=["bench=off", "verify.batches=1", *overrides])


def run_model(model: Path, run_dir: Path, *overrides: str) -> tuple[int, dict, str]:
    """A compile of `model` in-process (bench off, one verify batch): (exit code, report.json, what it printed)."""
    stream = io.StringIO()
    plan = build_plan(compose_cfg(f"model.path={model}", *overrides))
    code = compile_run(plan, run_dir, Console(file=stream, width=200, soft_wrap=True))
    return code, json.loads((run_dir / "report.json").read_text()), stream.getvalue()


def assert_refused(code, report, output, run_dir: Path, *words, exit_code: int = 2):
    assert code == exit_code, output
    assert report["status"] == "failed"
    for word in words:
        assert word in report["error"], report["error"]
    assert "Traceback" not in output and "traceback" not in report
    assert not (run_dir / "model").exists() and not (run_dir / "rejected").exists()
    assert not list(run_dir.glob(".model.partial-*")), "a staging folder was left behind"
