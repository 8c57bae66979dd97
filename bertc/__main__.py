"""`bertc [overrides]` / `python -m bertc [overrides]`: compose the config -> build the plan -> print it -> run it.

Help, --version and unknown keys are answered here, before Hydra and without TensorFlow; a compile is a
thin Hydra entry point over `bertc.driver.cli.run_job`, which tests call directly.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from bertc.run.faults import exit_on_interrupt, install_signal_handlers

EXIT_CONFIG_ERROR = 2


def _check_writable(folder: Path) -> str | None:
    """Whether the run folder can be made and written, asked of the closest folder that exists (nothing is
    created here: a run refused afterwards must leave no file anywhere)."""
    from bertc.run.rundir import nearest_existing

    existing = nearest_existing(folder)
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return None
    return (
        f"error: the output folder {folder} cannot be written ({existing} is not a folder you can write to). "
        "Run bertc from a folder you can write to, or choose one with hydra.run.dir=... (hydra.sweep.dir=... "
        "for -m)."
    )


def _answer_before_hydra(argv: list[str]) -> int | None:
    """--help, --version and unknown keys: an exit code, or None to go on to Hydra."""
    from bertc.driver import usage
    from bertc.driver.cli import CONF_DIR

    if "--version" in argv or "-V" in argv:
        print(f"bertc {usage.version()}")
        return 0
    if "--help" in argv or "-h" in argv:
        print(usage.help_text(Path(CONF_DIR)))
        return 0
    if any(arg.startswith(("-sc", "--shell-completion", "--hydra-help", "--info", "-i")) for arg in argv):
        return None  # Hydra's own: shell completion, its help and info
    problem = usage.check_overrides(argv, Path(CONF_DIR))
    if problem:
        print(f"error: {problem} (bertc --help lists the groups and options)", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return None


def _claim_before_hydra(argv: list[str], conf_dir: Path):
    """The run folder as Hydra will resolve it, checked (the input outside it and it outside the input, a
    finished run, another run's lock, writable) before Hydra writes .hydra/ into it; exits 2 when refused."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bertc.run.rundir import RunFolderError, claim_from_command_line, folder_from_command_line

    try:
        folder = folder_from_command_line(argv, conf_dir)
    except (HydraException, OmegaConfBaseException, ValueError):
        return contextlib.nullcontext()  # a config Hydra cannot compose: Hydra says why, and nothing is written
    try:  # bertc/run/rundir.py
        claim = claim_from_command_line(argv, folder)
    except RunFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    problem = _check_writable(folder.path)
    if problem:
        claim.__exit__(None, None, None)
        print(problem, file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    return claim


def main() -> None:
    # NOTE: first: Ctrl-C, SIGTERM from here on: one line, a record, exit 130/143 (bertc/run/faults.py). In main, not
    # at import: a program (or a test) that imports this module keeps its own handlers.
    install_signal_handlers()
    argv = sys.argv[1:]
    with exit_on_interrupt():
        code = _answer_before_hydra(argv)
        if code is not None:
            sys.exit(code)
        import hydra

        from bertc.driver.cli import CONF_DIR, run_job
        from bertc.driver.limits import exit_if_work_abandoned

        claim = _claim_before_hydra(argv, Path(CONF_DIR))
        started: list[bool] = []

        @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
        def app(cfg) -> int:
            started.append(True)
            return run_job(cfg)

        try:
            with claim:
                app()
        except SystemExit as exit_:
            # Hydra reports a config it cannot compose (a wrong type, a bad interpolation) and exits 1: the
            # user's config at fault, which bertc's exit codes call 2.
            if exit_.code == 1 and not started:
                sys.exit(EXIT_CONFIG_ERROR)
            exit_if_work_abandoned(exit_.code)  # a timed-out TensorFlow call cannot be joined: exit at once
            raise


if __name__ == "__main__":
    main()
