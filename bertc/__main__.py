"""`python -m bertc [overrides]`: compose the config -> build the plan -> print it -> run it.

A thin Hydra entry point over `bertc.cli.run_job`, which tests call directly.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bertc.console import quiet_import, quiet_tensorflow

quiet_tensorflow()
with quiet_import():
    import tensorflow  # noqa: F401  (its import-time CUDA probes print to fd 2)

import hydra
from omegaconf import DictConfig

from bertc.cli import CONF_DIR, run_job
from bertc.limits import exit_if_work_abandoned


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig) -> int:
    return run_job(cfg)


def _output_root(argv: list[str]) -> Path:
    """The folder Hydra will create the run (or sweep) folder under, from the command line."""
    key = "hydra.sweep.dir=" if {"-m", "--multirun"} & set(argv) else "hydra.run.dir="
    given = [arg.split("=", 1)[1] for arg in argv if arg.startswith(key)]
    return Path(given[-1]) if given else Path.cwd() / "outputs"


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
    problem = _check_writable(_output_root(sys.argv[1:]))
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    try:
        app()
    except SystemExit as stop:
        exit_if_work_abandoned(stop.code)  # issue 14: a timed-out TensorFlow call cannot be joined
        raise


if __name__ == "__main__":
    sys.exit(main())
