"""(run folder, input model, overwrite) -> the folder claimed for one run, or a RunFolderError saying why not.

A run folder belongs to one run at a time and to bertc alone:
- it is never the input model's folder, nor inside it (bertc's files would change the user's model
  and enter its digest), and the input is never the folder's own model/ or rejected/;
- a folder that holds a finished run (model/, rejected/ or report.json; not an interrupted run's report
  alone) is refused unless overwrite=true; with it, the old model/ and rejected/ stay until the new run
  publishes or fails (runner._finish calls `retire_previous`), so the folder never holds a model that its
  report.json does not describe;
- a second run into a folder that another run holds is refused: an exclusive `fcntl.flock` on
  `<run>/.bertc.lock`, released when the run ends (or its process dies, SIGKILL included);
- staging folders (`.model.partial-*`) that a killed run left are removed once the lock is held.

The checks run before anything is written into the folder: `python -m bertc` claims a folder given
literally on the command line before Hydra writes `.hydra/` into it; `run_job` and `compile_run`
claim the resolved folder (a no-op when this process holds it already).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from bertc.errors import UserError

LOCK_FILE = ".bertc.lock"
STAGING_PATTERN = ".model.partial-*"
ARTIFACT_FOLDERS = ("model", "rejected")
FINISHED_MARKS = (*ARTIFACT_FOLDERS, "report.json")
SWEEP_MARKS = ("summary.csv", "summary.md", "summary.png")
NO_JOB_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}

_held: dict[Path, int] = {}  # resolved run folder -> the open lock file this process holds


class RunFolderError(UserError):
    """The run folder is the input model's, holds a finished run, or another run holds it."""


def _resolved(path: str | Path) -> Path:
    absolute = Path(os.path.abspath(Path(path).expanduser()))
    try:
        return absolute.resolve()
    except (RuntimeError, OSError):  # a link loop: the input's own check says so (bertc/load.py)
        return absolute


def check_outside_input(run_dir: str | Path, model_path: str | Path | None) -> None:
    """Refuse a run folder that is the input model's folder or inside it, and an input that is the run's
    own output."""
    if not model_path or "${" in str(model_path):
        return
    run, model = _resolved(run_dir), _resolved(model_path)
    if run == model or run.is_relative_to(model):
        where = "the input model folder" if run == model else f"inside the input model folder {model}"
        raise RunFolderError(
            f"the run folder {run} is {where}; bertc would write its files into your model. "
            "Choose a run folder outside it with hydra.run.dir=... (or run bertc from another folder)."
        )
    for name in ARTIFACT_FOLDERS:
        if model == run / name or model.is_relative_to(run / name):
            raise RunFolderError(
                f"the input model {model} is the {name}/ folder of the run folder {run}, which this run "
                "would replace. Copy the model elsewhere, or choose another run folder with hydra.run.dir=..."
            )


def finished_marks(run_dir: Path) -> list[str]:
    """What shows a finished run: model/, rejected/, a report.json. A run that was interrupted (its report
    says so and it left no model, nor an earlier run's serving/) did not finish: the folder may be used again
    without overwrite=true."""
    marks = [name for name in FINISHED_MARKS if (run_dir / name).exists()]
    interrupted = _report_status(run_dir / "report.json") == "interrupted" and not (run_dir / "serving").exists()
    return [] if marks == ["report.json"] and interrupted else marks


