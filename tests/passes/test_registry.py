"""The pass registry: a pass is one module (its declaration and function) plus its YAML options; the
runner checks each pass's `ensures` at every compile; the canonical order comes from `after`."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console

from bertc import passes
from bertc.driver.cli import CONF_DIR
from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan
from bertc.ir.graph import copy_graph_def, make_const
from bertc.passes import Condition, Pass, PassResult
from bertc.schema import Key

THROWAWAY = "bertc/throwaway/marker"


@dataclasses.dataclass(frozen=True)
class MarkParams:
    value: float = 1.0


def mark_graph(graph, params: MarkParams) -> PassResult:
    """Adds one unused constant: a real change to the graph that cannot change the outputs."""
    graph_def = copy_graph_def(graph.graph_def)
    graph_def.node.append(make_const(THROWAWAY, np.float32(params.value)))
    return PassResult(graph.replace(graph_def=graph_def), {"marker": 1})


def _marked(graph, params) -> str | None:
    return None if any(node.name == THROWAWAY for node in graph.graph_def.node) else "no marker node"


THROWAWAY_PASS = Pass(
    mark_graph,
    "marker",
    MarkParams,
    help="a test pass",
    switch=Key("enabled", bool, False, off=False),
    after=("apply_precision_map",),
    ensures=(Condition("the marker node exists", _marked),),
    facts=lambda params, node: {"marker_value": params.value if params else None},
    describe=lambda params: [f"one constant of {params.value}", "(a test pass)"],
)


@pytest.fixture
def throwaway(tmp_path):
    """The pass registered, and its one YAML option in a config folder of its own on Hydra's search path."""
    (tmp_path / "conf" / "marker").mkdir(parents=True)
    (tmp_path / "conf" / "marker" / "on.yaml").write_text("enabled: true\nvalue: 3.0\n")
    (tmp_path / "conf" / "marker" / "off.yaml").write_text("enabled: false\n")
    passes.register(THROWAWAY_PASS)
    from bertc.driver.config import register_configs

    register_configs()
    yield tmp_path / "conf"
    passes.unregister(THROWAWAY_PASS.name)
    register_configs()


def compose_with(extra_conf: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[f"hydra.searchpath=[file://{extra_conf}]", *overrides])


def test_a_pass_in_one_module_with_one_yaml_option_compiles(throwaway, tiny_model_dir, tmp_path):
    plan = build_plan(
        compose_with(throwaway, [f"model.path={tiny_model_dir}", "+marker=on", "precision=mixed", "bench=off"])
    )
    names = [step.name for step in plan.steps]
    assert names == ["remove_training_ops", "rewrite_attention_mask", "apply_precision_map", "mark_graph"]
    assert plan.steps[-1].params == MarkParams(3.0)
    code = compile_run(plan, tmp_path / "run", Console(file=io.StringIO()))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert code == 0, report.get("error")
    assert report["steps"][-1]["name"] == "mark_graph" and report["steps"][-1]["op_delta"] == {"Const": 1}


def test_a_pass_tells_the_plan_its_facts_and_lines_without_the_driver_naming_it(throwaway):
    """What the targets read of a group (Plan.facts) and the step's lines in the printed plan come from the pass's
    own declaration, its step switched off included."""
    plan = build_plan(compose_with(throwaway, ["+marker=on"]))
    lines = plan.describe()
    number = [step.name for step in plan.steps].index("mark_graph") + 1
    assert plan.facts["marker_value"] == 3.0
    assert lines[number : number + 2] == [
        f"step {number}   mark_graph  one constant of 3.0",
        "           (a test pass)",
    ]
    off = build_plan(compose_with(throwaway, ["+marker=off"]))
    assert off.facts["marker_value"] is None and not any("mark_graph" in line for line in off.describe())


def test_a_violated_ensures_stops_the_compile_as_a_bertc_bug(tiny_model_dir, tmp_path, monkeypatch):
    spec = passes.get("rewrite_attention_mask")

    @functools.wraps(spec.run)  # the wrapper keeps the pass's name
    def forgetful(graph, params):  # matches the sites but leaves the per-layer masks in place
        return PassResult(graph, {"attention_sites": 2})

    monkeypatch.setitem(passes._REGISTERED, spec.name, dataclasses.replace(spec, run=forgetful))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model.path={tiny_model_dir}", "bench=off"])
    stream = io.StringIO()
    code = compile_run(build_plan(cfg), tmp_path, Console(file=stream, width=200))
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 1 and report["status"] == "failed" and report["failed_step"] == "rewrite_attention_mask"
    assert "promised that one shared [B,1,1,T] bias feeds every attention softmax" in report["error"]
    assert "bug in bertc" in report["error"] and "traceback" in report
    assert not (tmp_path / "model").exists()


def test_canonical_order_follows_after_and_rejects_unknown_names(monkeypatch):
    assert [spec.name for spec in passes.passes()] == [
        "remove_training_ops",
        "rewrite_attention_mask",
        "rewrite_gelu",
        "trim_sequence_length",
        "apply_precision_map",
        "partition_graph",
    ]

    def broken_pass(graph, params):
        return PassResult(graph)

    broken = dataclasses.replace(THROWAWAY_PASS, run=broken_pass, group="broken", after=("no_such_pass",))
    monkeypatch.setitem(passes._REGISTERED, "broken_pass", broken)
    with pytest.raises(ValueError, match="no_such_pass"):
        passes.passes()


def test_each_group_schema_is_derived_from_the_pass_parameters():
    from bertc.driver.config import root_schema
    from bertc.passes.rewrite_attention_mask import MaskParams

    groups = {field.name: field.type for field in dataclasses.fields(root_schema())}
    keys = {field.name for field in dataclasses.fields(groups["mask"])}
    # the pass's own parameters plus its switch, without the compute dtype the plan derives
    assert keys == ({field.name for field in dataclasses.fields(MaskParams)} - {"compute_dtype"}) | {"mode"}


def test_discovery_finds_the_feature_packages_passes_and_loads_no_tensorflow():
    """The plan and `bertc --help` read every pass's declaration: the feature packages (passes/length/, partition/)
    give theirs through PASSES, and nothing the registry imports loads TensorFlow (length's dispatch does)."""
    code = (
        "import sys; from bertc import passes; names = [spec.name for spec in passes.passes()]; "
        "print(names, sorted({name.split('.')[0] for name in sys.modules} & {'tensorflow'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    names, loaded = done.stdout.strip().rsplit(" ", 1)
    assert "'trim_sequence_length'" in names and "'partition_graph'" in names and loaded == "[]"
