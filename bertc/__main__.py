"""`bertc [overrides]` / `python -m bertc [overrides]`: compose the config -> build the plan -> print it -> run it.

Help, --version and unknown keys are answered here, before Hydra and without TensorFlow; a compile is a
thin Hydra entry point over `bertc.cli.run_job`, which tests call directly.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bertc.faults import exit_on_interrupt, install_signal_handlers

install_signal_handlers()  # Ctrl-C, SIGTERM from here on: one line, a record, exit 130/143 (bertc/faults.py)

EXIT_CONFIG_ERROR = 2


def _check_writable(root: Path) -> str | None:
    if "${" in str(root):  # an interpolation: Hydra resolves it and reports its own errors
        return None
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as error:
        return (
            f"error: the output folder {root} cannot be written ({error.strerror or error}). Run bertc from a "
            "folder you can write to, or choose one with hydra.run.dir=... (hydra.sweep.dir=... for -m)."
        )
    return None


def _answer_before_hydra(argv: list[str]) -> int | None:
    """--help, --version and unknown keys: an exit code, or None to go on to Hydra."""
    from bertc import usage
    from bertc.cli import CONF_DIR
    from bertc.rundir import output_root

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
    problem = _check_writable(output_root(argv))
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return None


def main() -> None:
    argv = sys.argv[1:]
    with exit_on_interrupt():
        code = _answer_before_hydra(argv)
        if code is not None:
            sys.exit(code)
        import hydra

        from bertc.cli import CONF_DIR, run_job
        from bertc.limits import exit_if_work_abandoned
        from bertc.rundir import RunFolderError, claim_from_command_line, output_root

        try:  # bertc/rundir.py: before Hydra writes .hydra/ into the folder
            claim = claim_from_command_line(argv, output_root(argv))
        except RunFolderError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_CONFIG_ERROR)
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
