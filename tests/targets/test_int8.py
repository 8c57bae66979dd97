"""precision=int8: the precision map marks the dense matmuls by role, target=onnxruntime quantizes them (weights per
channel; activations dynamic or calibrated), and verify gates the build on argmax agreement, not on max |dp|."""

from __future__ import annotations

import collections
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console

from bertc.driver.cli import CONF_DIR
from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan
from bertc.evaluate.batches import Batch, synthetic_batches
from bertc.evaluate.verify import compare

ROLES = {"attention_projection": 3, "attention_output": 1, "ffn_in": 1, "ffn_out": 1}  # per layer
TINY_LAYERS = 2


def compose_config(model, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[f"model.path={model}", "precision=int8", "bench=off", *overrides])


def compile_tiny(model, run_dir, *overrides: str) -> tuple[int, dict]:
    code = compile_run(build_plan(compose_config(model, *overrides)), run_dir, Console(file=io.StringIO(), width=200))
    return code, json.loads((run_dir / "report.json").read_text())


def test_the_map_marks_the_dense_matmuls_of_its_roles_and_changes_nothing_in_tensorflow(tiny_model_dir):
    from bertc.frontends.load import load_saved_model
    from bertc.passes.apply_precision_map import apply_precision_map

    plan = build_plan(compose_config(tiny_model_dir, "target=onnxruntime"))
    assert plan.quantize == "int8" and plan.gate == "int8" and plan.compute_dtype == "float32"
    graph = load_saved_model(tiny_model_dir).graph
    result = apply_precision_map(graph, plan.step_params("precision"))
    marked = result.graph.quantize
    assert collections.Counter(marked.values()) == {role: count * TINY_LAYERS for role, count in ROLES.items()}
    ops = {node.name: node.op for node in result.graph.graph_def.node}
    assert all(ops[name] == "MatMul" for name in marked), "dense layers only: the attention's own products stay"
    before = {node.name: (node.op, node.attr["T"].type) for node in graph.graph_def.node}
    after = {node.name: (node.op, node.attr["T"].type) for node in result.graph.graph_def.node}
    assert after == before, "no conversion, no cast: int8 is not a TensorFlow rewrite"


SERVE = """
import json, sys
import numpy as np
import onnxruntime
feeds = {key: np.array(value, np.int32) for key, value in json.loads(sys.stdin.read()).items()}
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
ops = sorted({node.op_type for node in __import__("onnx").load(sys.argv[1]).graph.node})
print(json.dumps({"probabilities": session.run(["probabilities"], feeds)[0].tolist(), "ops": ops,
                  "loaded": sorted(name for name in sys.modules if name.split(".")[0] in ("bertc", "tensorflow"))}))
"""


