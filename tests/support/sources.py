"""Model sources written from weights: a run_classifier training checkpoint, Hugging Face names and config.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1


def saved_variables(model_dir: Path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(model_dir / "variables" / "variables"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def write_tf1_checkpoint(weights: dict[str, np.ndarray], prefix: Path, global_step: int | None = None) -> str:
    """A run_classifier-style training checkpoint: the weights, their Adam slots and global_step."""
    with tf.Graph().as_default():
        for name, value in weights.items():
            v1.get_variable(name, initializer=value, use_resource=False)
            for slot in ("adam_m", "adam_v"):
                zeros = v1.zeros_initializer()
                v1.get_variable(f"{name}/{slot}", value.shape, initializer=zeros, use_resource=False)
        v1.train.get_or_create_global_step()
        saver = v1.train.Saver()
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            return saver.save(session, str(prefix), global_step=global_step, write_meta_graph=False)


def google_to_hf(weights: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """google-research names -> Hugging Face BertModel names, kernels transposed to [out, in]."""
    table = {
        "bert/embeddings/word_embeddings": "embeddings.word_embeddings.weight",
        "bert/embeddings/token_type_embeddings": "embeddings.token_type_embeddings.weight",
        "bert/embeddings/position_embeddings": "embeddings.position_embeddings.weight",
        "bert/embeddings/LayerNorm/gamma": "embeddings.LayerNorm.weight",
        "bert/embeddings/LayerNorm/beta": "embeddings.LayerNorm.bias",
        "bert/pooler/dense/kernel": "pooler.dense.weight",
        "bert/pooler/dense/bias": "pooler.dense.bias",
    }
    for layer in range(layers):
        google, hf = f"bert/encoder/layer_{layer}", f"encoder.layer.{layer}"
        for module in (
            "attention/self/query",
            "attention/self/key",
            "attention/self/value",
            "attention/output/dense",
            "intermediate/dense",
            "output/dense",
        ):
            table[f"{google}/{module}/kernel"] = f"{hf}.{module.replace('/', '.')}.weight"
            table[f"{google}/{module}/bias"] = f"{hf}.{module.replace('/', '.')}.bias"
        for module in ("attention/output", "output"):
            table[f"{google}/{module}/LayerNorm/gamma"] = f"{hf}.{module.replace('/', '.')}.LayerNorm.weight"
            table[f"{google}/{module}/LayerNorm/beta"] = f"{hf}.{module.replace('/', '.')}.LayerNorm.bias"
    return {
        hf_name: np.ascontiguousarray(weights[name].T) if name.endswith("/kernel") else weights[name]
        for name, hf_name in table.items()
    }


def hf_config(config) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu_new",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
    }
