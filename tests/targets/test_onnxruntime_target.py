"""target=onnxruntime: the rewritten graph (length rewrites included) as model.onnx, verified against the original
through ONNX Runtime, served by plain onnxruntime without bertc or TensorFlow; a missing extra stops first."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import exporters
from support.compile import compile_model
from support.engines import assert_refused_before_work, original_probabilities, serve_alone, without_module

from bertc.evaluate.batches import synthetic_batches

pytest.importorskip("onnxruntime", reason="the onnxruntime extra: pip install 'bertc[onnxruntime]'")
pytest.importorskip("tf2onnx", reason="the onnxruntime extra: pip install 'bertc[onnxruntime]'")


def compile_tiny(model, run_dir, *overrides: str) -> tuple[int, dict]:
    return compile_model(model, run_dir, ["target=onnxruntime", *overrides])


SERVE = """
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
answer = session.run(["probabilities"], feeds)[0].tolist()
"""


@pytest.mark.parametrize("length", ["full", "trim"])
def test_compiles_with_parity_and_serves_with_plain_onnxruntime(tiny_model_dir, tmp_path, length):
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run", f"length={length}")
    assert code == 0, report.get("error")
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-5
    model = tmp_path / "run" / "model" / "model.onnx"
    info = json.loads((tmp_path / "run" / "model" / "bertc_onnx.json").read_text())
    assert info["inputs"] == ["input_ids", "input_mask", "segment_ids"] and info["fused"]["FastGelu"] == 2
    assert info["fused"]["Attention"] == 2 and info["fused"]["SkipLayerNormalization"] == 4, "bertc's own fusions"
    assert report["serving"]["engine"].startswith("onnxruntime")
    triton = tmp_path / "run" / "serving" / "triton" / "user"  # Triton's model repository, a folder convention
    assert (triton / "1" / "model.onnx").read_bytes() == model.read_bytes()
    config = (triton / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and '{ name: "input_mask", data_type: TYPE_INT32, dims: [128] }' in config
    assert '{ name: "probabilities", data_type: TYPE_FP32, dims: [2] }' in config
    assert "onnxruntime" in report["versions"], "the engine's version is in the fingerprint"
    batch = synthetic_batches(1, 5, 128, 30522, seed=3)[0]
    batch.input_mask[:, 40:] = 0  # every row at most 40 tokens: the trimmed graph runs them at 40
    expected = original_probabilities(tiny_model_dir, batch.feeds())
    served = serve_alone(SERVE, batch.feeds(), str(model))
    np.testing.assert_allclose(np.array(served), expected, atol=1e-5)


def test_a_missing_extra_stops_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    without_module(monkeypatch, "tf2onnx")
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run")
    assert_refused_before_work(code, report, tmp_path / "run", "tf2onnx", "pip install 'bertc[onnxruntime]'")


def test_a_narrow_precision_is_refused_before_any_work(tiny_model_dir, tmp_path):
    code, report = compile_tiny(tiny_model_dir, tmp_path / "run", "precision=mixed")
    assert_refused_before_work(code, report, tmp_path / "run", "precision=fp32")


def test_bertcs_attention_fusion_keeps_the_graphs_scale_and_mask(tiny_model_dir, tmp_path, monkeypatch):
    """The tiny model's attention is nearly uniform (small random weights), so a wrong scale or mask would hardly
    show in its outputs: Q and K are sharpened x8 in the graph before fusing, then both graphs run side by side."""
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    from bertc.targets import onnxruntime as target
    from bertc.targets.onnx_fusion import fuse_attention, fuse_skip_layer_norm

    before = tmp_path / "before.onnx"
    real = target.fuse_attention

    def keep_a_copy(model, heads, together):
        onnx.save_model(model, str(before))
        return real(model, heads, together)

    monkeypatch.setattr(target, "fuse_attention", keep_a_copy)
    # the scale as a Mul before the mask, or folded into Q; bertc's shared mask bias, or each layer's own [B, L, L]
    for number, mask in enumerate(("mask.fold_scale=false", "mask.fold_scale=true", "mask=original")):
        code, report = compile_tiny(tiny_model_dir, tmp_path / f"run_{number}", "length=trim", mask)
        assert code == 0, report.get("error")
        plain = onnx.load(str(before))
        sharpened = {node.input[1] for node in plain.graph.node if node.op_type == "MatMul" and "/query/" in node.name}
        sharpened |= {node.input[1] for node in plain.graph.node if node.op_type == "MatMul" and "/key/" in node.name}
        for entry in plain.graph.initializer:
            if entry.name in sharpened:
                entry.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(entry) * 8, entry.name))
        fused = onnx.ModelProto()
        fused.CopyFrom(plain)
        assert len(set(fuse_attention(fused, 4).values())) == 2 and fuse_skip_layer_norm(fused) == 4
        sessions = [
            onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            for model in (plain, fused)
        ]
        for batch in synthetic_batches(4, 4, 128, 30522, seed=11):
            feeds = {key: value.astype(np.int32) for key, value in batch.feeds().items()}
            expected, got = (session.run(["probabilities", "logits"], feeds) for session in sessions)
            assert np.abs(expected[1]).max() > 0.05, "the sharpened model's logits are not all near zero"
            np.testing.assert_allclose(got[1], expected[1], atol=2e-5)


@pytest.mark.parametrize("exporter", ["google_onehot", pytest.param("hf_tf", marks=pytest.mark.slow)])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_an_exporter_model_compiles_and_serves_under_its_own_names(exporter, precision, tmp_path):
    """A model bertc did not make (tests/support/exporters.py): parity (fp32) or the int8 gate, the user's own keys in
    the ONNX model, and what fused or quantized on its graph."""
    exporters.skip_unless_installed(exporter)
    shape = exporters.SHAPES["L3_H48_A3_C3"]
    (folder,) = exporters.build(exporter, [shape], tmp_path)
    user = json.loads((folder / "bertc_exporter.json").read_text())
    code, report = compile_tiny(folder, tmp_path / "run", "length=trim", f"precision={precision}")
    assert code == 0, report.get("error")
    assert report["parity"]["passed"]
    if precision == "fp32":
        assert report["parity"]["max_abs_diff"] <= 1e-5
    info = json.loads((tmp_path / "run" / "model" / "bertc_onnx.json").read_text())
    assert info["inputs"] == user["inputs"] and user["output"] in info["outputs"]
    if precision == "int8":
        assert info["int8"]["matmuls"] == 6 * shape.layers, "every dense layer of attention and FFN, by role"


def test_the_conversion_holds_a_few_copies_of_the_weights_and_computes_the_same():
    """tf2onnx's steps that held copies of the weights (a frozen ConcreteFunction, Grappler on the Consts, a copy a
    pass in its optimizers' NodeProtos) are bypassed while bertc converts: the peak grows by about 7 copies of these
    68 MiB of weights, TensorFlow's own work included (37 with tf2onnx as it is), the model computes what TensorFlow
    does, the weight Grappler folds (a static slice of a table) is still folded, and tf2onnx is left as it was."""
    from pathlib import Path

    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from bertc.targets import onnxruntime as target

    class Module(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.kernels = [tf.Variable(rng.standard_normal((2048, 2048), np.float32) / 45) for _ in range(4)]
            self.table = tf.Variable(rng.standard_normal((512, 2048), np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids")])
        def serve(self, ids):
            rows = tf.one_hot(ids[:, 0], 2048) + tf.matmul(tf.one_hot(ids[:, 1], 128), self.table[:128])
            for kernel in self.kernels:
                rows = tf.tanh(tf.matmul(rows, kernel))
            return {"out": rows}

    module = Module()
    weights = sum(variable.numpy().nbytes for variable in module.variables)

    def high_water() -> int:
        return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) * 1024

    originals = (tf2onnx.graph.Node.update_proto, tf2onnx.tf_loader.tf_optimize)
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from the resident set
    before = high_water()
    model = target._convert(module)
    copies = (high_water() - before) / weights
    assert copies < 10, f"the conversion grew by {copies:.1f} copies of the weights"
    assert (tf2onnx.graph.Node.update_proto, tf2onnx.tf_loader.tf_optimize) == originals
    assert [2048, 2048] in [list(entry.dims) for entry in model.graph.initializer if entry.dims[0] == 2048]
    assert [128, 2048] in [list(entry.dims) for entry in model.graph.initializer], "the static slice was folded"
    ids = np.array([[3, 1], [2047, 0]], np.int32)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: ids})[0]
    np.testing.assert_allclose(got, module.serve(tf.constant(ids))["out"].numpy(), atol=1e-5)


def test_a_model_the_conversion_cannot_hold_is_refused_with_the_figures(monkeypatch):
    """The memory check counts the weight copies the target declares: BERT-Base with memory enough for
    TensorFlow's three copies but not for the ONNX conversion's is refused for target=onnxruntime only."""
    from types import SimpleNamespace

    from bertc.driver import limits
    from bertc.errors import ConfigError
    from bertc.targets import onnxruntime as target

    base = SimpleNamespace(
        vocab=30522, max_positions=512, type_vocab=2, hidden=768, layers=12, intermediate=3072, heads=12, seq_len=128
    )
    weights = limits.weight_bytes(base)
    assert 430e6 < weights < 440e6
    copies = (3 + target.TARGET.weight_copies) / 2
    monkeypatch.setattr(limits, "available_memory", lambda: int(copies * weights / limits.MEMORY_FRACTION))

    def plan(name: str) -> SimpleNamespace:
        off = SimpleNamespace(enabled=False)
        return SimpleNamespace(
            target=SimpleNamespace(name=name, params=None), shape=SimpleNamespace(batch_size=1), verify=off, bench=off
        )

    limits.refuse_batch_beyond_memory(base, plan("tf"))
    with pytest.raises(ConfigError) as refused:
        limits.refuse_batch_beyond_memory(base, plan("onnxruntime"))
    message = str(refused.value)
    assert "target=onnxruntime" in message and f"{target.TARGET.weight_copies:g} copies" in message
    assert "0.41 GiB each" in message and "Nothing was compiled" in message, message
