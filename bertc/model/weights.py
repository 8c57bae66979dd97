"""BertConfig -> the google-research variable names and shapes, and deterministic random weights.

Weights are drawn with NumPy only, one generator per variable keyed by (seed, name), so any single
tensor can be made again without TensorFlow and without drawing the others.
"""

from __future__ import annotations

import zlib

import numpy as np

from bertc.model.config import BertConfig

Weights = dict[str, np.ndarray]


def variable_shapes(config: BertConfig, num_labels: int) -> dict[str, tuple[int, ...]]:
    """Every inference variable of run_classifier's model, in creation order."""
    hidden, inter = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "bert/embeddings/word_embeddings": (config.vocab_size, hidden),
        "bert/embeddings/token_type_embeddings": (config.type_vocab_size, hidden),
        "bert/embeddings/position_embeddings": (config.max_position_embeddings, hidden),
        "bert/embeddings/LayerNorm/beta": (hidden,),
        "bert/embeddings/LayerNorm/gamma": (hidden,),
    }
    dense = {  # each dense layer of an encoder layer: (input width, output width), kernel then bias
        "attention/self/query": (hidden, hidden),
        "attention/self/key": (hidden, hidden),
        "attention/self/value": (hidden, hidden),
        "attention/output/dense": (hidden, hidden),
    }
    for layer in range(config.num_hidden_layers):
        prefix = f"bert/encoder/layer_{layer}"
        layer_dense = {
            **dense,
            "attention/output/LayerNorm": None,
            "intermediate/dense": (hidden, inter),
            "output/dense": (inter, hidden),
            "output/LayerNorm": None,
        }
        for scope, widths in layer_dense.items():
            if widths is None:  # LayerNorm: beta, then gamma
                shapes[f"{prefix}/{scope}/beta"] = shapes[f"{prefix}/{scope}/gamma"] = (hidden,)
            else:
                shapes[f"{prefix}/{scope}/kernel"], shapes[f"{prefix}/{scope}/bias"] = widths, (widths[1],)
    shapes["bert/pooler/dense/kernel"] = (hidden, hidden)
    shapes["bert/pooler/dense/bias"] = (hidden,)
    shapes["output_weights"] = (num_labels, hidden)
    shapes["output_bias"] = (num_labels,)
    return shapes


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], stddev: float) -> np.ndarray:
    # Same law as TF's truncated_normal_initializer: redraw anything beyond two standard deviations.
    values = rng.standard_normal(shape, dtype=np.float32)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
        outside = np.abs(values) > 2.0
    return values * np.float32(stddev)


def random_weight(name: str, shape: tuple[int, ...], config: BertConfig, seed: int) -> np.ndarray:
    """One variable's value; depends only on (name, shape, config, seed)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    # Kernels and tables follow google's initializer. Biases, LayerNorm and the classifier head are
    # drawn wider than a fresh model's zeros and ones, so a random model gives confident,
    # input-dependent predictions: a parity check on a model that always says 0.5 proves little.
    if name == "output_weights":
        return _truncated_normal(rng, shape, 1.0)
    if name.endswith("/gamma"):
        return np.float32(1.0) + _truncated_normal(rng, shape, 0.1)
    if name.endswith(("/beta", "/bias")) or name == "output_bias":
        return _truncated_normal(rng, shape, 0.1)
    return _truncated_normal(rng, shape, config.initializer_range)


def random_weights(config: BertConfig, num_labels: int, seed: int) -> Weights:
    return {
        name: random_weight(name, shape, config, seed) for name, shape in variable_shapes(config, num_labels).items()
    }


def check_weights(weights: Weights, config: BertConfig, num_labels: int, source: str) -> None:
    """Raise a clear error when a weight set does not fit the config (missing, extra or misshapen)."""
    expected = variable_shapes(config, num_labels)
    missing = [name for name in expected if name not in weights]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} BERT variable(s) missing, first {missing[:3]}; "
            "the weights do not match the config (layers, hidden size) or use other names."
        )
    wrong = [
        f"{name} is {tuple(weights[name].shape)}, expected {shape}"
        for name, shape in expected.items()
        if tuple(weights[name].shape) != shape
    ]
    if wrong:
        raise ValueError(f"{source}: weights of the wrong shape: {'; '.join(wrong[:3])}.")
