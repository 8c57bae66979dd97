"""A composed config -> one job: plan printed, resolved.yaml and plan.json written, compile run; exit codes.

In a single run a failure exits non-zero; in a sweep (-m) the job records its failure (a crash
too) in its report.json and returns, so the sweep goes on and the summary shows a failed row.
The run folder is claimed first and SIGINT/SIGTERM recorded (bertc/faults.py, bertc/rundir.py).
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.panel import Panel

from bertc.config import register_configs
from bertc.console import native_stderr_to, silence_tf_loggers
from bertc.errors import UserError
from bertc.faults import guarded_job
from bertc.runner import EXIT_USER_ERROR

register_configs()
CONF_DIR = str(importlib.resources.files("bertc.conf"))


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


def run_job(cfg: DictConfig, run_dir: Path | None = None, console: Console | None = None) -> int:
    console = console or Console(highlight=False, soft_wrap=True)
    run_dir = Path(run_dir or _run_dir())
    # bertc/faults.py: the run folder claimed first (bertc/rundir.py); SIGINT, SIGTERM, sweep crashes recorded
    return guarded_job(run_dir, cfg.model.path, bool(cfg.get("overwrite")), console, _is_multirun(),
                       lambda: _run_job(cfg, run_dir, console))


def _run_job(cfg: DictConfig, run_dir: Path, console: Console) -> int:
    from bertc.plan import build_plan
    from bertc.report import write_atomic, write_reports
    from bertc.runner import compile_run, prepare, write_plan

    silence_tf_loggers()
    run_dir.mkdir(parents=True, exist_ok=True)
    code = 0
    try:
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
        write_atomic(run_dir / "resolved.yaml", resolved)
        plan = build_plan(cfg)
        console.print(Panel("\n".join(plan.describe()), title="bertc plan", expand=False))
        if cfg.dry_run:
            input_path, digest, library_versions, print_ = prepare(plan, lambda message: console.print(f"  [dim]{message}[/]"))
            write_plan(run_dir, plan, input_path, digest, library_versions, print_)
            write_reports(run_dir, {"status": "planned", "fingerprint": print_, "input": {"path": str(input_path), "digest": digest}, "versions": library_versions, "steps": []})
            console.print(f"fingerprint {print_}\ndry run: nothing compiled; plan written to {run_dir / 'plan.json'}")
            return 0
        with native_stderr_to(run_dir / "tensorflow.log"):
            code = compile_run(plan, run_dir, console, debug=bool(cfg.debug))
    except UserError as error:
        if cfg.get("debug"):
            raise
        write_reports(run_dir, {"status": "failed", "failed_step": "plan", "error": str(error), "steps": []})
        console.print(f"[bold red]error:[/] {error}")
        code = EXIT_USER_ERROR
    if code and not _is_multirun():
        raise SystemExit(code)
    return code
