"""Issue 23, items 2 and 5: no file outside the model folder is read or followed (Hugging Face shards and links,
checkpoint folders, assets), and a model that cannot be right (non-finite or wrongly typed weights, a broken
safetensors index) is refused before any work, exit 2, naming what was wrong."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file, save_file
from support.hostile_models import edit_proto
from support.refusals import assert_refused, folder_state, run_model
from support.sources import google_to_hf, hf_config, saved_variables, write_tf1_checkpoint

from bertc.errors import ModelError
from bertc.frontends.load import load_saved_model
from bertc.model.config import preset
from bertc.model.sources import read_checkpoint_folder, read_hf_folder

HF_KERNEL = "bert.encoder.layer.1.output.dense.weight"


@pytest.fixture(scope="module")
def tiny_weights(tiny_model_dir) -> dict[str, np.ndarray]:
    return {name: value for name, value in saved_variables(tiny_model_dir).items() if name != "global_step"}


def write_hf(folder: Path, weights: dict[str, np.ndarray], change=lambda tensors: tensors) -> Path:
    """A Hugging Face BertForSequenceClassification folder of `weights`, `change` applied to its tensors."""
    config = preset("tiny")
    tensors = {f"bert.{name}": value for name, value in google_to_hf(weights, config.num_hidden_layers).items()}
    tensors["classifier.weight"] = weights["output_weights"]
    tensors["classifier.bias"] = weights["output_bias"]
    folder.mkdir(parents=True)
    save_file(change(tensors), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf_config(config)))
    return folder


@pytest.fixture
def hf_folder(tiny_weights, tmp_path) -> Path:
    return write_hf(tmp_path / "input" / "hf", tiny_weights)


@pytest.fixture
def checkpoint_folder(tiny_weights, tmp_path) -> Path:
    folder = tmp_path / "input" / "checkpoint"
    folder.mkdir(parents=True)
    (folder / "bert_config.json").write_text(preset("tiny").to_json())
    write_tf1_checkpoint(tiny_weights, folder / "model.ckpt", global_step=7)
    return folder


def outside_file(tmp_path: Path, source: Path) -> Path:
    """A copy of `source` in a folder beside the input: what a link or an index could point at."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    return Path(shutil.copy(source, elsewhere / f"outside{''.join(source.suffixes)}"))


