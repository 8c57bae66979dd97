"""target=openvino: the rewritten graph (length rewrites included) as an OpenVINO IR in f32, verified against the
original through OpenVINO, served by plain openvino without bertc or TensorFlow; a missing extra stops first."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import exporters
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console

from bertc.driver.cli import CONF_DIR
from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan
from bertc.evaluate.batches import synthetic_batches

pytest.importorskip("openvino", reason="the openvino extra: pip install 'bertc[openvino]'")


def compile_tiny(model, run_dir, *overrides: str) -> tuple[int, dict]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model.path={model}", "target=openvino", "bench=off", *overrides])
    code = compile_run(build_plan(cfg), run_dir, Console(file=io.StringIO()))
    return code, json.loads((run_dir / "report.json").read_text())


def original_probabilities(model_dir, feeds) -> np.ndarray:
    from bertc.evaluate.verify import OriginalModel
    from bertc.frontends.load import load_saved_model

    loaded = load_saved_model(model_dir)
    outputs = {key: loaded.graph.outputs[key] for key in ("probabilities", "logits")}
    return OriginalModel(model_dir, loaded.signature_inputs, outputs)(feeds)["probabilities"]


SERVE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import openvino
    feeds = {key: np.array(value, np.int32) for key, value in json.loads(sys.stdin.read()).items()}
    core = openvino.Core()
    compiled = core.compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = compiled(feeds)
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("bertc", "tensorflow"))
    print(json.dumps({"outputs": {key: outputs[key].tolist() for key in sys.argv[2:]}, "loaded": loaded}))
    """
)


def serve_with_plain_openvino(model, feeds, *outputs: str) -> dict:
    text = json.dumps({key: value.tolist() for key, value in feeds.items()})
    done = subprocess.run(
        [sys.executable, "-c", SERVE, str(model), *outputs], input=text, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    served = json.loads(done.stdout)
    assert served["loaded"] == [], "served without bertc or TensorFlow"
    return {key: np.array(value) for key, value in served["outputs"].items()}


@pytest.mark.parametrize("length", ["full", "trim", "pack"])
def test_compiles_with_parity_and_serves_with_plain_openvino(tiny_model_dir, tmp_path, length):
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run", f"length={length}")
    assert code == 0, report.get("error")
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-5
    folder = tmp_path / "run" / "model"
    info = json.loads((folder / "bertc_openvino.json").read_text())
    assert info["inputs"] == ["input_ids", "input_mask", "segment_ids"]
    assert sorted(info["outputs"]) == ["logits", "probabilities"]
    xml = (folder / "model.xml").read_text()
    assert 'element_type="f16"' not in xml, "weights kept in f32 (save_model's default compresses them)"
    assert xml.count('shape="?,128" element_type="i32"') == 3, "int32 inputs, any batch"
    assert report["serving"]["engine"].startswith("openvino")
    assert "openvino" in report["versions"], "the engine's version is in the fingerprint"
    ovms = tmp_path / "run" / "serving" / "ovms" / "user" / "1"
    assert sorted(path.name for path in ovms.iterdir()) == ["model.bin", "model.xml"]
    assert str(ovms) in report["serving"]["ovms"]
    batch = synthetic_batches(1, 5, 128, 30522, seed=3)[0]
    batch.input_mask[:, 40:] = 0  # every row at most 40 tokens: the trimmed graph runs them at 40
    expected = original_probabilities(tiny_model_dir, batch.feeds())
    served = serve_with_plain_openvino(folder / "model.xml", batch.feeds(), "probabilities")
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)


@pytest.mark.parametrize("exporter", ["google_onehot", pytest.param("hf_tf", marks=pytest.mark.slow)])
def test_an_exporter_model_serves_under_its_own_names(exporter, tmp_path):
    """Hugging Face's attention_mask / token_type_ids and logits-only output: the IR takes and returns the
    user's keys (plus bertc's probabilities), with parity."""
    missing = exporters.missing_packages(exporter)
    if missing:
        pytest.skip(f"{exporter} needs {', '.join(missing)} ({exporters.INSTALL_HINT})")
    shape = exporters.SHAPES["L3_H48_A3_C3"]
    (folder,) = exporters.build(exporter, [shape], tmp_path)
    user = json.loads((folder / "bertc_exporter.json").read_text())
    code, report = compile_tiny(folder, tmp_path / "run", "length=trim")
    assert code == 0, report.get("error")
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-5
    info = json.loads((tmp_path / "run" / "model" / "bertc_openvino.json").read_text())
    assert info["inputs"] == user["inputs"] and user["output"] in info["outputs"]
    batch = synthetic_batches(1, 3, exporters.SEQ_LEN, exporters.VOCAB_SIZE, seed=5)[0]
    feeds = dict(zip(user["inputs"], batch.feeds().values()))
    served = serve_with_plain_openvino(tmp_path / "run" / "model" / "model.xml", feeds, *info["outputs"])
    assert served[user["output"]].shape == (3, shape.labels)


def test_a_missing_extra_stops_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "openvino" else real(name))
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run")
    assert code == 2 and report["failed_step"] == "target"
    assert "openvino" in report["error"] and "pip install 'bertc[openvino]'" in report["error"]
    assert "steps" not in report or not report["steps"], "nothing was loaded or rewritten"
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "serving").exists()


def test_a_narrow_precision_is_refused_before_any_work(tiny_model_dir, tmp_path):
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run", "precision=mixed")
    assert code == 2 and report["failed_step"] == "target" and "precision=fp32" in report["error"]
