"""target=openvino: the rewritten graph (length rewrites included) as an OpenVINO IR in f32 (precision=int8: the
marked matmuls quantized by NNCF, gated on argmax agreement), verified against the original through OpenVINO, served
by plain openvino without bertc or TensorFlow; a missing extra stops first."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import exporters
from support.compile import compile_model
from support.engines import assert_refused_before_work, original_probabilities, serve_alone, without_module

from bertc.evaluate.batches import synthetic_batches
from bertc.runtime.machine import cpu_flags

pytest.importorskip("openvino", reason="the openvino extra: pip install 'bertc[openvino]'")


def compile_tiny(model, run_dir, *overrides: str) -> tuple[int, dict]:
    return compile_model(model, run_dir, ["target=openvino", *overrides])


SERVE = """
import openvino
compiled = openvino.Core().compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
outputs = compiled(feeds)
answer = {key: outputs[key].tolist() for key in sys.argv[2:]}
"""


def serve_with_plain_openvino(model, feeds, *outputs: str) -> dict:
    return {key: np.array(value) for key, value in serve_alone(SERVE, feeds, str(model), *outputs).items()}


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
    exporters.skip_unless_installed(exporter)
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
    without_module(monkeypatch, "openvino")
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run")
    assert_refused_before_work(code, report, tmp_path / "run", "openvino", "pip install 'bertc[openvino]'")
    assert not (tmp_path / "run" / "serving").exists()


def test_a_narrow_precision_is_refused_before_any_work(tiny_model_dir, tmp_path):
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run", "precision=mixed")
    assert_refused_before_work(code, report, tmp_path / "run", "precision=fp32")


INT8_ROLES = {"attention_projection": 6, "attention_output": 2, "ffn_in": 2, "ffn_out": 2}  # the tiny model's 2 layers


def weight_types(model) -> dict[str, str]:
    """MatMul friendly name -> the element type of the constant its weight comes from, through NNCF's
    dequantization (Convert, Subtract, Multiply)."""
    found = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "MatMul":
            node = op.input_value(1).get_node()
            while node.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
                node = node.input_value(0).get_node()
            if node.get_type_name() == "Constant":
                found[op.get_friendly_name()] = node.get_element_type().get_type_name()
    return found


@pytest.mark.parametrize("activations", ["static", "dynamic"])
def test_int8_quantizes_the_marked_matmuls_only_passes_its_gate_and_serves(tiny_model_dir, tmp_path, activations):
    pytest.importorskip("nncf", reason="int8 on openvino needs nncf: pip install 'bertc[openvino]'")
    import openvino

    overrides = ("precision=int8", f"precision.activations={activations}", "length=trim")
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run", *overrides)
    assert code == 0, report.get("error")
    parity = report["parity"]
    assert parity["gate"] == "int8" and parity["passed"] and parity["gated_agreement"] >= 0.98
    assert 0 < parity["max_abs_diff"] < 0.2, "int8 moves the probabilities, a little"
    folder = tmp_path / "run" / "model"
    info = json.loads((folder / "bertc_openvino.json").read_text())
    assert info["int8"]["roles"] == INT8_ROLES and info["int8"]["activations"] == activations
    assert info["int8"]["int8_weights"] == 12 and "nncf" in report["versions"], "nncf is in the fingerprint"
    assert info["compile"].get("DYNAMIC_QUANTIZATION_GROUP_SIZE") == ("32" if activations == "dynamic" else None)
    assert "int8" in report["serving"] and "12 matmuls" in report["serving"]["int8"]
    model = openvino.Core().read_model(str(folder / "model.xml"))
    types = weight_types(model)
    marked = {name for name in types if "/encoder/layer_" in name}
    assert len(marked) == 12 and {types[name] for name in marked} == {"i8"}
    assert {name: types[name] for name in set(types) - marked} == {
        "bert/embeddings/MatMul": "f32",
        "bert/pooler/dense/MatMul": "f32",
        "loss/MatMul": "f32",
    }, "the embeddings, the pooler and the classifier stay f32"
    fake_quantize = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    fed = {port.get_node().get_friendly_name() for op in fake_quantize for port in op.output(0).get_target_inputs()}
    assert fed <= marked and bool(fake_quantize) == (activations == "static"), "activations quantized before them only"
    halves = [
        op
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Constant" and op.get_element_type() == openvino.Type.f16
    ]
    assert len(halves) == (12 if activations == "dynamic" else 0), "f32 weights; compress_weights' scales are f16"
    batch = synthetic_batches(1, 4, 128, 30522, seed=5)[0]
    served = serve_with_plain_openvino(folder / "model.xml", batch.feeds(), "probabilities")
    expected = original_probabilities(tiny_model_dir, batch.feeds())
    np.testing.assert_allclose(served["probabilities"], expected, atol=0.2)
    if activations == "dynamic" and VNNI & cpu_flags():
        runs = {size: compiled_logits(folder / "model.xml", batch.feeds(), size) for size in ("0", "32")}
        assert not np.array_equal(runs["0"], runs["32"]), "the CPU plugin quantizes the activations (0: it does not)"


VNNI = {"avx512_vnni", "avx_vnni", "amx_int8"}  # where the CPU plugin has int8 kernels for dynamic quantization


def compiled_logits(model, feeds, group_size: str) -> np.ndarray:
    import openvino

    config = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": group_size}
    return openvino.Core().compile_model(str(model), "CPU", config)(feeds)["logits"]


def test_an_int8_build_that_disagrees_is_rejected(tiny_model_dir, tmp_path, monkeypatch):
    """The classifier's weights negated after quantizing: every argmax flips, and the gate must say so."""
    pytest.importorskip("nncf", reason="int8 on openvino needs nncf: pip install 'bertc[openvino]'")
    import openvino

    from bertc.targets import openvino as target

    real = target.quantize

    def sabotaged(model, marked, serving_names, options):
        quantized, info = real(model, marked, serving_names, options)
        (classifier,) = [op for op in quantized.get_ordered_ops() if op.get_friendly_name() == "loss/MatMul"]
        weight = classifier.input_value(1).get_node()
        classifier.input(1).replace_source_output(openvino.op.Constant(-weight.get_data()).output(0))
        return quantized, info

    monkeypatch.setattr(target, "quantize", sabotaged)
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run", "precision=int8", "precision.activations=dynamic")
    assert code == 1 and report["status"] == "rejected" and report["failed_step"] == "verify"
    assert "argmax agreement" in report["error"] and "< 0.98" in report["error"]
    assert report["parity"]["disagreements"], "the report lists the disagreements"
    assert (tmp_path / "run" / "rejected" / "model.xml").is_file() and not (tmp_path / "run" / "model").exists()


def test_int8_without_nncf_stops_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    without_module(monkeypatch, "nncf")
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run", "precision=int8")
    assert_refused_before_work(code, report, tmp_path / "run", "nncf", "pip install 'bertc[openvino]'")
