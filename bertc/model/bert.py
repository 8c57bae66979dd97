"""BertConfig -> the TF1 inference graph that google-research/bert's run_classifier exports.

Written from the structure of `modeling.py` and `run_classifier.create_model` (is_training=False),
op for op: the ones-broadcast [B,F,T] mask, the per-layer `(1 - mask) * -10000` adder, the
`1/sqrt(head_size)` multiply, a 2-D [B*S, H] layout between layers, contrib-style LayerNorm, the
tanh GELU with `Pow`, token types by one-hot matmul, the position slice behind its assert, the
pooler, the classifier and a loss branch that `probabilities` never reaches. Dropout at
probability 0 is the identity and makes no ops, as in the original.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from bertc.model.config import BertConfig

v1 = tf.compat.v1


def _shape_list(tensor: tf.Tensor) -> list:
    """Static dims as ints, dynamic ones as scalar tensors (google's `get_shape_list`)."""
    static = tensor.shape.as_list()
    if all(dim is not None for dim in static):
        return static
    dynamic = tf.shape(tensor)
    return [dim if dim is not None else dynamic[index] for index, dim in enumerate(static)]


def _variable(name: str, shape: list[int], initializer) -> tf.Tensor:
    # RefVariables, as TF1 Estimators made them: a VariableV2 op read through an Identity.
    return v1.get_variable(name, shape, initializer=initializer, use_resource=False)


def _kernel_init(config: BertConfig):
    return v1.truncated_normal_initializer(stddev=config.initializer_range)


def _dense(inputs: tf.Tensor, units: int, config: BertConfig, name: str, activation=None) -> tf.Tensor:
    with v1.variable_scope(name):
        kernel = _variable("kernel", [inputs.shape[-1], units], _kernel_init(config))
        bias = _variable("bias", [units], v1.zeros_initializer())
        outputs = tf.nn.bias_add(tf.matmul(inputs, kernel), bias)
        return activation(outputs) if activation is not None else outputs


def _gelu(x: tf.Tensor) -> tf.Tensor:
    cdf = 0.5 * (1.0 + tf.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * tf.pow(x, 3))))
    return x * cdf


def _gelu_exact(x: tf.Tensor) -> tf.Tensor:
    """The erf form (Hugging Face's `gelu`), so an imported model computes the function it was trained with."""
    cdf = 0.5 * (1.0 + tf.math.erf(x / np.float32(np.sqrt(2.0))))
    return x * cdf


ACTIVATION_FUNCTIONS = {"gelu": _gelu, "gelu_exact": _gelu_exact}


def _layer_norm(inputs: tf.Tensor) -> tf.Tensor:
    # contrib.layers.layer_norm over the last axis: moments + batch_normalization, epsilon 1e-12.
    with v1.variable_scope("LayerNorm"):
        beta = _variable("beta", [inputs.shape[-1]], v1.zeros_initializer())
        gamma = _variable("gamma", [inputs.shape[-1]], v1.ones_initializer())
        mean, variance = tf.nn.moments(inputs, [inputs.shape.rank - 1], keepdims=True)
        return tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, variance_epsilon=1e-12)


def _embeddings(input_ids, segment_ids, config: BertConfig, one_hot: bool) -> tf.Tensor:
    # embedding_lookup: ids get a trailing axis, are flattened, gathered (or, on TPU, one-hot
    # multiplied: run_classifier's use_one_hot_embeddings) and reshaped back.
    input_ids = tf.expand_dims(input_ids, axis=[-1])
    table = _variable("word_embeddings", [config.vocab_size, config.hidden_size], _kernel_init(config))
    flat_ids = tf.reshape(input_ids, [-1])
    if one_hot:
        output = tf.matmul(tf.one_hot(flat_ids, depth=config.vocab_size), table)
    else:
        output = tf.gather(table, flat_ids)
    ids_shape = _shape_list(input_ids)
    output = tf.reshape(output, ids_shape[0:-1] + [ids_shape[-1] * config.hidden_size])

    # embedding_postprocessor: token types by one-hot matmul, positions by a slice of the table.
    batch_size, seq_length, width = _shape_list(output)
    token_type_table = _variable("token_type_embeddings", [config.type_vocab_size, width], _kernel_init(config))
    one_hot_ids = tf.one_hot(tf.reshape(segment_ids, [-1]), depth=config.type_vocab_size)
    token_type_embeddings = tf.matmul(one_hot_ids, token_type_table)
    output += tf.reshape(token_type_embeddings, [batch_size, seq_length, width])

    assert_op = v1.assert_less_equal(seq_length, config.max_position_embeddings)
    with tf.control_dependencies([assert_op]):
        full_positions = _variable("position_embeddings", [config.max_position_embeddings, width], _kernel_init(config))
        positions = tf.slice(full_positions, [0, 0], [seq_length, -1])
        output += tf.reshape(positions, [1, seq_length, width])
    return _layer_norm(output)


def _attention_mask(from_tensor, to_mask) -> tf.Tensor:
    # create_attention_mask_from_input_mask: a float [B, F, T] mask made by broadcasting ones.
    batch_size, from_seq_length = _shape_list(from_tensor)
    to_seq_length = _shape_list(to_mask)[1]
    to_mask = tf.cast(tf.reshape(to_mask, [batch_size, 1, to_seq_length]), tf.float32)
    broadcast_ones = tf.ones(shape=[batch_size, from_seq_length, 1], dtype=tf.float32)
    return broadcast_ones * to_mask