def _report_status(report: Path) -> str | None:
    try:
        value = json.loads(report.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value.get("status") if isinstance(value, dict) else None


def check_not_finished(run_dir: Path, overwrite: bool) -> None:
    marks = finished_marks(run_dir)
    if marks and not overwrite:
        raise RunFolderError(
            f"the run folder {run_dir} already holds a finished run ({', '.join(marks)}); bertc does not "
            "replace it silently. Choose a new folder with hydra.run.dir=..., or pass overwrite=true to "
            "replace that run."
        )


class Claim:
    """A run folder held by this process; leave the `with` block (or exit) to release it."""

    def __init__(self, run_dir: Path, owner: bool):
        self.run_dir, self.owner = run_dir, owner

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.owner and self.run_dir in _held:
            os.close(_held.pop(self.run_dir))  # closing the file releases the flock
            self.owner = False


def claim_run_folder(run_dir: str | Path, model_path: str | Path | None, overwrite: bool = False) -> Claim:
    """Check and lock `run_dir` for one run (see the module doc); raises RunFolderError."""
    check_outside_input(run_dir, model_path)
    run = _resolved(run_dir)
    if run in _held:
        return Claim(run, owner=False)
    check_not_finished(run, overwrite)  # before the lock file is created; again once it is held
    try:
        run.mkdir(parents=True, exist_ok=True)
        handle = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunFolderError(
            f"the run folder {run} cannot be written ({error.strerror or error}); choose one you can "
            "write to with hydra.run.dir=..."
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(handle, 32, 0).decode(errors="replace").strip()
        os.close(handle)
        raise RunFolderError(
            f"another bertc run{f' (process {holder})' if holder else ''} is writing into {run}; "
            "wait for it to end, or choose another run folder with hydra.run.dir=..."
        ) from None
    os.ftruncate(handle, 0)
    os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
    try:
        check_not_finished(run, overwrite)
    except RunFolderError:
        os.close(handle)
        raise
    _held[run] = handle
    remove_stale_staging(run)
    return Claim(run, owner=True)


def remove_stale_staging(run_dir: Path) -> list[Path]:
    """Staging folders of a run that was killed (the lock is ours, so no live run owns them)."""
    stale = sorted(run_dir.glob(STAGING_PATTERN))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def retire_previous(run_dir: Path, keep: str | Path | None = None) -> None:
    """Remove model/ and rejected/ except `keep` (the artifact the new report describes): what a previous
    run left there under overwrite=true, so that no model outlives the report that described it."""
    keep_path = _resolved(keep) if keep else None
    for name in ARTIFACT_FOLDERS:
        folder = run_dir / name
        if folder.exists() and _resolved(folder) != keep_path:
            shutil.rmtree(folder) if folder.is_dir() and not folder.is_symlink() else folder.unlink()


# ---- the command line, before Hydra writes into the folder ---------------------------------------


def _values(argv: list[str], key: str) -> list[str]:
    """The values given to `key` on a Hydra command line (`key=`, `+key=`, `++key=`), last one last."""
    return [arg.split("=", 1)[1] for arg in argv if arg.lstrip("+").startswith(f"{key}=")]


def output_root(argv: list[str]) -> Path:
    """The folder Hydra will create the run (or sweep) folder under, from the command line."""
    key = "hydra.sweep.dir=" if {"-m", "--multirun"} & set(argv) else "hydra.run.dir="
    given = [arg.split("=", 1)[1] for arg in argv if arg.startswith(key)]
    return Path(given[-1]) if given else Path.cwd() / "outputs"


def claim_from_command_line(argv: list[str], output_root: Path) -> contextlib.AbstractContextManager:
    """`python -m bertc ARGS`: the run folder checked (and, given literally, locked) before Hydra creates it.

    `output_root` is where Hydra puts the run (or sweep) folder. A folder with an interpolation
    (the default `outputs/${now:...}`) is checked by its root here and in full by run_job."""
    multirun = bool({"-m", "--multirun"} & set(argv))
    paths = _values(argv, "model.path")[-1:]
    models = [part for value in paths for part in (value.split(",") if multirun else [value])]
    overwrite = any(value.strip().lower() == "true" for value in _values(argv, "overwrite")[-1:])
    for model in models:
        check_outside_input(output_root, model)
    literal = "${" not in str(output_root) and bool(_values(argv, "hydra.sweep.dir" if multirun else "hydra.run.dir"))
    if not literal or NO_JOB_FLAGS & set(argv):  # --help, --cfg ...: Hydra answers, no run writes there
        return contextlib.nullcontext()
    if multirun:
        check_sweep_not_finished(output_root, overwrite)
        return contextlib.nullcontext()
    return claim_run_folder(output_root, models[-1] if models else None, overwrite)


def check_sweep_not_finished(sweep_dir: Path, overwrite: bool) -> None:
    if not sweep_dir.is_dir() or overwrite:
        return
    jobs = [job.name for job in _job_folders(sweep_dir) if finished_marks(job)]
    summaries = [name for name in SWEEP_MARKS if (sweep_dir / name).exists()]
    if jobs or summaries:
        shown = ", ".join(summaries + [f"job {name}" for name in jobs[:5]])
        raise RunFolderError(
            f"the sweep folder {sweep_dir} already holds a finished sweep ({shown}); "
            "choose a new folder with hydra.sweep.dir=..., or pass overwrite=true to replace it."
        )


def _job_folders(sweep_dir: Path) -> Iterator[Path]:
    return (path for path in sweep_dir.iterdir() if path.is_dir() and path.name.isdigit())
