"""The run folder's TensorFlow Serving layout (serving/<name>/1/) and removal.keep_signature's five inputs."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from support.compile import compile_model
from support.engines import original_probabilities

from bertc.evaluate.batches import synthetic_batches


def feeds() -> dict[str, np.ndarray]:
    return synthetic_batches(1, 3, 128, 30522, seed=5)[0].feeds()


def test_a_passed_run_has_a_layout_tensorflow_serving_loads(tiny_model_dir, tmp_path):
    code, report = compile_model(tiny_model_dir, tmp_path, [])
    assert code == 0
    serving = report["serving"]
    base = tmp_path / "serving" / "user"
    assert serving["base_path"] == str(base) and serving["model_name"] == "user" and serving["version"] == 1
    assert (base / "1" / "saved_model.pb").is_file() and (base / "1" / "variables").is_dir()
    # Hard links: the same files as model/, not a second copy.
    assert (base / "1" / "saved_model.pb").stat().st_ino == (tmp_path / "model" / "saved_model.pb").stat().st_ino
    signature = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    assert sorted(signature.structured_input_signature[1]) == ["input_ids", "input_mask", "segment_ids"]
    out = signature(**{key: tf.constant(value) for key, value in feeds().items()})
    np.testing.assert_allclose(out["probabilities"].numpy(), original_probabilities(tiny_model_dir, feeds()), atol=1e-5)
    assert serving["dropped_inputs"] == ["label_ids", "is_real_example"]
    assert serving["inputs"] == ["input_ids", "input_mask", "segment_ids"]
    assert serving["outputs"] == ["logits", "probabilities"] and serving["added_outputs"] == ["logits"]
    text = (tmp_path / "report.md").read_text()
    assert (
        "## Serving" in text
        and f"--model_base_path={base}" in text
        and "label_ids and is_real_example are gone" in text
        and "logits added by bertc" in text
    )


def test_keep_signature_accepts_the_five_run_classifier_inputs(tiny_model_dir, tmp_path):
    code, report = compile_model(tiny_model_dir, tmp_path, ["removal.keep_signature=true"])
    assert code == 0 and report["parity"]["passed"]
    assert report["serving"]["inputs"] == [
        "input_ids",
        "input_mask",
        "segment_ids",
        "label_ids",
        "is_real_example",
    ]
    signature = tf.saved_model.load(report["serving"]["base_path"] + "/1").signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    assert sorted(specs) == ["input_ids", "input_mask", "is_real_example", "label_ids", "segment_ids"]
    assert specs["label_ids"].shape.as_list() == [None] and specs["label_ids"].dtype == tf.int32
    batch = {key: tf.constant(value) for key, value in feeds().items()}
    first = signature(**batch, label_ids=tf.constant([0, 1, 0]), is_real_example=tf.constant([1, 1, 1]))
    second = signature(**batch, label_ids=tf.constant([1, 1, 1]), is_real_example=tf.constant([0, 0, 0]))
    np.testing.assert_array_equal(first["probabilities"].numpy(), second["probabilities"].numpy())  # ignored
    expected = original_probabilities(tiny_model_dir, feeds())
    np.testing.assert_allclose(first["probabilities"].numpy(), expected, atol=1e-5)
    assert report["serving"]["dropped_inputs"] == []
    assert "keeps run_classifier's label_ids and is_real_example" in (tmp_path / "report.md").read_text()


def test_a_rejected_model_gets_no_serving_layout(tiny_model_dir, tmp_path):
    code, report = compile_model(tiny_model_dir, tmp_path, ["precision=mixed", "verify.tolerance=1e-9"])
    assert code == 1 and report["status"] == "rejected"
    assert (tmp_path / "rejected").is_dir() and not (tmp_path / "serving").exists() and "serving" not in report
