"""(BertConfig, weights) -> a TF1-style serving SavedModel, as the seed's Appendix 1 patch exports it.

Five int32 placeholders (`input_ids`, `input_mask`, `segment_ids` [None,S]; `label_ids`,
`is_real_example` [None]), signature `serving_default` -> `probabilities`, weights in `variables/`.
The folder also gets `bert_config.json` and, when given (a file or its tokens), `vocab.txt`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from bertc.ir.signature import SERVING_INPUTS as BASE_INPUTS
from bertc.ir.signature import TRAINING_INPUTS
from bertc.model.bert import build_classifier
from bertc.model.config import BertConfig
from bertc.model.weights import Weights, check_weights

v1 = tf.compat.v1
SERVING_INPUTS = BASE_INPUTS + TRAINING_INPUTS  # run_classifier's five


def export_saved_model(
    config: BertConfig,
    weights: Weights,
    out_dir: str | Path,
    *,
    num_labels: int,
    seq_len: int = 128,
    vocab_file: str | Path | None = None,
    vocab_tokens: list[str] | None = None,
    one_hot_embeddings: bool = False,
) -> Path:
    """Write the SavedModel to `out_dir`, which must not exist; written beside it, then moved."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; bertc never overwrites a model: choose a new --out.")
    if seq_len > config.max_position_embeddings:
        raise ValueError(
            f"seq_len {seq_len} is above the model's max_position_embeddings {config.max_position_embeddings}."
        )
    check_weights(weights, config, num_labels, "export")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write(config, weights, staging / "model", num_labels, seq_len, one_hot_embeddings)
        (staging / "model" / "bert_config.json").write_text(config.to_json() + "\n")
        if vocab_file is not None:
            shutil.copyfile(vocab_file, staging / "model" / "vocab.txt")
        elif vocab_tokens is not None:
            (staging / "model" / "vocab.txt").write_text("\n".join(vocab_tokens) + "\n")
        (staging / "model").rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _write(
    config: BertConfig, weights: Weights, path: Path, num_labels: int, seq_len: int, one_hot_embeddings: bool
) -> None:
    graph = tf.Graph()
    with graph.as_default():
        endpoints = build_classifier(config, num_labels, seq_len, one_hot_embeddings)
        v1.train.get_or_create_global_step()  # every Estimator graph has one
        variables = {variable.op.name: variable for variable in v1.global_variables()}
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for name, value in weights.items():
                variable = variables[name]
                # Feed the value into the initializer: the graph keeps no copy of the weights.
                session.run(variable.initializer, {variable.initializer.inputs[1]: value})
            signature = v1.saved_model.predict_signature_def(
                inputs={name: endpoints[name] for name in SERVING_INPUTS},
                outputs={"probabilities": endpoints["probabilities"]},
            )
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(
                session,
                [v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": signature},
                strip_default_attrs=True,
            )
            builder.save()
