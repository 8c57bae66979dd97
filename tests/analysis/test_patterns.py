"""Every pattern variant on a small hand-built subgraph: one attention layer spelled as each exporter spells it
(mask, scale, QK^T, projection), the LayerNorm forms and the embedding lookups; the matcher's own behaviour
(alternatives, swapped operands, skips, the error naming where matching stopped)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from bertc.analysis.match import Index, PatternNotFound, Variant, constant, first_match, p, require_match
from bertc.analysis.structure import (
    LOOKUP_VARIANTS,
    POSITION_VARIANTS,
    embedding_output,
    embedding_tables,
    find_attention_sites,
    find_layer_norms,
)
from bertc.ir.graph import Graph, GraphError, op_histogram, run_graph
from bertc.passes.rewrite_attention_mask import MaskParams, rewrite_attention_mask

v1 = tf.compat.v1
B, T, HIDDEN, HEADS = 3, 6, 8, 2
SIZE = HIDDEN // HEADS


class Weights:
    """Weights as the frontends make them: Placeholders read through an Identity, their values kept apart."""

    def __init__(self, seed: int = 0):
        self.rng, self.values = np.random.default_rng(seed), {}

    def __call__(self, name: str, shape) -> tf.Tensor:
        self.values[name] = self.rng.normal(0, 0.5, shape).astype(np.float32)
        return tf.identity(v1.placeholder(tf.float32, shape, name=name), name=f"{name}/read")


def _projection(x, w: Weights, name: str, form: str):
    """x [B,T,H] -> [B,heads,T,size] as each exporter projects it."""
    if form == "dense":  # google-research: 2-D MatMul + BiasAdd, then reshape and transpose
        flat = tf.reshape(x, [-1, HIDDEN])
        out = tf.nn.bias_add(tf.matmul(flat, w(f"{name}/kernel", (HIDDEN, HIDDEN))), w(f"{name}/bias", (HIDDEN,)))
        return tf.transpose(tf.reshape(out, [-1, T, HEADS, SIZE]), [0, 2, 1, 3])
    if form == "tensordot":  # Hugging Face: Reshape, MatMul, Reshape back, BiasAdd
        out = tf.reshape(tf.matmul(tf.reshape(x, [-1, HIDDEN]), w(f"{name}/kernel", (HIDDEN, HIDDEN))), [-1, T, HIDDEN])
        out = tf.nn.bias_add(out, w(f"{name}/bias", (HIDDEN,)))
        return tf.transpose(tf.reshape(out, [-1, T, HEADS, SIZE]), [0, 2, 1, 3])
    kernel, bias = w(f"{name}/kernel", (HIDDEN, HEADS, SIZE)), w(f"{name}/bias", (HEADS, SIZE))
    if form == "einsum":  # keras-hub, Model Garden: EinsumDense with a 3-D kernel, bias by Add
        out = tf.einsum("abc,cde->abde", x, kernel) + bias
    else:  # "lowered": the same einsum lowered to MatMul on reshaped operands (keras-hub via tf.saved_model.save)
        out = tf.reshape(tf.matmul(x, tf.reshape(kernel, [HIDDEN, HIDDEN])), [-1, T, HEADS, SIZE]) + bias
    return tf.transpose(out, [0, 2, 1, 3])


def attention_layer(mask_form: str, scale_form: str, projection: str = "dense", scores_op: str = "matmul") -> Graph:
    """One attention layer: x, input_mask -> probabilities-like output (the context, pooled)."""
    w = Weights()
    with tf.Graph().as_default() as graph:
        x = v1.placeholder(tf.float32, [None, T, HIDDEN], name="x")
        mask = v1.placeholder(tf.int32, [None, T], name="input_mask")
        q, k, v = (_projection(x, w, name, projection) for name in ("query", "key", "value"))
        scale = 1.0 / np.sqrt(SIZE)
        if scale_form == "query":
            q = q * scale
        scores = tf.einsum("bhfs,bhts->bhft", q, k) if scores_op == "einsum" else tf.matmul(q, k, transpose_b=True)
        if scale_form == "mul":
            scores = scores * scale
        elif scale_form == "realdiv":
            scores = scores / float(np.sqrt(SIZE))
        if mask_form == "select":
            keep = tf.cast(mask[:, None, None, :], tf.bool)
            probs = tf.nn.softmax(tf.where(keep, scores, -1e9))
            probs = tf.where(keep, probs, 0.0)
        else:
            bias = (1.0 - tf.cast(tf.reshape(mask, [-1, 1, 1, T]), tf.float32)) * -10000.0
            shifted = scores + bias
            probs = tf.nn.softmax(shifted + 1e-9 if mask_form == "shifted" else shifted)
        context = tf.matmul(probs, v)
        tf.identity(tf.reduce_sum(context, axis=[1, 2]), name="out")
    return Graph(graph.as_graph_def(), w.values, {"x": "x:0", "input_mask": "input_mask:0"}, {"out": "out:0"})


def _feeds():
    rng = np.random.default_rng(3)
    mask = np.ones((B, T), np.int32)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    return {"x": rng.normal(size=(B, T, HIDDEN)).astype(np.float32), "input_mask": mask}


ATTENTION_CASES = {  # (mask form, scale form, projection, scores op) -> (variant prefix, scale_on)
    "google-research": (("additive", "mul", "dense", "matmul"), ("additive mask (", "scores")),
    "Hugging Face": (("shifted", "realdiv", "tensordot", "matmul"), ("additive mask, then a constant", "scores")),
    "Model Garden": (("additive", "query", "einsum", "einsum"), ("additive mask (", "query")),
    "keras-hub export": (("select", "query", "einsum", "matmul"), ("boolean mask", "query")),
    "keras-hub saved_model": (("select", "query", "lowered", "matmul"), ("boolean mask", "query")),
}


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_site_variant_is_found_and_rewritten_with_parity(case):
    spelling, (variant, scale_on) = ATTENTION_CASES[case]
    graph = attention_layer(*spelling)
    (site,) = find_attention_sites(graph)
    assert site.variant.startswith(variant) and site.scale_on == scale_on
    assert (site.remask is not None) == (spelling[0] == "select")
    reference = run_graph(graph, _feeds())["out"]
    result = rewrite_attention_mask(graph, MaskParams(fold_scale=True))
    assert result.matches == {"attention_sites": 1, "folded_scales": 1}
    (after,) = find_attention_sites(result.graph)
    assert after.scale is None and after.remask is None and after.variant.startswith("additive mask")
    assert "SelectV2" not in op_histogram(result.graph.graph_def)
    np.testing.assert_allclose(run_graph(result.graph, _feeds())["out"], reference, atol=1e-5)
    assert graph.weights["query/kernel"] is not result.graph.weights["query/kernel"]  # a copy, scaled
    np.testing.assert_allclose(result.graph.weights["query/kernel"], graph.weights["query/kernel"] / np.sqrt(SIZE))


def test_a_mask_that_is_not_found_names_the_pattern_and_where_it_stopped():
    graph = attention_layer("additive", "mul")
    graph = graph.replace(inputs={**graph.inputs, "input_mask": "x:0"})  # the mask is not where it was said to be
    with pytest.raises(GraphError, match=r"no attention site found: pattern 'attention site' not found.*stopped at"):
        find_attention_sites(graph)


def test_fold_scale_names_the_query_projection_pattern_it_could_not_match():
    w = Weights()
    with tf.Graph().as_default() as tf_graph:
        x = v1.placeholder(tf.float32, [None, T, HIDDEN], name="x")
        mask = v1.placeholder(tf.int32, [None, T], name="input_mask")
        q = tf.transpose(tf.reshape(tf.tanh(x), [-1, T, HEADS, SIZE]), [0, 2, 1, 3])  # no projection
        k = _projection(x, w, "key", "dense")
        scores = tf.matmul(q, k, transpose_b=True) * 0.5
        bias = (1.0 - tf.cast(tf.reshape(mask, [-1, 1, 1, T]), tf.float32)) * -10000.0
        tf.identity(tf.nn.softmax(scores + bias), name="out")
    graph = Graph(tf_graph.as_graph_def(), w.values, {"x": "x:0", "input_mask": "input_mask:0"}, {"out": "out:0"})
    with pytest.raises(GraphError, match=r"pattern 'query projection \(for mask.fold_scale\)' not found.*Tanh"):
        rewrite_attention_mask(graph, MaskParams(fold_scale=True))


def _layer_norm(x, w: Weights, form: str):
    gamma, beta = w("gamma", (HIDDEN,)), w("beta", (HIDDEN,))
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    if form == "square":  # the variance spelled Mean(Square(x - mean))
        variance = tf.reduce_mean(tf.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + 1e-12) * gamma + beta
    if form == "contrib":  # google-research, Model Garden, Hugging Face: moments + batchnorm
        variance = tf.reduce_mean(tf.math.squared_difference(x, tf.stop_gradient(mean)), axis=-1, keepdims=True)
        inv = tf.math.rsqrt(variance + 1e-12) * gamma
        return x * inv + (beta - mean * inv)
    # Keras 3 (keras-hub): gamma and beta reshaped, the mean negated
    variance = tf.reduce_mean(tf.math.squared_difference(x, tf.stop_gradient(mean)), axis=-1, keepdims=True)
    inv = tf.math.rsqrt(variance + 1e-12) * tf.reshape(gamma, [1, 1, HIDDEN])
    return x * inv + (-mean * inv + tf.reshape(beta, [1, 1, HIDDEN]))


@pytest.mark.parametrize("form", ["contrib", "keras", "square"])
def test_layer_norm_forms_are_one_region_each(form):
    w = Weights()
    with tf.Graph().as_default() as tf_graph:
        x = v1.placeholder(tf.float32, [None, T, HIDDEN], name="x")
        normed = _layer_norm(tf.tanh(x), w, form)
        tf.identity(normed + x, name="out")  # a residual reads x again: not part of the LayerNorm
    graph = Graph(tf_graph.as_graph_def(), w.values, {"x": "x:0"}, {"out": "out:0"})
    (region,) = find_layer_norms(graph)
    assert region.x == "Tanh:0" and "gamma" in region.nodes and "beta" in region.nodes
    assert not any(node.startswith("out") or node == "x" for node in region.nodes)
    assert embedding_output(graph) == f"{region.output}:0"


LOOKUP_CASES = {
    "GatherV2": lambda ids, table: tf.gather(table, ids),
    "OneHot + MatMul": lambda ids, table: tf.reshape(
        tf.matmul(tf.one_hot(tf.reshape(ids, [-1]), 20), table), [-1, T, HIDDEN]
    ),
}
POSITION_CASES = {
    "Slice": ("a slice", lambda table: tf.slice(table, [0, 0], [T, -1])),
    "StridedSlice + BroadcastTo": ("a strided slice", lambda table: tf.broadcast_to(table[:T], [1, T, HIDDEN])),
    "Range + gather": ("a gather of a range", lambda table: tf.gather(table, tf.expand_dims(tf.range(T), 0))),
}


@pytest.mark.parametrize("lookup", list(LOOKUP_CASES))
@pytest.mark.parametrize("positions", list(POSITION_CASES))
def test_embedding_lookups_and_position_slices(lookup, positions):
    w = Weights()
    with tf.Graph().as_default() as tf_graph:
        ids = v1.placeholder(tf.int32, [None, T], name="input_ids")
        words = LOOKUP_CASES[lookup](ids, w("word_embeddings", (20, HIDDEN)))
        variant, slicer = POSITION_CASES[positions]
        tf.identity(words + slicer(w("position_embeddings", (16, HIDDEN))), name="out")
    graph = Graph(tf_graph.as_graph_def(), w.values, {"input_ids": "input_ids:0"}, {"out": "out:0"})
    assert embedding_tables(graph, "input_ids") == ["word_embeddings"]
    index = Index.of(graph)
    hits = [hit for _, hit in _matches(index, POSITION_VARIANTS) if hit["table"].startswith("position")]
    assert hits and hits[0].variant.startswith(variant)
    assert "position_embeddings" in embedding_tables(graph, None, POSITION_VARIANTS)
    words_hit = [hit for _, hit in _matches(index, LOOKUP_VARIANTS) if hit["table"].startswith("word")]
    assert words_hit[0].variant.startswith("one-hot" if "OneHot" in lookup else "gather")


def _matches(index, variants):
    return [(name, hit) for name in index.nodes if (hit := first_match(index, name, variants))]


# ---- the matcher itself -------------------------------------------------------------------------------


def _tiny() -> Index:
    with tf.Graph().as_default() as tf_graph:
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        c = tf.constant(2.0, name="c")
        tf.identity(tf.transpose(tf.multiply(c, x, name="mul")), name="out")
    return Index.of(Graph(tf_graph.as_graph_def(), {}, {"x": "x:0"}, {"out": "out:0"}))


def test_matcher_alternatives_swap_and_skip():
    index = _tiny()
    straight = p("Mul", p("Placeholder", as_="x"), constant(as_="c"), as_="mul")
    assert first_match(index, "mul", [Variant("x * c", straight)]) is None  # the operands come as (c, x)
    swapped = p("Mul|RealDiv", p("Placeholder", as_="x"), constant(as_="c"), swap=True, as_="mul")
    hit = first_match(index, "mul", [Variant("x * c", swapped)])
    assert hit.nodes == {"mul": "mul", "x": "x", "c": "c"}
    through = p("Mul", swap=True, skip=("Identity", "Transpose"), as_="mul")
    assert first_match(index, "out", [Variant("skips", through)])["mul"] == "mul"


def test_matcher_error_names_the_closest_variant_and_the_node():
    index = _tiny()
    variants = [
        Variant("divided", p("RealDiv")),
        Variant("times a weight", p("Mul", p("Placeholder"), p("VarHandleOp"), swap=True)),
    ]
    with pytest.raises(PatternNotFound) as error:
        require_match(index, "mul", variants, "scale")
    message = str(error.value)
    assert "pattern 'scale' not found at mul" in message and "(times a weight)" in message
    assert "stopped at c (Const), where it wanted Placeholder" in message