def refused_at_input(model: Path, tmp_path: Path, *words: str, step: str = "input") -> dict:
    """Refused with exit 2 naming `words`, at `step` (input: before the export; load: before any compile)."""
    before = folder_state(model)
    code, report, output = run_model(model, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", *words)
    assert report["failed_step"] == step, report
    assert "steps" not in report  # nothing compiled
    assert folder_state(model) == before
    return report


# ---- item 2: nothing outside the model folder ---------------------------------------------------------


def _shards_outside(folder: Path, tmp_path: Path) -> str:
    outside = outside_file(tmp_path, folder / "model.safetensors")
    shard = os.path.relpath(outside, folder)  # ../../elsewhere/outside.safetensors
    weight_map = {name: shard for name in load_file(str(folder / "model.safetensors"))}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return shard


def _safetensors_symlink(folder: Path, tmp_path: Path) -> str:
    outside = outside_file(tmp_path, folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(outside)
    return "symbolic link"


def _safetensors_hard_link(folder: Path, tmp_path: Path) -> str:
    outside = outside_file(tmp_path, folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    os.link(outside, folder / "model.safetensors")
    return "hard link"


HF_OUTSIDE = {"index shards": _shards_outside, "symlink": _safetensors_symlink, "hard link": _safetensors_hard_link}


@pytest.mark.parametrize("case", list(HF_OUTSIDE))
def test_hf_folder_reading_outside_is_refused(hf_folder, tmp_path, case):
    word = HF_OUTSIDE[case](hf_folder, tmp_path)
    with pytest.raises(ValueError, match="outside the model folder"):
        read_hf_folder(hf_folder)
    refused_at_input(hf_folder, tmp_path, word, "outside the model folder", "model.safetensors")


def _checkpoint_file_naming_outside(folder: Path, tmp_path: Path) -> str:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for file in folder.glob("model.ckpt-7*"):
        file.rename(elsewhere / file.name)
    relative = os.path.relpath(elsewhere / "model.ckpt-7", folder)
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{relative}"\n')
    return "model.ckpt-7.index"


def _checkpoint_data_symlink(folder: Path, tmp_path: Path) -> str:
    data = next(folder.glob("model.ckpt-7.data-*"))
    outside = outside_file(tmp_path, data)
    data.unlink()
    data.symlink_to(outside)
    return "symbolic link"


def _config_hard_link(folder: Path, tmp_path: Path) -> str:
    outside = outside_file(tmp_path, folder / "bert_config.json")
    (folder / "bert_config.json").unlink()
    os.link(outside, folder / "bert_config.json")
    return "hard link"


CHECKPOINT_OUTSIDE = {
    "checkpoint file": _checkpoint_file_naming_outside,
    "data symlink": _checkpoint_data_symlink,
    "config hard link": _config_hard_link,
}


@pytest.mark.parametrize("case", list(CHECKPOINT_OUTSIDE))
def test_checkpoint_folder_reading_outside_is_refused(checkpoint_folder, tmp_path, case):
    word = CHECKPOINT_OUTSIDE[case](checkpoint_folder, tmp_path)
    with pytest.raises(ValueError, match="outside the model folder"):
        read_checkpoint_folder(checkpoint_folder)
    refused_at_input(checkpoint_folder, tmp_path, word, "outside the model folder")


def _asset_outside(proto, name: str = "../../../elsewhere/outside.txt") -> None:
    meta = proto.meta_graphs[0]
    node = meta.graph_def.node.add()
    node.name, node.op = "asset_path", "Placeholder"
    node.attr["dtype"].type = tf.string.as_datatype_enum
    asset = meta.asset_file_def.add()
    asset.tensor_info.name, asset.filename = "asset_path:0", name


def test_tf1_asset_leaving_the_folder_is_refused(tiny_model_dir, tmp_path):
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "input" / "model"))
    edit_proto(model, _asset_outside)
    refused_at_input(
        model, tmp_path, "asset_path:0", "../../../elsewhere/outside.txt", "outside the model folder", step="load"
    )


class _Vocabulary(tf.Module):
    """A TF2 model tracking an asset file (as a StaticHashTable's vocabulary would be)."""

    def __init__(self, vocabulary: Path):
        super().__init__()
        self.vocabulary = tf.saved_model.Asset(str(vocabulary))
        self.scale = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.int32, name="input_ids")])
    def serve(self, input_ids):
        return {"logits": tf.cast(input_ids, tf.float32) * self.scale}


def test_tf2_asset_whose_saved_path_leaves_the_folder_is_refused(tmp_path):
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("a\nb\n")
    model = tmp_path / "input" / "tf2"
    module = _Vocabulary(vocabulary)
    tf.saved_model.save(module, str(model), signatures={"serving_default": module.serve})
    assert (model / "assets" / "vocab.txt").is_file()
    edit_proto(model, lambda proto: setattr(proto.meta_graphs[0].asset_file_def[0], "filename", "../../../etc/hosts"))
    with pytest.raises(ModelError, match=r"asset .*\.\./\.\./\.\./etc/hosts.*outside the model folder"):
        load_saved_model(model)


