"""`python -m bertc [overrides]`: compose the config -> build the plan -> print it -> run it.

A thin Hydra entry point over `bertc.cli.run_job`, which tests call directly.
"""
from __future__ import annotations

import sys

from bertc.console import quiet_import, quiet_tensorflow

quiet_tensorflow()
with quiet_import():
    import tensorflow  # noqa: F401  (its import-time CUDA probes print to fd 2)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bertc.cli import CONF_DIR, run_job  # noqa: E402


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig) -> int:
    return run_job(cfg)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
