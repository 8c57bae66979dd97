"""Token ids -> BERT hidden states and class probabilities, in NumPy float64: the tests' oracle.

Written apart from bertc.model (no shared code): its own GELU, layer norm and attention, a 3-D
[B, S, H] layout throughout, and readers for both google-research names (kernels [in, out]) and
Hugging Face names (Linear weights [out, in], applied as x @ W.T the way torch does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_erf(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, scale: np.ndarray, offset: np.ndarray, epsilon: float = 1e-12) -> np.ndarray:
    centred = x - x.mean(axis=-1, keepdims=True)
    variance = (centred**2).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(variance + epsilon) * scale + offset


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass
class Linear:
    weight: np.ndarray
    bias: np.ndarray
    out_in: bool  # True: torch layout [out, in]; False: google kernel [in, out]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ (self.weight.T if self.out_in else self.weight) + self.bias


@dataclass
class Norm:
    scale: np.ndarray
    offset: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return layer_norm(x, self.scale, self.offset)


@dataclass
class Layer:
    query: Linear
    key: Linear
    value: Linear
    attention_out: Linear
    attention_norm: Norm
    intermediate: Linear
    output: Linear
    output_norm: Norm


@dataclass
class Model:
    word: np.ndarray
    token_type: np.ndarray
    position: np.ndarray
    embedding_norm: Norm
    layers: list[Layer]
    pooler: Linear | None
    classifier: Linear | None
    heads: int


def _f64(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def _layers(linear, norm, layer_scope: str, sep: str, present) -> list[Layer]:
    """The encoder layers of one naming scheme (google: '/', Hugging Face: '.'), in order."""
    layers = []
    while present(scope := layer_scope.format(len(layers))):

        def part(*names: str) -> str:
            return sep.join((scope, *names))

        layers.append(
            Layer(
                linear(part("attention", "self", "query")),
                linear(part("attention", "self", "key")),
                linear(part("attention", "self", "value")),
                linear(part("attention", "output", "dense")),
                norm(part("attention", "output")),
                linear(part("intermediate", "dense")),
                linear(part("output", "dense")),
                norm(part("output")),
            )
        )
    return layers


def from_google(weights: dict[str, np.ndarray], heads: int) -> Model:
    w = {name: _f64(value) for name, value in weights.items()}

    def linear(scope):
        return Linear(w[f"{scope}/kernel"], w[f"{scope}/bias"], out_in=False)

    def norm(scope):
        return Norm(w[f"{scope}/LayerNorm/gamma"], w[f"{scope}/LayerNorm/beta"])

    layers = _layers(
        linear, norm, "bert/encoder/layer_{}", "/", lambda scope: f"{scope}/attention/self/query/kernel" in w
    )
    classifier = None
    if "output_weights" in w:  # google's [num_labels, H], used with transpose_b
        classifier = Linear(w["output_weights"], w["output_bias"], out_in=True)
    return Model(
        w["bert/embeddings/word_embeddings"],
        w["bert/embeddings/token_type_embeddings"],
        w["bert/embeddings/position_embeddings"],
        norm("bert/embeddings"),
        layers,
        linear("bert/pooler/dense"),
        classifier,
        heads,
    )


def from_hf(tensors: dict[str, np.ndarray], heads: int) -> Model:
    t = {
        name.removeprefix("bert."): _f64(value)
        for name, value in tensors.items()
        if np.issubdtype(np.asarray(value).dtype, np.floating)
    }

    def linear(scope):
        return Linear(t[f"{scope}.weight"], t[f"{scope}.bias"], out_in=True)

    def norm(scope):
        return Norm(t[f"{scope}.LayerNorm.weight"], t[f"{scope}.LayerNorm.bias"])

    layers = _layers(linear, norm, "encoder.layer.{}", ".", lambda scope: f"{scope}.attention.self.query.weight" in t)
    pooler = linear("pooler.dense") if "pooler.dense.weight" in t else None
    classifier = linear("classifier") if "classifier.weight" in t else None
    return Model(
        t["embeddings.word_embeddings.weight"],
        t["embeddings.token_type_embeddings.weight"],
        t["embeddings.position_embeddings.weight"],
        norm("embeddings"),
        layers,
        pooler,
        classifier,
        heads,
    )


def forward(model: Model, input_ids, input_mask, segment_ids, gelu=gelu_tanh) -> dict[str, np.ndarray]:
    """google-research semantics: masked keys get -10000 added to their scaled scores."""
    input_ids, input_mask, segment_ids = (np.asarray(a) for a in (input_ids, input_mask, segment_ids))
    batch, length = input_ids.shape
    width = model.word.shape[1]
    head_size = width // model.heads

    hidden = model.word[input_ids] + model.token_type[segment_ids] + model.position[:length][None]
    hidden = model.embedding_norm(hidden)
    key_bias = (1.0 - input_mask[:, None, None, :].astype(np.float64)) * -10000.0

    def heads(x):  # [B, S, H] -> [B, heads, S, head_size]
        return x.reshape(batch, length, model.heads, head_size).transpose(0, 2, 1, 3)

    layer_outputs = []
    for layer in model.layers:
        query, key, value = heads(layer.query(hidden)), heads(layer.key(hidden)), heads(layer.value(hidden))
        scores = query @ key.transpose(0, 1, 3, 2) / math.sqrt(head_size) + key_bias
        context = (softmax(scores) @ value).transpose(0, 2, 1, 3).reshape(batch, length, width)
        attended = layer.attention_norm(layer.attention_out(context) + hidden)
        hidden = layer.output_norm(layer.output(gelu(layer.intermediate(attended))) + attended)
        layer_outputs.append(hidden)

    result = {"sequence_output": hidden, "all_layers": layer_outputs}
    if model.pooler is not None:
        result["pooled_output"] = np.tanh(model.pooler(hidden[:, 0]))
        if model.classifier is not None:
            result["logits"] = model.classifier(result["pooled_output"])
            result["probabilities"] = softmax(result["logits"])
    return result
