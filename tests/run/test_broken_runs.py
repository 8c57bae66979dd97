"""`bertc.driver.reproduce` and `bertc.run.diff` on broken or foreign folders and files: exit 2, a message, no
traceback, and no rebuild started."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console

from bertc.driver import reproduce
from bertc.driver.cli import CONF_DIR, run_job
from bertc.run import diff


@pytest.fixture(scope="module")
def dry_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A real run folder (a dry run: resolved.yaml, plan.json, report.json) to break copies of."""
    run_dir = tmp_path_factory.mktemp("dry") / "run"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model.path={tiny_model_dir}", "dry_run=true"])
    assert run_job(cfg, run_dir=run_dir, console=Console(file=io.StringIO())) == 0
    return run_dir


def _edit_json(name: str, edit):
    def breaker(run: Path) -> None:
        value = json.loads((run / name).read_text())
        edit(value)
        (run / name).write_text(json.dumps(value))

    return breaker


def _write(name: str, data: bytes):
    return lambda run: (run / name).write_bytes(data)


BINARY = bytes(range(256)) * 8
PLAN_BREAKERS = {
    "no plan.json": (lambda run: (run / "plan.json").unlink(), "has no plan.json"),
    "plan.json a folder": (
        lambda run: ((run / "plan.json").unlink(), (run / "plan.json").mkdir()),
        "has no plan.json",
    ),
    "binary plan.json": (_write("plan.json", BINARY), "cannot be read as JSON"),
    "corrupted plan.json": (_write("plan.json", b'{"fingerprint": "sha256:'), "cannot be read as JSON"),
    "plan.json a list": (_write("plan.json", b"[1, 2, 3]"), "holds no JSON object"),
    "plan.json of another tool": (_write("plan.json", b'{"name": "x"}'), "lacks fingerprint"),
    "wrong types in plan.json": (
        _edit_json("plan.json", lambda plan: plan.update(plan=3, versions="x")),
        "plan is not an object",
    ),
    "steps not a list": (
        _edit_json("plan.json", lambda plan: plan["plan"].update(steps={"a": 1})),
        "plan.steps is not a list",
    ),
    "a step without a name": (
        _edit_json("plan.json", lambda plan: plan["plan"]["steps"].append({"params": {}})),
        "plan.steps is not a list",
    ),
    "binary report.json": (_write("report.json", BINARY), "report.json cannot be read as JSON"),
    "corrupted report.json": (_write("report.json", b"{"), "report.json cannot be read as JSON"),
    "report.json artifact of the wrong type": (
        _edit_json("report.json", lambda report: report.update(artifact="model/")),
        'is not a report bertc wrote: report.artifact: expected an object, got "model/"',
    ),
}
RESOLVED_BREAKERS = {
    "no resolved.yaml": (lambda run: (run / "resolved.yaml").unlink(), "has no resolved.yaml"),
    "binary resolved.yaml": (_write("resolved.yaml", BINARY), "cannot be read as YAML"),
    "corrupted resolved.yaml": (
        _write("resolved.yaml", b"model: [unclosed\n  bench: {"),
        "cannot be read as YAML",
    ),
    "resolved.yaml a list": (_write("resolved.yaml", b"- a\n- b\n"), "holds no mapping"),
    "resolved.yaml of the wrong type": (
        _write("resolved.yaml", b"verify:\n  batches: many\n"),
        "does not fit bertc's config schema",
    ),
    "resolved.yaml with a foreign key": (
        _write("resolved.yaml", b"optimizer:\n  lr: 0.1\n"),
        "does not fit bertc's config schema",
    ),
    "a failed run": (
        _edit_json("report.json", lambda report: report.update(status="failed", failed_step="load", error="x")),
        "status failed at load",
    ),
    "a passed run without its digest": (
        _edit_json("report.json", lambda report: report.update(status="passed")),
        "no artifact digest",
    ),
}


def broken_copy(dry_run: Path, tmp_path: Path, breaker) -> Path:
    run = tmp_path / "broken"
    shutil.copytree(dry_run, run)
    breaker(run)
    return run


def assert_refused(code: int, captured, words: str) -> None:
    assert code == 2, captured.out + captured.err
    assert captured.err.startswith("error: ") and words in captured.err, captured.err
    assert "Traceback" not in captured.out + captured.err and "rebuilding" not in captured.out


@pytest.mark.parametrize("case", list(PLAN_BREAKERS))
def test_diff_and_reproduce_refuse_a_broken_plan_or_report(dry_run, tmp_path, capsys, case):
    breaker, words = PLAN_BREAKERS[case]
    run = broken_copy(dry_run, tmp_path, breaker)
    assert_refused(diff.main([str(dry_run), str(run)]), capsys.readouterr(), words)
    assert_refused(diff.main([str(run), str(dry_run)]), capsys.readouterr(), words)
    assert_refused(reproduce.main([str(run), "--out", str(tmp_path / "out")]), capsys.readouterr(), words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", list(RESOLVED_BREAKERS))
def test_reproduce_refuses_what_it_cannot_rebuild(dry_run, tmp_path, capsys, case):
    breaker, words = RESOLVED_BREAKERS[case]
    run = broken_copy(dry_run, tmp_path, breaker)
    assert_refused(reproduce.main([str(run), "--out", str(tmp_path / "out")]), capsys.readouterr(), words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("what", ["a file", "nothing"])
def test_not_a_folder(tmp_path, capsys, dry_run, what):
    path = tmp_path / "thing"
    if what == "a file":
        path.write_bytes(BINARY)
    assert_refused(diff.main([str(path), str(dry_run)]), capsys.readouterr(), "is not a folder")
    assert_refused(reproduce.main([str(path)]), capsys.readouterr(), "is not a folder")


def test_reproduce_out_that_is_a_file(dry_run, tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    assert_refused(reproduce.main([str(dry_run), "--out", str(tmp_path / "out")]), capsys.readouterr(), "is a file")


def test_a_damaged_model_folder_is_named_not_a_traceback(tmp_path):
    """Where reproduce recomputes the run's digest, a damaged saved_model.pb is a note, not a crash."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"\x0a\xff\xff\xff\x0f garbage")
    digest, note = reproduce._digest_now(folder, "sha256:recorded")
    assert digest == "sha256:recorded" and "cannot be read any more" in note
