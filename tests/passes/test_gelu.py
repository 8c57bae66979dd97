"""The gelu step: activations found by shape in every exporter's spelling, rebuilt in the requested form;
op delta, no mutation, idempotence, and numeric parity against NumPy and the original graph."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from bertc.analysis.structure import find_gelus
from bertc.frontends.load import load_saved_model
from bertc.ir.graph import Graph, copy_graph_def, op_delta, op_histogram, run_graph
from bertc.passes.remove_training_ops import RemovalParams, remove_training_ops
from bertc.passes.rewrite_gelu import GeluParams, rewrite_gelu

v1 = tf.compat.v1
_erf = np.vectorize(math.erf)
REFERENCE = {
    "tanh": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "exact": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    "sigmoid": lambda x: x / (1 + np.exp(-1.702 * x)),
}
# How each library spells the activation (what its SavedModel holds), and which form that is.
SPELLINGS = {
    "google tanh (Pow, Tanh)": (
        "tanh",
        lambda x: x * (0.5 * (1.0 + tf.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))),
    ),
    "tf.nn.gelu approximate": ("tanh", lambda x: tf.nn.gelu(x, approximate=True)),
    "tf.nn.gelu exact (Erfc)": ("exact", lambda x: tf.nn.gelu(x, approximate=False)),
    "Hugging Face erf": ("exact", lambda x: 0.5 * x * (1.0 + tf.math.erf(x / tf.cast(tf.sqrt(2.0), x.dtype)))),
    "sigmoid approximation": ("sigmoid", lambda x: x * tf.sigmoid(1.702 * x)),
}


def small_ffn(activation) -> Graph:
    """x [4, 8] -> dense -> activation -> dense -> y, with a tanh after it (a pooler-like Tanh that is no GELU)."""
    rng = np.random.default_rng(0)
    with tf.Graph().as_default() as graph:
        x = v1.placeholder(tf.float32, [None, 8], name="x")
        hidden = tf.nn.bias_add(tf.matmul(x, rng.normal(size=(8, 16)).astype(np.float32)), np.full(16, 0.1, np.float32))
        out = tf.matmul(activation(hidden), rng.normal(size=(16, 4)).astype(np.float32))
        tf.identity(tf.tanh(out), name="y")
    return Graph(graph.as_graph_def(), {}, {"x": "x:0"}, {"y": "y:0"})


def _x() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32) * 2


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_each_spelling_is_found_with_its_form(spelling):
    form, activation = SPELLINGS[spelling]
    (site,) = find_gelus(small_ffn(activation))
    assert site.form == form and site.x.startswith("BiasAdd")


@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.parametrize("form", ["tanh", "exact", "sigmoid"])
def test_rewrite_computes_the_requested_form(spelling, form):
    graph = small_ffn(SPELLINGS[spelling][1])
    before = copy_graph_def(graph.graph_def)
    result = rewrite_gelu(graph, GeluParams(form))
    assert graph.graph_def == before, "the pass mutated its input"
    assert result.matches == {"gelu activations": 1}
    (site,) = find_gelus(result.graph)
    assert site.form == form
    assert rewrite_gelu(result.graph, GeluParams(form)).graph.graph_def == result.graph.graph_def, "not idempotent"
    # the new activation against NumPy's, through the same dense layers
    hidden_graph = result.graph.replace(outputs={"h": site.x, "a": f"{site.output}:0"})
    values = run_graph(hidden_graph, {"x": _x()})
    np.testing.assert_allclose(values["a"], REFERENCE[form](values["h"].astype(np.float64)), atol=2e-6, rtol=1e-5)


def test_the_pooler_tanh_is_not_a_gelu():
    assert find_gelus(small_ffn(tf.tanh)) == []


def test_rewrite_of_the_bert_graph_changes_only_the_activations(tiny_model_dir):
    graph = remove_training_ops(load_saved_model(tiny_model_dir).graph, RemovalParams()).graph
    assert [site.form for site in find_gelus(graph)] == ["tanh", "tanh"]
    feeds = {
        "input_ids": np.arange(2 * 128, dtype=np.int32).reshape(2, 128) % 1000,
        "input_mask": np.ones((2, 128), np.int32),
        "segment_ids": np.zeros((2, 128), np.int32),
    }
    reference = run_graph(graph, feeds)["probabilities"]
    exact = rewrite_gelu(graph, GeluParams("exact")).graph
    delta = op_delta(op_histogram(graph.graph_def), op_histogram(exact.graph_def))
    assert delta["Erf"] == 2 and delta["Pow"] == -2 and delta["Tanh"] == -2
    assert "Tanh" in op_histogram(exact.graph_def), "the pooler's Tanh stays"
    back = rewrite_gelu(exact, GeluParams("tanh")).graph
    np.testing.assert_allclose(run_graph(back, feeds)["probabilities"], reference, atol=1e-6)
    assert np.abs(run_graph(exact, feeds)["probabilities"] - reference).max() < 1e-3