def test_files_inside_the_folder_named_by_an_index_are_read(hf_folder):
    """The index check refuses only what leaves: shards in the folder (and links inside it) still load."""
    tensors = load_file(str(hf_folder / "model.safetensors"))
    names = sorted(tensors)
    save_file({name: tensors[name] for name in names[::2]}, str(hf_folder / "model-1.safetensors"))
    save_file({name: tensors[name] for name in names[1::2]}, str(hf_folder / "model-2.safetensors"))
    (hf_folder / "model-2-alias.safetensors").symlink_to(hf_folder / "model-2.safetensors")
    weight_map = {name: "model-1.safetensors" if name in names[::2] else "model-2-alias.safetensors" for name in names}
    (hf_folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert read_hf_folder(hf_folder).num_labels == 2


# ---- item 5: a model that cannot be right is refused before any work ----------------------------------


def _poisoned(tensors: dict) -> dict:
    kernel = tensors[HF_KERNEL].copy()
    kernel[5, 3] = np.nan
    return {**tensors, HF_KERNEL: kernel}


def _integer_kernel(tensors: dict) -> dict:
    return {**tensors, HF_KERNEL: tensors[HF_KERNEL].astype(np.int32)}


@pytest.mark.parametrize(
    "change, words",
    [(_poisoned, ["NaN or Inf", "[5, 3]"]), (_integer_kernel, ["int32", "not a floating-point weight"])],
    ids=["nan", "int32"],
)
def test_hf_weight_that_cannot_be_right_is_refused(tiny_weights, tmp_path, change, words):
    folder = write_hf(tmp_path / "input" / "hf", tiny_weights, change)
    refused_at_input(folder, tmp_path, "encoder.layer.1.output.dense.weight", *words)


@pytest.mark.parametrize("index", [{"metadata": {"total_size": 1}}, {"weight_map": []}, [1, 2]])
def test_hf_index_without_a_weight_map_is_refused(hf_folder, tmp_path, index):
    (hf_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    words = ["weight_map"] if isinstance(index, dict) else ["not a JSON object"]
    refused_at_input(hf_folder, tmp_path, "model.safetensors.index.json", *words)


def _minus_inf(kernel: np.ndarray) -> np.ndarray:
    kernel = kernel.copy()
    kernel[1, 2] = -np.inf
    return kernel


@pytest.mark.parametrize(
    "change, words",
    [(_minus_inf, ["NaN or Inf", "[1, 2]"]), (lambda kernel: kernel.astype(np.int32), ["int32", "not a floating"])],
    ids=["inf", "int32"],
)
def test_checkpoint_folder_weight_that_cannot_be_right_is_refused(tiny_weights, tmp_path, change, words):
    folder = tmp_path / "input" / "checkpoint"
    folder.mkdir(parents=True)
    (folder / "bert_config.json").write_text(preset("tiny").to_json())
    kernel = change(tiny_weights["bert/pooler/dense/kernel"])
    write_tf1_checkpoint({**tiny_weights, "bert/pooler/dense/kernel": kernel}, folder / "model.ckpt")
    refused_at_input(folder, tmp_path, "bert/pooler/dense/kernel", *words)


def rewrite_checkpoint(model: Path, change) -> None:
    """Save the model's variables/ again with `change(name, value) -> value` applied to every tensor."""
    prefix = str(model / "variables" / "variables")
    reader = tf.train.load_checkpoint(prefix)
    names = sorted(reader.get_variable_to_shape_map())
    values = [change(name, reader.get_tensor(name)) for name in names]
    for file in (model / "variables").iterdir():
        file.unlink()
    tf.raw_ops.SaveV2(
        prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=[tf.constant(v) for v in values]
    )


def test_tf1_weight_of_another_dtype_is_refused(tiny_model_dir, tmp_path):
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "input" / "model"))
    name = "bert/encoder/layer_0/output/dense/bias"
    rewrite_checkpoint(model, lambda key, value: value.astype(np.float64) if key == name else value)
    refused_at_input(model, tmp_path, name, "float64 in the checkpoint but declared float32", step="load")


class _Scaled(tf.Module):
    """A TF2 model with one captured weight: enough to read its variables from the checkpoint."""

    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(np.ones((4, 3), np.float32), name="kernel")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.int32, name="input_ids")])
    def serve(self, input_ids):
        return {"logits": tf.matmul(tf.cast(input_ids, tf.float32), self.kernel)}


@pytest.fixture
def tf2_model(tmp_path) -> Path:
    model = tmp_path / "input" / "tf2"
    module = _Scaled()
    tf.saved_model.save(module, str(model), signatures={"serving_default": module.serve})
    return model


def _nan(value: np.ndarray) -> np.ndarray:
    value = value.copy()
    value[2, 1] = np.nan
    return value


@pytest.mark.parametrize(
    "change, words",
    [(_nan, ["NaN or Inf", "[2, 1]"]), (lambda value: value.astype(np.float16), ["float16", "declared float32"])],
    ids=["nan", "float16"],
)
def test_tf2_weight_that_cannot_be_right_is_refused(tf2_model, change, words):
    rewrite_checkpoint(tf2_model, lambda key, value: change(value) if key.startswith("kernel/") else value)
    with pytest.raises(ModelError) as refused:
        load_saved_model(tf2_model)
    for word in ["kernel", *words]:
        assert word in str(refused.value), refused.value