def _attention(layer_input, attention_mask, batch_size, seq_length, config: BertConfig) -> tf.Tensor:
    heads, head_size = config.num_attention_heads, config.head_size

    def split_heads(tensor):
        tensor = tf.reshape(tensor, [batch_size, seq_length, heads, head_size])
        return tf.transpose(tensor, [0, 2, 1, 3])

    # attention_layer reads the from and to shapes for its rank checks only: two dead Shape ops,
    # kept because the exported graph has them.
    _shape_list(layer_input)
    _shape_list(layer_input)
    query = _dense(layer_input, heads * head_size, config, "query")
    key = _dense(layer_input, heads * head_size, config, "key")
    value = _dense(layer_input, heads * head_size, config, "value")
    query, key = split_heads(query), split_heads(key)
    scores = tf.matmul(query, key, transpose_b=True)
    scores = tf.multiply(scores, 1.0 / math.sqrt(float(head_size)))
    mask = tf.expand_dims(attention_mask, axis=[1])
    adder = (1.0 - tf.cast(mask, tf.float32)) * -10000.0
    scores += adder
    probs = tf.nn.softmax(scores)
    value = split_heads(value)
    context = tf.transpose(tf.matmul(probs, value), [0, 2, 1, 3])
    return tf.reshape(context, [batch_size * seq_length, heads * head_size])


def _encoder(embedding_output, attention_mask, config: BertConfig) -> list[tf.Tensor]:
    input_shape = _shape_list(embedding_output)
    batch_size, seq_length, width = input_shape
    prev_output = tf.reshape(embedding_output, [-1, width])
    layer_outputs = []
    for layer in range(config.num_hidden_layers):
        with v1.variable_scope(f"layer_{layer}"):
            layer_input = prev_output
            with v1.variable_scope("attention"):
                with v1.variable_scope("self"):
                    attention = _attention(layer_input, attention_mask, batch_size, seq_length, config)
                with v1.variable_scope("output"):
                    attention = _dense(attention, width, config, "dense")
                    attention = _layer_norm(attention + layer_input)
            with v1.variable_scope("intermediate"):
                intermediate = _dense(
                    attention, config.intermediate_size, config, "dense", ACTIVATION_FUNCTIONS[config.hidden_act]
                )
            with v1.variable_scope("output"):
                layer_output = _dense(intermediate, width, config, "dense")
                prev_output = _layer_norm(layer_output + attention)
                layer_outputs.append(prev_output)
    # reshape_from_matrix for every layer, as BertModel asks for all layers' outputs; each reads
    # its input's shape (a dead Shape op but for the static width).
    return [tf.reshape(output, input_shape[0:-1] + [_shape_list(output)[-1]]) for output in layer_outputs]


def build_classifier(
    config: BertConfig, num_labels: int, seq_len: int, one_hot_embeddings: bool = False
) -> dict[str, tf.Tensor]:
    """Build run_classifier's predict graph in the current default graph; returns its endpoints.

    one_hot_embeddings: the word embedding as OneHot + MatMul, as run_classifier builds it with
    --use_tpu (use_one_hot_embeddings=True), instead of a gather.
    """
    input_ids = v1.placeholder(tf.int32, [None, seq_len], name="input_ids")
    input_mask = v1.placeholder(tf.int32, [None, seq_len], name="input_mask")
    segment_ids = v1.placeholder(tf.int32, [None, seq_len], name="segment_ids")
    label_ids = v1.placeholder(tf.int32, [None], name="label_ids")
    is_real_example = v1.placeholder(tf.int32, [None], name="is_real_example")

    _shape_list(input_ids)  # BertModel reads the batch size before opening its scope.
    with v1.variable_scope("bert"):
        with v1.variable_scope("embeddings"):
            embedding_output = _embeddings(input_ids, segment_ids, config, one_hot_embeddings)
        with v1.variable_scope("encoder"):
            attention_mask = _attention_mask(input_ids, input_mask)
            sequence_output = _encoder(embedding_output, attention_mask, config)[-1]
        with v1.variable_scope("pooler"):
            first_token = tf.squeeze(sequence_output[:, 0:1, :], axis=1)
            pooled_output = _dense(first_token, config.hidden_size, config, "dense", tf.tanh)

    output_weights = _variable("output_weights", [num_labels, config.hidden_size], _kernel_init(config))
    output_bias = _variable("output_bias", [num_labels], v1.zeros_initializer())
    with v1.variable_scope("loss"):
        logits = tf.nn.bias_add(tf.matmul(pooled_output, output_weights, transpose_b=True), output_bias)
        probabilities = tf.nn.softmax(logits, axis=-1)
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        one_hot_labels = tf.one_hot(label_ids, depth=num_labels, dtype=tf.float32)
        per_example_loss = -tf.reduce_sum(one_hot_labels * log_probs, axis=-1)
        loss = tf.reduce_mean(per_example_loss)
    # model_fn casts is_real_example for the eval metrics; serving never reads it.
    tf.cast(is_real_example, tf.float32)
    return {
        "input_ids": input_ids,
        "input_mask": input_mask,
        "segment_ids": segment_ids,
        "label_ids": label_ids,
        "is_real_example": is_real_example,
        "logits": logits,
        "probabilities": probabilities,
        "loss": loss,
    }
