"""The target=stablehlo artifact's format, shared by the target that writes it and the runtime that reads it:
its name and version, tensor digests, dtypes, and the host part's NumPy recipe (NumPy only)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from bertc.errors import UserError
from bertc.runtime.manifest import HostRecipe

FORMAT = "bertc-stablehlo-1"
BUCKETS_FORMAT = "bertc-stablehlo-2"  # with length buckets: one module per (batch size, bucket); see `batch_length`
FORMATS = (FORMAT, BUCKETS_FORMAT)
MANIFEST = "manifest.json"
# The gate on max |probability difference| per weight dtype, of verify (bertc/evaluate/verify.py GATES, where the
# figures behind it are) and of this runtime's self-check: here so that the runtime needs no bertc stage.
PARITY_GATES = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 3e-2}


class ServingError(UserError):
    """The artifact or the call is not what the runtime expects; the message says what to do."""


def numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # JAX's own dependency: NumPy has no bfloat16

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def tensor_digest(value: np.ndarray) -> str:
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()


def file_digest(content: bytes) -> str:
    """A module file's digest, as the manifest records it."""
    return "sha256:" + hashlib.sha256(content).hexdigest()


# ---- the host part -------------------------------------------------------------------------------


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """tf.nn.batch_normalization's arithmetic over the last axis, in float32, as google's graph does it."""
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float32)
    variance = np.square(x - mean).mean(axis=-1, keepdims=True, dtype=np.float32)
    inverse = (np.float32(1.0) / np.sqrt(variance + np.float32(epsilon))) * gamma
    return x * inverse + (beta - mean * inverse)


def compute_host(
    host: HostRecipe, weights: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The manifest's host recipe on a batch of serving inputs -> the boundary tensors the device part reads."""
    result = {}
    embedding = host.embedding_output
    ids, segments = feeds["input_ids"], feeds["segment_ids"]
    seq_len = ids.shape[1]
    # NOTE: the order of the sums is the graph's: (words + token types) + positions.
    x = _float32(weights, embedding.word_embeddings)[ids] + _float32(weights, embedding.token_type_embeddings)[segments]
    x = x + _float32(weights, embedding.position_embeddings)[:seq_len][None]
    norm = embedding.layer_norm
    x = layer_norm(x, _float32(weights, norm.gamma), _float32(weights, norm.beta), norm.epsilon)
    result["embedding_output"] = x.astype(numpy_dtype(embedding.dtype))

    mask = host.attention_mask
    present = feeds["input_mask"].astype(np.float32)
    if mask.form == "bias":  # mask=reimpl: one additive [B,1,1,T] bias shared by every layer
        value = (np.float32(1.0) - present[:, None, None, :]) * np.float32(mask.bias_value)
    elif mask.form == "mask":  # mask=original: google's [B,F,T] float mask, ones broadcast over F
        value = np.broadcast_to(present[:, None, :], (len(present), seq_len, seq_len))
    else:
        raise ServingError(f"unknown attention mask form {mask.form!r} in the manifest; upgrade bertc's runtime.")
    result["attention_mask"] = np.ascontiguousarray(value).astype(numpy_dtype(mask.dtype))
    return result


def _float32(weights: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    return np.asarray(weights[name], np.float32)
