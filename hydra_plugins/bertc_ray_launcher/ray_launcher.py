"""hydra/launcher=ray (conf/hydra/launcher/ray.yaml) -> the Launcher Hydra instantiates; its work:
bertc/driver/cluster.py.

Hydra instantiates launchers only from the hydra_plugins package; bertc.driver.cli registers this one (Hydra's
scan of hydra_plugins, which imports every module there, misses it in an editable install). It stays
light: Ray and bertc.driver.cluster are imported when a sweep launches. Its import drops hydra-ray-launcher's
ConfigStore schema named `ray`: Hydra would otherwise merge it into bertc's ray.yaml (the deprecated
"automatic schema matching": a warning on every run, and bertc's own keys refused).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig


def _drop_plugin_schema() -> None:
    try:  # NOTE: imported here first, so that Hydra's scan, importing it again, does not store the schema again
        import hydra_plugins.hydra_ray_launcher._config  # noqa: F401
    except ImportError:  # no ray extra: bertc/driver/cluster.py says so when hydra/launcher=ray is chosen
        return
    ConfigStore.instance().repo.get("hydra", {}).get("launcher", {}).pop("ray.yaml", None)


_drop_plugin_schema()


class BertcRayLauncher(Launcher):
    """Each job on a node of a Ray cluster; one summary record per job back on the driver."""

    def __init__(self, ray: DictConfig, check_inputs: bool = True) -> None:
        self.ray_cfg = ray
        self.check_inputs = check_inputs
        self.hydra_context: Any = None
        self.task_function: Any = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from bertc.errors import UserError

        try:
            from bertc.driver.cluster import launch
        except ImportError as error:  # no ray extra: its message says what to install
            _refuse(str(error))
        try:
            return launch(self, job_overrides, initial_job_idx)
        except UserError as error:  # the cluster cannot be reached, or no node can hold a job
            _refuse(str(error))


def _refuse(message: str) -> NoReturn:
    """One paragraph and bertc's exit code for a config at fault, not Hydra's traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
