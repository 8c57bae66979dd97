"""(exporter, shape) -> a small BERT classifier with random weights, saved as that exporter saves it.

    python -m tests.support.exporters OUT_DIR                 # every exporter at every shape
    python -m tests.support.exporters OUT_DIR --only hf_tf --shape L2_H64_A4_C2

Each model is written to OUT_DIR/<exporter>-<shape>/ (a SavedModel) with `bertc_exporter.json`
beside it (its shape, signature input names and output). Every exporter runs in a subprocess of
its own: keras-hub needs Keras 3, while Model Garden and transformers need tf-keras, and one
process cannot hold both as `tf.keras`. Weights are each exporter's random initialisation plus
seeded noise on every variable, so biases and LayerNorm parameters are not the trivial zeros and
ones (a parity test must see them). Tests import this as `support.exporters` and call `build`/`available`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

SEQ_LEN = 128
VOCAB_SIZE = 1000
SEED = 7
NOISE = 0.05


@dataclasses.dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    labels: int

    @property
    def name(self) -> str:
        return f"L{self.layers}_H{self.hidden}_A{self.heads}_C{self.labels}"

    @property
    def intermediate(self) -> int:
        return 2 * self.hidden


SHAPES = {shape.name: shape for shape in (Shape(2, 64, 4, 2), Shape(3, 48, 3, 3))}

# exporter -> (the packages it needs, environment for its subprocess, its names for bertc's input_ids,
# input_mask and segment_ids, the signature's output key)
EXPORTERS: dict[str, tuple[tuple[str, ...], dict[str, str], tuple[str, ...], str]] = {
    "keras_hub_export": (("keras_hub",), {}, ("token_ids", "padding_mask", "segment_ids"), "output_0"),
    "keras_hub_saved_model": (("keras_hub",), {}, ("token_ids", "padding_mask", "segment_ids"), "logits"),
    "model_garden": (
        ("official", "tf_keras", "gin"),
        {"TF_USE_LEGACY_KERAS": "1"},
        ("input_word_ids", "input_mask", "input_type_ids"),
        "logits",
    ),
    "hf_tf": (
        ("transformers", "tf_keras"),
        {"TF_USE_LEGACY_KERAS": "1"},
        ("input_ids", "attention_mask", "token_type_ids"),
        "logits",
    ),
    "google_onehot": ((), {}, ("input_ids", "input_mask", "segment_ids"), "probabilities"),
}
INSTALL_HINT = "pip install -e '.[exporters]' and then pip install --no-deps tf-models-official~=2.20.0"


def missing_packages(exporter: str) -> list[str]:
    """The importable packages `exporter` needs that are not installed (found without importing)."""
    return [name for name in EXPORTERS[exporter][0] if importlib.util.find_spec(name) is None]


def skip_unless_installed(exporter: str) -> None:
    """For a test: skip, naming the packages and how to get them, where `exporter` cannot run here."""
    missing = missing_packages(exporter)
    if missing:
        import pytest

        pytest.skip(f"{exporter} needs {', '.join(missing)} ({INSTALL_HINT})")


def build(exporter: str, shapes: list[Shape], out_root: Path) -> list[Path]:
    """Build `exporter`'s models in one subprocess into out_root/<exporter>-<shape>/; returns those.

    google-research's graph is bertc's own builder and needs no Keras: it is built in this process.
    """
    if exporter == "google_onehot":
        for shape in shapes:
            _build_in_process(exporter, shape, Path(out_root) / f"{exporter}-{shape.name}")
        return [Path(out_root) / f"{exporter}-{shape.name}" for shape in shapes]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **EXPORTERS[exporter][1]}
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, str(out_root), "--only", exporter, "--in-process"]
    for shape in shapes:
        command += ["--shape", shape.name]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building {exporter} failed:\n{result.stderr[-4000:]}")
    return [Path(out_root) / f"{exporter}-{shape.name}" for shape in shapes]


def _example_inputs(shape: Shape, batch: int = 2):
    import numpy as np

    rng = np.random.default_rng(SEED)
    ids = rng.integers(0, VOCAB_SIZE, (batch, SEQ_LEN)).astype(np.int32)
    mask = np.zeros((batch, SEQ_LEN), np.int32)
    mask[0, :SEQ_LEN] = 1
    mask[1:, : SEQ_LEN // 3] = 1
    types = np.zeros((batch, SEQ_LEN), np.int32)
    types[:, SEQ_LEN // 4 : SEQ_LEN // 2] = 1
    return ids, types, mask


def _perturb(variables) -> None:
    import numpy as np

    rng = np.random.default_rng(SEED)
    for variable in variables:
        value = np.asarray(variable.numpy())
        if np.issubdtype(value.dtype, np.floating):
            variable.assign(value + rng.normal(0.0, NOISE, value.shape).astype(value.dtype))


def _save_serving(model, names: tuple[str, ...], out: Path, logits=lambda outputs: outputs) -> None:
    """tf.saved_model.save with a serving signature: int32 [batch, SEQ_LEN] inputs under `names` -> logits."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, SEQ_LEN], tf.int32, name=name) for name in names])
    def serve(*tensors):
        return {"logits": logits(model(dict(zip(names, tensors)), training=False))}

    tf.saved_model.save(model, str(out), signatures={"serving_default": serve})


