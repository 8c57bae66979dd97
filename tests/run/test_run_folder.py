"""The run folder is bertc's alone and faults leave a record.

The input's folder, a finished run and a held folder are refused before anything is written;
overwrite=true replaces a run without leaving a model its report does not describe; SIGTERM and
SIGINT record `interrupted` and exit 143/130 with one line; a stale staging folder is removed by
the next run; a sweep whose job crashes still writes its summary.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console

from bertc.driver.cli import CONF_DIR, run_job
from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan
from bertc.run.artifact import artifact_digest
from bertc.run.report import write_reports
from bertc.run.rundir import LOCK_FILE, RunFolderError, claim_from_command_line, folder_from_command_line

FAST = ["bench=off", "verify=off"]


def config(model, *overrides: str, fast: bool = True):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[f"model.path={model}", *(FAST if fast else []), *overrides])


def state(path: Path) -> dict[str, str]:
    """Every file under `path` (hidden ones too) and its sha256."""
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def staging(run_dir: Path) -> list[Path]:
    return list(run_dir.glob(".model.partial-*"))


def bertc(*args: str, cwd: Path, log: Path | None = None) -> subprocess.Popen:
    output = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115  (the child holds it; closed at exit)
    return subprocess.Popen(
        [sys.executable, "-m", "bertc", *args],
        cwd=cwd,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )


@pytest.fixture
def model(tiny_model_dir, tmp_path) -> Path:
    copy = tmp_path / "input"
    shutil.copytree(tiny_model_dir, copy)
    return copy


# ---- whose folder ------------------------------------------------------------------------------


def test_command_line_refuses_the_input_folder_and_a_finished_run_before_hydra_writes(model, tmp_path):
    finished = tmp_path / "finished"
    (finished / ".hydra").mkdir(parents=True)
    (finished / "report.json").write_text('{"status": "passed"}\n')
    (finished / ".hydra" / "overrides.yaml").write_text("- precision=mixed\n")
    before, finished_before = state(model), state(finished)
    cases = {  # the other cases of the same checks are tested in-process below
        "inside the input model folder": [f"hydra.run.dir={model / 'variables'}"],
        "already holds a finished run (report.json)": [f"hydra.run.dir={finished}"],
    }
    processes = {words: bertc(f"model.path={model}", "bench=off", *args, cwd=tmp_path) for words, args in cases.items()}
    for words, process in processes.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 2, output[-2000:]
        assert words.strip() in " ".join(output.split()) and "Traceback" not in output, output[-2000:]
    assert state(model) == before, "nothing was written into the input model"
    assert not (model / "variables" / ".hydra").exists()
    assert state(finished) == finished_before, "Hydra did not overwrite the finished run's .hydra/"


def test_api_refuses_the_input_folder_and_its_own_output_as_input(model, tmp_path):
    before = state(model)
    with pytest.raises(RunFolderError, match="is the input model folder"):
        compile_run(build_plan(config(model)), model, Console(file=io.StringIO()))
    with pytest.raises(SystemExit) as exit_:
        run_job(config(model), run_dir=model / "variables", console=Console(file=io.StringIO()))
    assert exit_.value.code == 2
    assert state(model) == before
    run_dir = tmp_path / "run"
    shutil.copytree(model, run_dir / "model")
    with pytest.raises(RunFolderError, match="is inside the run folder"):
        compile_run(build_plan(config(run_dir / "model")), run_dir, Console(file=io.StringIO()), overwrite=True)
    assert state(run_dir / "model") == before


def claim_argv(argv: list[str]):
    """What `python -m bertc ARGS` does before Hydra: the folder resolved as Hydra will, then claimed."""
    return claim_from_command_line(argv, folder_from_command_line(argv, Path(CONF_DIR)))


def test_command_line_checks_before_hydra(model, tmp_path, monkeypatch):
    before = state(model)
    with pytest.raises(RunFolderError, match="is the input model folder"):
        claim_argv([f"model.path={model}", f"hydra.run.dir={model}"])
    monkeypatch.chdir(model / "variables")  # the default run folder, outputs/..., would be inside the model
    with pytest.raises(RunFolderError, match="inside the input model folder"):
        claim_argv(["model.path=.."])
    assert state(model) == before, "nothing was created inside the model"
    monkeypatch.chdir(tmp_path)
    for overwrite in ("overwrite=true", "overwrite=True", "++overwrite=true"):
        (tmp_path / "done").mkdir(exist_ok=True)
        (tmp_path / "done" / "report.json").write_text("{}")
        with claim_argv([f"hydra.run.dir={tmp_path / 'done'}", overwrite]) as claim:
            assert claim.owner, "a literal run folder is locked before Hydra starts"
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        claim_argv([f"hydra.run.dir={tmp_path / 'done'}", "overwrite=false"])
    # --help, --cfg job: no job runs, so nothing is claimed (no folder, no lock file)
    with claim_argv(["--cfg", "job", f"hydra.run.dir={tmp_path / 'shown'}"]):
        assert not (tmp_path / "shown").exists()


def test_finished_run_is_refused_and_overwrite_replaces_it(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    console = Console(file=io.StringIO())
    assert compile_run(build_plan(config(tiny_model_dir)), run_dir, console) == 0
    first = state(run_dir)
    with pytest.raises(RunFolderError, match=r"already holds a finished run \(model, report.json\).*overwrite=true"):
        compile_run(build_plan(config(tiny_model_dir)), run_dir, console)
    with pytest.raises(SystemExit):
        run_job(config(tiny_model_dir, "dry_run=true"), run_dir=run_dir, console=console)
    assert state(run_dir) == first, "a refused run writes nothing"

    # overwrite=true and a run that fails: the old model goes with the old report
    failing = config(tiny_model_dir, "removal.ops=[CheckNumerics]")  # matches nothing: fails at the removal step
    assert compile_run(build_plan(failing), run_dir, console, overwrite=True) == 2
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "failed" and not (run_dir / "model").exists() and not (run_dir / "rejected").exists()

    # overwrite=true and a run that passes: model/ is the one its report describes
    (run_dir / "rejected").mkdir()  # as a rejected run before it would have left
    assert (
        compile_run(build_plan(config(tiny_model_dir, "mask.fold_scale=true")), run_dir, console, overwrite=True) == 0
    )
    report = json.loads((run_dir / "report.json").read_text())
    assert report["artifact"]["digest"] == artifact_digest(run_dir / "model") and not (run_dir / "rejected").exists()
    assert not staging(run_dir)


def test_a_report_retires_the_models_it_does_not_describe(tmp_path):
    for name in ("model", "rejected"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"old")
    write_reports(tmp_path, {"status": "rejected", "artifact": {"path": str(tmp_path / "rejected")}, "steps": []})
    assert (tmp_path / "rejected").exists() and not (tmp_path / "model").exists()
    write_reports(tmp_path, {"status": "interrupted", "failed_step": "verify", "error": "x", "steps": []})
    assert not (tmp_path / "rejected").exists()


def test_a_held_folder_is_refused(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "held"
    run_dir.mkdir()
    with open(run_dir / LOCK_FILE, "w") as other_run:  # another run's lock: another open file, as another process has
        fcntl.flock(other_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other_run.write("4242\n")
        other_run.flush()
        stream = io.StringIO()
        with pytest.raises(SystemExit) as exit_:
            run_job(
                config(tiny_model_dir, "dry_run=true"),
                run_dir=run_dir,
                console=Console(file=stream, width=300),
            )
        assert exit_.value.code == 2
        assert "another bertc run (process 4242) is writing into" in stream.getvalue()
        assert sorted(path.name for path in run_dir.iterdir()) == [LOCK_FILE], "nothing written"
    # released: the folder can be claimed, and the claim is released in turn
    run_job(config(tiny_model_dir, "dry_run=true"), run_dir=run_dir, console=Console(file=io.StringIO()))
    assert json.loads((run_dir / "report.json").read_text())["status"] == "planned"


def test_sweep_folder_with_a_finished_sweep_is_refused(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "report.json").write_text("{}")
    with pytest.raises(RunFolderError, match="already holds a finished sweep"):
        claim_argv(["-m", f"hydra.sweep.dir={tmp_path}"])
    with claim_argv(["-m", f"hydra.sweep.dir={tmp_path}", "overwrite=true"]):
        pass


# ---- signals and crashes -----------------------------------------------------------------------


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigterm_and_sigint_during_verify(tiny_model_dir, tmp_path):
    """Two compiles at once, each signalled once its artifact is staged (saving it, timing one call or verifying).
    (A SIGKILL's staging folder: tests/driver/test_errors.py::test_killed_mid_save_leaves_no_half_written_model.)"""
    signals = {"term": signal.SIGTERM, "int": signal.SIGINT}
    logs = {name: tmp_path / f"{name}.log" for name in signals}
    runs = {name: tmp_path / name for name in signals}
    processes = {
        # many verify batches: the run is still verifying when the signal comes
        name: bertc(
            f"model.path={tiny_model_dir}",
            "bench=off",
            "verify.batches=3000",
            f"hydra.run.dir={runs[name]}",
            cwd=tmp_path,
            log=logs[name],
        )
        for name in signals
    }
    try:
        for name, process in processes.items():
            _wait_for(
                lambda name=name, process=process: (
                    ("done compile" in logs[name].read_text() and staging(runs[name])) or process.poll() is not None
                ),
                240,
                f"{name} to compile",
            )
            assert process.poll() is None, logs[name].read_text()[-3000:]
            assert staging(runs[name]), "the unverified artifact is staged"
        # a second run into a held folder is refused, from another process
        second = subprocess.run(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
            from bertc.run.rundir import claim_run_folder, RunFolderError
            try:
                claim_run_folder({str(runs["term"])!r}, None)
            except RunFolderError as error:
                print(error)
            """),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert f"another bertc run (process {processes['term'].pid}) is writing into" in second.stdout, second
        for name, process in processes.items():
            process.send_signal(signals[name])
        for process in processes.values():
            process.wait(120)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    for name, code, label in (("term", 143, "SIGTERM"), ("int", 130, "SIGINT (Ctrl-C)")):
        log = logs[name].read_text()
        assert processes[name].returncode == code, log[-3000:]
        report = json.loads((runs[name] / "report.json").read_text())
        # after compile the artifact stays staged through the speed check and verify: a signal in any of them
        assert report["status"] == "interrupted" and report["failed_step"] in ("compile", "speed", "verify"), report
        assert label in report["error"]
        assert (
            not staging(runs[name]) and not (runs[name] / "model").exists() and not (runs[name] / "rejected").exists()
        )
        after = log.split("done compile", 1)[1].splitlines()[1:]
        expected = (
            f"bertc: interrupted by {label} during {report['failed_step']}; recorded as interrupted in "
            f"{runs[name] / 'report.json'}, nothing published (exit {code})"
        )
        assert [line for line in after if line.strip()] == [expected], log[-3000:]
        assert "Traceback" not in log


def test_stale_staging_is_removed_by_the_next_run(tiny_model_dir, tmp_path):
    left = tmp_path / ".model.partial-x1y2" / "model"
    left.mkdir(parents=True)
    (left / "saved_model.pb").write_bytes(b"unverified")
    run_job(config(tiny_model_dir, "dry_run=true"), run_dir=tmp_path, console=Console(file=io.StringIO()))
    assert not staging(tmp_path)


def test_sigterm_through_the_api_records_interrupted_and_restores_handlers(tiny_model_dir, tmp_path, monkeypatch):
    import bertc.evaluate.verify

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises here

    monkeypatch.setattr(bertc.evaluate.verify, "compare", terminated)
    before = {each: signal.getsignal(each) for each in (signal.SIGTERM, signal.SIGINT)}
    stream = io.StringIO()
    cfg = config(tiny_model_dir, "bench=off", "verify.batches=1", fast=False)
    with pytest.raises(KeyboardInterrupt, match="interrupted by SIGTERM"):
        compile_run(build_plan(cfg), tmp_path, Console(file=stream, width=300))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "interrupted" and report["failed_step"] == "verify"
    assert not staging(tmp_path) and not (tmp_path / "model").exists()
    assert {each: signal.getsignal(each) for each in before} == before, "the caller's handlers are back"
    assert stream.getvalue().strip().splitlines()[-1].startswith("bertc: interrupted by SIGTERM during verify")


def test_a_signal_that_surfaces_as_another_error_is_still_an_interruption(tiny_model_dir, tmp_path, monkeypatch):
    """The handler's exception, raised while TensorFlow iterates in C (tracing a function to save it), can come
    out as `SystemError: ... bad argument to internal function` (seen in CI): the run is still interrupted."""
    import bertc.driver.pipeline

    def terminated_in_c(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises here
        except KeyboardInterrupt:
            raise SystemError("Objects/listobject.c:338: bad argument to internal function") from None

    monkeypatch.setattr(bertc.driver.pipeline, "artifact_digest", terminated_in_c)  # in the main thread, while saving
    stream = io.StringIO()
    cfg = config(tiny_model_dir, "bench=off", "verify.batches=1", fast=False)
    with pytest.raises(KeyboardInterrupt, match="interrupted by SIGTERM"):
        compile_run(build_plan(cfg), tmp_path, Console(file=stream, width=300))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "interrupted" and report["failed_step"] == "compile", report
    assert not staging(tmp_path) and not (tmp_path / "model").exists()


SWEEP_WITH_A_CRASH = textwrap.dedent(
    """
    import sys
    import bertc.driver.plan
    real_build_plan = bertc.driver.plan.build_plan
    def build_plan(cfg):
        if cfg.mask.bias_value == -9999:
            raise RuntimeError("deliberate crash for the test")
        return real_build_plan(cfg)
    bertc.driver.plan.build_plan = build_plan
    from bertc.__main__ import main
    sys.argv = ["bertc", "-m", "model.path=" + sys.argv[1], "dry_run=true", "mask.bias_value=-10000,-9999",
                "hydra.sweep.dir=" + sys.argv[2]]
    main()
    """
)


def test_a_sweep_whose_job_crashes_still_writes_its_summary(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-c", SWEEP_WITH_A_CRASH, str(tiny_model_dir), str(sweep)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "this job crashed (deliberate crash for the test)" in output and "Traceback" not in output
    rows = (sweep / "summary.csv").read_text().strip().splitlines()[1:]
    assert [row.split(",")[2] for row in rows] == ["planned", "failed"]
    assert "deliberate crash for the test" in (sweep / "summary.md").read_text()
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    crashed = json.loads((sweep / "1" / "report.json").read_text())
    assert crashed["status"] == "failed" and "RuntimeError" in crashed["traceback"]


def test_guarded_job_records_a_sweep_jobs_crash_once(tmp_path):
    from bertc.run.faults import guarded_job, mark_recorded

    def crash():
        raise RuntimeError("boom")

    stream = io.StringIO()
    console = Console(file=stream, width=300)
    assert guarded_job(tmp_path / "a", None, False, console, True, crash) == 1
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["status"] == "failed" and report["error"] == "boom" and "RuntimeError" in report["traceback"]
    assert "this job crashed (boom)" in stream.getvalue()

    def recorded_crash():  # compile_run wrote its own, fuller report before re-raising
        (tmp_path / "b" / "report.json").write_text('{"status": "failed", "failed_step": "verify"}')
        error = RuntimeError("late")
        mark_recorded(error)
        raise error

    assert guarded_job(tmp_path / "b", None, False, console, True, recorded_crash) == 1
    assert json.loads((tmp_path / "b" / "report.json").read_text())["failed_step"] == "verify"
    with pytest.raises(RuntimeError, match="boom"):  # a single run: Hydra shows the crash, exit 1
        guarded_job(tmp_path / "c", None, False, console, False, crash)


def test_a_signal_that_lands_in_a_gc_callback_is_asked_again(monkeypatch):
    """Python drops an exception raised in a gc callback (TensorFlow's XLA registers one): the handler must
    not raise there, or the interruption is lost and the run goes on with the signals ignored."""
    import gc
    import types

    from bertc.run import faults

    sent = []
    monkeypatch.setattr(
        faults.threading, "Timer", lambda delay, function, args: types.SimpleNamespace(start=lambda: sent.append(args))
    )

    def callback(phase, info):
        faults._raise_interrupted(signal.SIGTERM, sys._getframe())

    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert sent and set(sent) == {(os.getpid(), signal.SIGTERM)}
    previous = {each: signal.getsignal(each) for each in faults.SIGNALS}
    try:
        with pytest.raises(faults.Interrupted):
            faults._raise_interrupted(signal.SIGTERM, sys._getframe())
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)
