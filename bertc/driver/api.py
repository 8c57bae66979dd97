"""`bertc.compile(model_path, overrides, run_dir)` -> the run's report: one compile from Python, no CLI.

    import bertc
    report = bertc.compile("models/mrpc", overrides=["precision=mixed", "target=xla"], run_dir="runs/mixed")
    report["status"], report["parity"]["max_abs_diff"], report["bench"]["speedup"], report["model_path"]

The config is composed from bertc's own config groups with Hydra's compose API (the same
composition and type checks as `bertc ...` on the command line), then compiled by the same job
function the CLI runs, into the same run folder.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path

from bertc.errors import ConfigError


def compile(  # bertc.compile: the name the API promises (it shadows the builtin in this module only)
    model_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    console=None,
) -> dict:
    """Compile `model_path` (a SavedModel, checkpoint or Hugging Face folder; None: `model.path` from the
    overrides, else the demo model) with Hydra `overrides` into `run_dir` (default
    outputs/<date>/<time> under the current folder, as the CLI does).

    Returns report.json as a dict (`status` passed | rejected | failed | planned, `parity`, `bench`,
    `serving`, ...; see bertc/run/report.py) plus `run_dir` and `model_path` (the compiled model/ folder,
    None unless it passed). A config the schema refuses (an unknown key, a wrong type) raises
    bertc.errors.ConfigError before anything runs; every later failure is in the returned report,
    as in report.json. `console`: a rich Console for the progress (default: the terminal).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from bertc.driver.cli import CONF_DIR, run_job
    from bertc.driver.usage import check_overrides
    from bertc.ir.lazy import import_tensorflow

    import_tensorflow()  # quietly, before Hydra's job imports it loudly
    given = list(overrides)
    if model_path is not None:
        given.append(f"model.path={Path(model_path).expanduser().resolve()}")  # absolute: reproducible from anywhere
    problem = check_overrides(given, Path(CONF_DIR))
    if problem:
        raise ConfigError(f"{problem} (bertc --help lists the groups and options)")
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="bertc"):
            cfg = compose("config", overrides=given)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"the overrides {given} do not compose into a bertc config: {error}") from None
    run_dir = (
        Path(run_dir)
        if run_dir is not None
        else Path("outputs") / datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    )
    snapshot = run_dir / ".hydra"  # what Hydra keeps for a CLI run: the composed config and the overrides
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (snapshot / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(given)))
    try:
        run_job(cfg, run_dir, console)
    except SystemExit:  # the CLI's exit code; the report says what happened
        pass
    report = json.loads((run_dir / "report.json").read_text())
    artifact = (report.get("artifact") or {}).get("path")
    report["run_dir"] = str(run_dir)
    report["model_path"] = artifact if report.get("status") == "passed" else None
    return report