def _keras_hub_model(shape: Shape):
    import keras
    import keras_hub

    keras.utils.set_random_seed(SEED)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB_SIZE,
        num_layers=shape.layers,
        num_heads=shape.heads,
        hidden_dim=shape.hidden,
        intermediate_dim=shape.intermediate,
        max_sequence_length=SEQ_LEN,
    )
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=shape.labels, preprocessor=None)
    ids, types, mask = _example_inputs(shape)
    model({"token_ids": ids, "segment_ids": types, "padding_mask": mask})
    _perturb(model.weights)
    return model


def _build_keras_hub_export(shape: Shape, out: Path) -> None:
    _keras_hub_model(shape).export(str(out))


def _build_keras_hub_saved_model(shape: Shape, out: Path) -> None:
    _save_serving(_keras_hub_model(shape), ("token_ids", "segment_ids", "padding_mask"), out)


def _build_model_garden(shape: Shape, out: Path) -> None:
    import tf_keras
    from official.nlp.modeling import models, networks

    tf_keras.utils.set_random_seed(SEED)
    encoder = networks.BertEncoder(
        vocab_size=VOCAB_SIZE,
        hidden_size=shape.hidden,
        num_layers=shape.layers,
        num_attention_heads=shape.heads,
        inner_dim=shape.intermediate,
        max_sequence_length=SEQ_LEN,
        type_vocab_size=2,
    )
    model = models.BertClassifier(network=encoder, num_classes=shape.labels)
    ids, types, mask = _example_inputs(shape)
    model({"input_word_ids": ids, "input_mask": mask, "input_type_ids": types})
    _perturb(model.weights)

    _save_serving(model, ("input_word_ids", "input_mask", "input_type_ids"), out)


def _build_hf_tf(shape: Shape, out: Path) -> None:
    import tensorflow as tf
    from transformers import BertConfig, TFBertForSequenceClassification

    tf.random.set_seed(SEED)
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=SEQ_LEN,
        num_labels=shape.labels,
    )
    model = TFBertForSequenceClassification(config)
    ids, types, mask = _example_inputs(shape)
    model({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    _perturb(model.weights)

    _save_serving(model, ("input_ids", "attention_mask", "token_type_ids"), out, lambda outputs: outputs.logits)


def _build_google_onehot(shape: Shape, out: Path) -> None:
    from bertc.model.config import BertConfig
    from bertc.model.saved_model import export_saved_model
    from bertc.model.weights import random_weights

    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
    )
    weights = random_weights(config, shape.labels, SEED)
    export_saved_model(config, weights, out, num_labels=shape.labels, seq_len=SEQ_LEN, one_hot_embeddings=True)


def _build_in_process(exporter: str, shape: Shape, out: Path) -> None:
    if out.exists():
        raise FileExistsError(f"{out} already exists: remove it or choose another OUT_DIR")
    globals()[f"_build_{exporter}"](shape, out)
    inputs, output = EXPORTERS[exporter][2], EXPORTERS[exporter][3]
    info = {
        "exporter": exporter,
        **dataclasses.asdict(shape),
        "vocab_size": VOCAB_SIZE,
        "seq_len": SEQ_LEN,
        "inputs": list(inputs),
        "output": output,
    }
    (out / "bertc_exporter.json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.exporters", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--only", choices=tuple(EXPORTERS), action="append")
    parser.add_argument("--shape", choices=tuple(SHAPES), action="append")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    exporters = args.only or list(EXPORTERS)
    shapes = [SHAPES[name] for name in (args.shape or SHAPES)]
    if args.in_process:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bertc, when run as a file
        for exporter in exporters:
            for shape in shapes:
                _build_in_process(exporter, shape, args.out_dir / f"{exporter}-{shape.name}")
        return 0
    status = 0
    for exporter in exporters:
        missing = missing_packages(exporter)
        if missing:
            print(f"skip {exporter}: {', '.join(missing)} not installed ({INSTALL_HINT})")
            continue
        try:
            for folder in build(exporter, shapes, args.out_dir):
                print(f"wrote {folder}")
        except RuntimeError as error:
            print(error, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
