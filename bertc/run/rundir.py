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
import dataclasses
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
    except (RuntimeError, OSError):  # a link loop: the input's own check says so (bertc/frontends/load.py)
        return absolute


def check_outside_input(run_dir: str | Path, model_path: str | Path | None) -> None:
    """Refuse a run folder that is the input model's folder or inside it, and an input inside the run folder
    (a previous run's model/, rejected/ or serving/<name>/1/, which this run would replace or rewrite)."""
    if not model_path or "${" in str(model_path):
        return
    run, model = _resolved(run_dir), _resolved(model_path)
    if run == model or run.is_relative_to(model):
        where = "the input model folder" if run == model else f"inside the input model folder {model}"
        raise RunFolderError(
            f"the run folder {run} is {where}; bertc would write its files into your model. "
            "Choose a run folder outside it with hydra.run.dir=... (or run bertc from another folder)."
        )
    if model.is_relative_to(run):
        raise RunFolderError(
            f"the input model {model} is inside the run folder {run}, whose model/, rejected/ and serving/ this "
            "run replaces. Copy the model elsewhere, or choose another run folder with hydra.run.dir=..."
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
    created = [folder for folder in (run, *run.parents) if not folder.exists()]
    try:
        run.mkdir(parents=True, exist_ok=True)
        handle = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise _unwritable(run, error, created) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(handle, 32, 0).decode(errors="replace").strip()
        os.close(handle)
        raise RunFolderError(
            f"another bertc run{f' (process {holder})' if holder else ''} is writing into {run}; "
            "wait for it to end, or choose another run folder with hydra.run.dir=..."
        ) from None
    try:
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
    except OSError as error:  # a full disk: nothing of this claim is left behind
        os.close(handle)
        (run / LOCK_FILE).unlink(missing_ok=True)
        raise _unwritable(run, error, created) from None
    try:
        check_not_finished(run, overwrite)
    except RunFolderError:
        os.close(handle)
        raise
    _held[run] = handle
    remove_stale_staging(run)
    return Claim(run, owner=True)


def _unwritable(run: Path, error: OSError, created: list[Path]) -> RunFolderError:
    """The folders this claim created removed again (while empty); the error that says what to do."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            break
    return RunFolderError(
        f"the run folder {run} cannot be written ({error.strerror or error}); free space there or choose a "
        "folder you can write to with hydra.run.dir=..."
    )


def remove_stale_staging(run_dir: Path) -> list[Path]:
    """Staging folders of a run that was killed (the lock is ours, so no live run owns them)."""
    stale = sorted(run_dir.glob(STAGING_PATTERN))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def retire_previous(run_dir: Path, keep: str | Path | None = None, keep_serving: bool = False) -> None:
    """Remove model/ and rejected/ except `keep` (the artifact the new report describes), and serving/ unless
    the new report describes it: what a previous run left there under overwrite=true, so that no model outlives
    the report that described it. serving/ goes first: a model server may be watching it."""
    serving = run_dir / "serving"
    if not keep_serving and serving.is_dir() and not serving.is_symlink():
        shutil.rmtree(serving)
    keep_path = _resolved(keep) if keep else None
    for name in ARTIFACT_FOLDERS:
        folder = run_dir / name
        if folder.exists() and _resolved(folder) != keep_path:
            shutil.rmtree(folder) if folder.is_dir() and not folder.is_symlink() else folder.unlink()


# ---- the command line, before Hydra writes into the folder ---------------------------------------


@dataclasses.dataclass(frozen=True)
class CommandLineFolder:
    """The run (or sweep) folder a command line gives, as Hydra will resolve it, and the inputs it names."""

    path: Path
    stable: bool  # the same folder when Hydra resolves it again (no ${now:...} in it): safe to lock now
    given: bool  # named on the command line (hydra.run.dir=... or hydra.sweep.dir=...)
    models: list[str]
    overwrite: bool
    multirun: bool


def folder_from_command_line(argv: list[str], conf_dir: Path) -> CommandLineFolder:
    """Compose the command line's config as Hydra will (its quoting, interpolations such as ${model.path}, a
    relative folder against the working folder), without writing anything; each value of a swept model.path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    multirun = bool({"-m", "--multirun"} & set(argv))
    key = "sweep" if multirun else "run"
    # overrides only: not Hydra's flags, nor a flag's value (--cfg job, --package NAME)
    overrides = [arg for arg in argv if not arg.startswith("-") and ("=" in arg or arg.startswith("~"))]
    parsed = OverridesParser.create().parse_overrides(overrides)
    models: list[str] = []
    single: list[str] = []
    for typed, override in zip(overrides, parsed):  # one parsed override per line, in order
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        if override.get_key_element().lstrip("+~") == "model.path":
            models += [str(value) for value in values if value not in (None, "")]
        single.append(f"{override.get_key_element()}={values[0]}" if override.is_sweep_override() else typed)
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose("config", overrides=single, return_hydra_config=True)
    section = OmegaConf.to_container(cfg.hydra[key], resolve=False)
    assert isinstance(section, dict)  # hydra.run and hydra.sweep are mappings
    unresolved = str(section["dir"])
    path = Path(str(cfg.hydra[key].dir)).expanduser()
    if cfg.model.path and not models:  # a model.path set in a config file rather than on the command line
        models = [str(cfg.model.path)]
    return CommandLineFolder(
        path if path.is_absolute() else Path.cwd() / path,
        "${now:" not in unresolved,
        any(override.get_key_element() == f"hydra.{key}.dir" for override in parsed),
        models,
        bool(cfg.get("overwrite")),
        multirun,
    )


def claim_from_command_line(argv: list[str], folder: CommandLineFolder) -> contextlib.AbstractContextManager:
    """`python -m bertc ARGS`: the run folder checked (and, when it is stable, locked) before Hydra creates it or
    writes .hydra/ into it. A folder stamped with ${now:...} is checked here (where it lands) and claimed by
    run_job once Hydra has made it."""
    for model in folder.models:
        check_outside_input(folder.path, model)
    if not folder.stable or NO_JOB_FLAGS & set(argv):  # --help, --cfg ...: Hydra answers, no run writes there
        return contextlib.nullcontext()
    if folder.multirun:
        check_sweep_not_finished(folder.path, folder.overwrite)
        return contextlib.nullcontext()
    return claim_run_folder(folder.path, folder.models[-1] if folder.models else None, folder.overwrite)


def nearest_existing(path: Path) -> Path:
    """`path`, or the closest of its parents that exists: what a new folder there would be created in."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


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
