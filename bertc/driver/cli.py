"""A composed config -> one job: plan printed, resolved.yaml and plan.json written, compile run; exit codes.

In a single run a failure exits non-zero; in a sweep (-m) the job records its failure (a crash
too) in its report.json and returns, so the sweep goes on and the summary shows a failed row.
The run folder is claimed first and SIGINT/SIGTERM recorded (bertc/run/faults.py, bertc/run/rundir.py).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from bertc.driver.config import register_configs
from bertc.driver.console import native_stderr_to, silence_tf_loggers
from bertc.driver.locate import conf_dir
from bertc.driver.pipeline import EXIT_USER_ERROR
from bertc.driver.terminal import dim, escape, plan_panel, print_wrapped
from bertc.errors import UserError
from bertc.run.faults import guarded_job
from bertc.run.sweep import register_ray_launcher

register_configs()
register_ray_launcher()  # NOTE: before Hydra composes: hydra/launcher=ray is bertc's (bertc/run/sweep.py)
CONF_DIR = conf_dir()  # the checkout's conf/ or the packaged bertc/conf, whichever bertc/ Python imported


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


def run_job(cfg: DictConfig, run_dir: Path | None = None, console: Console | None = None) -> int:
    console = console or Console(highlight=False, soft_wrap=True)
    run_dir = Path(run_dir or _run_dir())
    # bertc/run/faults.py: the run folder claimed first (bertc/run/rundir.py); SIGINT, SIGTERM, sweep crashes recorded
    return guarded_job(
        run_dir,
        cfg.model.path,
        bool(cfg.get("overwrite")),
        console,
        _is_multirun(),
        lambda: _run_job(cfg, run_dir, console),
    )


def _run_job(cfg: DictConfig, run_dir: Path, console: Console) -> int:
    from bertc.driver.pipeline import compile_run, prepare, write_plan
    from bertc.driver.plan import build_plan
    from bertc.run.report import write_atomic, write_reports

    silence_tf_loggers()
    run_dir.mkdir(parents=True, exist_ok=True)
    code = 0
    try:
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
        write_atomic(run_dir / "resolved.yaml", resolved)
        plan = build_plan(cfg)
        print_wrapped(console, plan_panel(plan.describe()))
        if cfg.dry_run:
            source = prepare(plan, lambda line: console.print(dim(line)))
            write_plan(run_dir, plan, source)
            write_reports(
                run_dir,
                {
                    "status": "planned",
                    "fingerprint": source.fingerprint,
                    "steps": [],
                    "input": {"path": str(source.path), "digest": source.digest},
                    "versions": source.versions,
                },
            )
            console.print(
                f"fingerprint {source.fingerprint}\ndry run: nothing compiled; plan written to "
                f"{escape(str(run_dir / 'plan.json'))}"
            )
            return 0
        with native_stderr_to(run_dir / "tensorflow.log"):
            code = compile_run(plan, run_dir, console, debug=bool(cfg.debug))
    except UserError as error:
        if cfg.get("debug"):
            raise
        write_reports(run_dir, {"status": "failed", "failed_step": "plan", "error": str(error), "steps": []})
        console.print(f"[bold red]error:[/] {escape(str(error))}")
        code = EXIT_USER_ERROR
    if code and not _is_multirun():
        raise SystemExit(code)
    return code
