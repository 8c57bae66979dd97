"""`python -m bertc [overrides]`: compose the config -> build the plan -> print it -> run it.

A thin Hydra entry point over `bertc.cli.run_job`, which tests call directly.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bertc.faults import exit_on_interrupt, install_signal_handlers

install_signal_handlers()  # Ctrl-C, SIGTERM from here on: one line, a record, exit 130/143 (bertc/faults.py)

from bertc.console import quiet_import, quiet_tensorflow  # after the handlers: rich takes a while

quiet_tensorflow()
with exit_on_interrupt(), quiet_import():
    import tensorflow  # noqa: F401  (its import-time CUDA probes print to fd 2)

import hydra
from omegaconf import DictConfig

from bertc.cli import CONF_DIR, run_job
from bertc.rundir import RunFolderError, claim_from_command_line, output_root


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig) -> int:
    return run_job(cfg)


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


def main() -> None:
    argv = sys.argv[1:]
    with exit_on_interrupt():
        try:  # bertc/rundir.py: before Hydra writes .hydra/ into the folder
            claim = claim_from_command_line(argv, output_root(argv))
        except RunFolderError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        problem = _check_writable(output_root(argv))
        if problem:
            print(problem, file=sys.stderr)
            sys.exit(2)
        with claim:
            app()


if __name__ == "__main__":
    sys.exit(main())
