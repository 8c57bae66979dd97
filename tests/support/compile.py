"""Overrides -> the real configs composed with Hydra, and the tiny model compiled through the real runner."""

from __future__ import annotations

import gc
import io
import json
import weakref

from hydra import compose, initialize_config_dir
from rich.console import Console

from bertc.driver.cli import CONF_DIR
from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def compile_model(model, run_dir, overrides: list[str]) -> tuple[int, dict]:
    """The exit code and report.json of a compile of the SavedModel `model`, bench off."""
    cfg = compose_config([f"model.path={model}", "bench=off", *overrides])
    code = compile_run(build_plan(cfg), run_dir, Console(file=io.StringIO()))
    return code, json.loads((run_dir / "report.json").read_text())


def compile_tiny(tiny_model_dir, run_dir, overrides: list[str]) -> dict:
    code, report = compile_model(tiny_model_dir, run_dir, overrides)
    assert code == 0, report.get("error")
    return report


def watch_weights_at_compile(monkeypatch) -> dict:
    """Weak references to the rewritten graph's weight arrays; at the target's warm-up (where XLA compiles), how many
    are still alive: seen["arrays"], seen["alive_at_compile"]."""
    from bertc.driver import pipeline
    from bertc.targets import serving

    seen: dict = {}
    rewrite, warm_up = pipeline.rewrite, serving.warm_up

    def rewrite_and_watch(run, plan, graph):
        result = rewrite(run, plan, graph)
        seen["arrays"] = [weakref.ref(value) for value in result.weights.values()]
        return result

    def warm_up_and_count(*args):
        gc.collect()
        seen["alive_at_compile"] = sum(ref() is not None for ref in seen["arrays"])
        return warm_up(*args)

    monkeypatch.setattr(pipeline, "rewrite", rewrite_and_watch)
    monkeypatch.setattr(serving, "warm_up", warm_up_and_count)
    return seen
