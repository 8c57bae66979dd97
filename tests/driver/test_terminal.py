"""What bertc prints on an 80-column terminal: the plan wraps and keeps every word, op changes are
summarised, and text with brackets (tensor shapes, lists) survives Rich's markup."""

from __future__ import annotations

import io

import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console

from bertc.driver.cli import CONF_DIR, run_job
from bertc.driver.pipeline import Run, _finish
from bertc.driver.plan import build_plan
from bertc.driver.terminal import op_change_summary

BRACKETS = "the [batch, seq, heads, head_size] reshape of an attention layer; [B,1,1,T] [bold] [/]"


def terminal() -> Console:
    """The console bertc's CLI makes (soft wrap on), 80 columns wide, captured."""
    return Console(file=io.StringIO(), width=80, highlight=False, soft_wrap=True, record=True)


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def test_the_plan_wraps_at_80_columns_and_keeps_every_word(tiny_model_dir, tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "model"
    deep.parent.mkdir(parents=True)
    deep.symlink_to(tiny_model_dir)
    overrides = [
        f"model.path={deep}",
        "dry_run=true",
        "precision=mixed",
        "partition=cpu_embed",
        "removal.ops=[Identity,StopGradient,CheckNumerics,Snapshot,Assert,ReshapeChain]",
    ]
    cfg = compose_config(overrides)
    console = terminal()
    assert run_job(cfg, tmp_path / "run", console) == 0
    text = console.export_text()
    # The panel wraps; lines of their own (the fingerprint, a path) soft-wrap so they copy in one piece.
    framed = [line for line in text.splitlines() if line[:1] in "╭│╰"]
    assert len(framed) > 10 and max(len(line) for line in framed) <= 80, text
    panel = "".join(line.strip("│ ").replace(" ", "") for line in framed)
    for line in build_plan(cfg).describe():
        assert line.replace(" ", "") in panel, f"{line!r} was cut from the plan:\n{text}"


def test_op_changes_show_the_largest_few():
    delta = {"Identity": -412, "Cast": 40, "Mul": -8, "AddV2": 8, "Reshape": -2, "Assert": -1, "Sub": -24}
    text = op_change_summary(delta)
    assert text == "Identity -412, Cast +40, Sub -24 and 4 more op types in report.json"
    assert op_change_summary({}) == "no op change"
    assert op_change_summary({"Identity": -3}) == "Identity -3"


def test_brackets_in_messages_and_errors_survive(tmp_path):
    cfg = compose_config(["model.path=/nowhere", "bench=off"])
    console = terminal()
    run = Run(build_plan(cfg), tmp_path, console)
    run.say(f"looked for {BRACKETS}")
    with run.step(f"load {BRACKETS}", "load"):
        pass
    run.record.update(status="failed", failed_step="load", error=f"not a BERT: {BRACKETS}")
    _finish(run)
    text = " ".join(console.export_text().split())
    assert text.count(" ".join(BRACKETS.split())) == 3, text


def test_a_config_error_with_brackets_is_printed_whole(tmp_path):
    console = terminal()
    with pytest.raises(SystemExit) as exit_:
        run_job(compose_config(["target=stablehlo", "target.batch_sizes=[]"]), tmp_path, console)
    assert exit_.value.code == 2
    assert "target.batch_sizes=[] needs at least one size" in " ".join(console.export_text().split())


def test_long_paths_in_the_summary_fold_instead_of_ending_in_an_ellipsis():
    from bertc.run.report import summary_table

    path = "/tmp/" + "a-long-folder/" * 6 + "model"
    console = terminal()
    console.print(summary_table({"status": "passed", "artifact": {"path": path}}), soft_wrap=False)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert path in "".join(line.strip("│ ").replace(" ", "") for line in text.splitlines())