@pytest.mark.parametrize("activations", ["dynamic", "static"])
def test_int8_compiles_passes_its_gate_and_serves_with_plain_onnxruntime(tiny_model_dir, tmp_path, activations):
    pytest.importorskip("onnxruntime", reason="the onnxruntime extra: pip install 'bertc[onnxruntime]'")
    code, report = compile_tiny(
        tiny_model_dir, tmp_path / "run", "target=onnxruntime", "length=trim", f"precision.activations={activations}"
    )
    assert code == 0, report.get("error")
    parity = report["parity"]
    assert parity["gate"] == "int8" and parity["min_agreement"] == 0.98 and parity["passed"]
    assert parity["gated_agreement"] >= 0.98 and parity["agreement_on"] == "all"
    assert 0 < parity["max_abs_diff"] < 0.2, "int8 moves the probabilities, a little"
    info = json.loads((tmp_path / "run" / "model" / "bertc_onnx.json").read_text())
    assert info["int8"]["matmuls"] == sum(ROLES.values()) * TINY_LAYERS and info["int8"]["activations"] == activations
    assert "int8" in report["serving"] and "weights per channel" in report["serving"]["int8"]
    batch = synthetic_batches(1, 4, 128, 30522, seed=5)[0]
    done = subprocess.run(
        [sys.executable, "-c", SERVE, str(tmp_path / "run" / "model" / "model.onnx")],
        input=json.dumps({key: value.tolist() for key, value in batch.feeds().items()}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    served = json.loads(done.stdout)
    assert served["loaded"] == [], "served without bertc or TensorFlow"
    integer = {"dynamic": "MatMulInteger", "static": "QuantizeLinear"}[activations]
    assert integer in served["ops"]
    assert _int8_matmuls(tmp_path / "run" / "model" / "model.onnx") == sum(ROLES.values()) * TINY_LAYERS
    assert np.asarray(served["probabilities"]).shape == (4, 2)


def _int8_matmuls(path) -> int:
    """How many dense layers compute in int8: integer matmuls (a QAttention holds Q, K and V), or float MatMuls whose
    both inputs come dequantized (static: ONNX Runtime runs those QDQ pairs as integer matmuls)."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    producer = {output: node.op_type for node in nodes for output in node.output}
    count = collections.Counter(node.op_type for node in nodes)
    dequantized = [
        node
        for node in nodes
        if node.op_type == "MatMul" and all(producer.get(name) == "DequantizeLinear" for name in node.input)
    ]
    return count["MatMulInteger"] + 3 * count["QAttention"] + len(dequantized)


def test_an_int8_build_that_disagrees_is_rejected(tiny_model_dir, tmp_path, monkeypatch):
    """The classifier's weights negated after quantizing: every argmax flips, and the gate must say so."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime extra: pip install 'bertc[onnxruntime]'")
    import onnx
    from onnx import numpy_helper

    from bertc.targets import onnxruntime as target

    real = target.quantize

    def sabotaged(model, marked, serving_names, options):
        quantized, info = real(model, marked, serving_names, options)
        for initializer in quantized.graph.initializer:
            value = numpy_helper.to_array(initializer)
            if value.ndim == 2 and value.shape[1] == 2:  # the classifier's [hidden, labels] weight
                initializer.CopyFrom(numpy_helper.from_array(-value, initializer.name))
        return quantized, info

    monkeypatch.setattr(target, "quantize", sabotaged)
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run", "target=onnxruntime")
    assert code == 1 and report["status"] == "rejected" and report["failed_step"] == "verify"
    assert "argmax agreement" in report["error"] and "< 0.98" in report["error"]
    assert report["parity"]["disagreements"], "the report lists the disagreements"
    assert (tmp_path / "run" / "rejected" / "model.onnx").is_file() and not (tmp_path / "run" / "model").exists()
    assert onnx.load(str(tmp_path / "run" / "rejected" / "model.onnx")).graph.node


def test_a_target_that_does_not_quantize_refuses_int8_before_any_work(tiny_model_dir, tmp_path):
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run", "target=tf")
    assert code == 2 and report["failed_step"] == "target"
    assert "target=tf cannot run" in report["error"] and "onnxruntime" in report["error"]


def _model(probabilities: np.ndarray):
    """A model that answers the given rows in turn, one per example."""
    rows = iter(probabilities)

    def forward(feeds):
        taken = np.array([next(rows) for _ in feeds["input_ids"]])
        return {"probabilities": taken, "logits": np.log(taken)}

    return forward


def _batches(sources: list[str]) -> list[Batch]:
    ids = np.ones((1, 4), np.int32)
    return [Batch(ids, ids, ids * 0, source=source) for source in sources]


def test_the_agreement_gate_counts_the_datasets_pairs_when_there_are_any():
    original = np.array([[0.9, 0.1]] * 10)
    compiled = original.copy()
    compiled[[0, 1]] = [[0.1, 0.9]]  # two synthetic rows flip
    sources = ["synthetic"] * 2 + ["dataset"] * 8
    result = compare(_model(original), _model(compiled), _batches(sources), "int8", None)
    assert result["agreement_on"] == "dataset" and result["gated_agreement"] == 1.0 and result["passed"]
    assert result["argmax_agreement"] == 0.8 and result["disagreement_count"] == 2
    strict = compare(_model(original), _model(compiled), _batches(["synthetic"] * 10), "int8", None, 0.9)
    assert strict["agreement_on"] == "all" and strict["gated_agreement"] == 0.8 and not strict["passed"]
