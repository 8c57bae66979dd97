"""Per-pass checks, as torch.fx's pass tests do: op delta, input not mutated, idempotent, outputs equal;
plus the structure each step promises (one shared mask bias, no fp32 matmul in converted regions, ...)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tensorflow as tf
from support.precision import mixed

from bertc.errors import ConfigError
from bertc.evaluate.batches import synthetic_batches
from bertc.ir.graph import (
    FLOAT_TYPES,
    GraphError,
    check_graph,
    consumers,
    nodes_by_name,
    op_delta,
    op_histogram,
    run_graph,
    split_input,
)
from bertc.passes.apply_precision_map import PrecisionParams, PrecisionRule, apply_precision_map
from bertc.passes.partition.contract import boundaries_of, split_partition
from bertc.passes.partition.partition_graph import PartitionParams, partition_graph
from bertc.passes.remove_training_ops import RemovalParams, remove_training_ops
from bertc.passes.rewrite_attention_mask import SCOPE, MaskParams, rewrite_attention_mask


@pytest.fixture(scope="module")
def feeds(loaded):
    batch = synthetic_batches(1, 6, loaded.shape.seq_len, loaded.shape.vocab, seed=3)[0]
    return batch.feeds()


@pytest.fixture(scope="module")
def reference(loaded, feeds):
    return run_graph(loaded.graph, feeds)


@pytest.fixture(scope="module")
def removed(loaded):
    return remove_training_ops(loaded.graph, RemovalParams()).graph


@pytest.fixture(scope="module")
def masked(removed):
    return rewrite_attention_mask(removed, MaskParams()).graph


def check_pass(function, graph, params, feeds, reference, atol):
    """The four checks every pass gets; returns the result and its op delta."""
    snapshot = copy.deepcopy(graph.graph_def)
    weights_before = {name: value.copy() for name, value in graph.weights.items()}
    result = function(graph, params)
    check_graph(result.graph)
    assert graph.graph_def == snapshot, "the pass mutated its input graph"
    assert all(np.array_equal(graph.weights[name], value) for name, value in weights_before.items()), (
        "input weights mutated"
    )
    again = function(result.graph, params)
    assert again.graph.graph_def == result.graph.graph_def, "a second application changed the graph"
    outputs = run_graph(result.graph, feeds)
    for key in ("probabilities", "logits"):
        np.testing.assert_allclose(outputs[key], reference[key], atol=atol, rtol=0)
    return result, op_delta(op_histogram(graph.graph_def), op_histogram(result.graph.graph_def))


def test_removal_prunes_training_branch_and_listed_ops(loaded, feeds, reference):
    result, delta = check_pass(remove_training_ops, loaded.graph, RemovalParams(), feeds, reference, 1e-6)
    ops = op_histogram(result.graph.graph_def)
    for op in ("Identity", "StopGradient", "Assert", "LogSoftmax", "Sum"):
        assert op not in ops, op
    names = {node.name for node in result.graph.graph_def.node}
    assert "label_ids" not in names and "is_real_example" not in names
    assert {name for name in names if name.startswith("loss/")} == {"loss/MatMul", "loss/BiasAdd", "loss/Softmax"}
    assert result.matches == {"Identity": 41, "StopGradient": 5, "Assert?": 1, "ReshapeChain?": 1}
    assert delta["Assert"] == -1 and delta["StopGradient"] == -5


def test_removal_list_is_an_override(loaded, feeds, reference):
    result, delta = check_pass(remove_training_ops, loaded.graph, RemovalParams(("Identity",)), feeds, reference, 1e-6)
    ops = op_histogram(result.graph.graph_def)
    assert "Identity" not in ops and ops["StopGradient"] == 5 and ops["Assert"] == 1


def test_removal_rejects_unknown_entry(loaded):
    with pytest.raises(ConfigError, match="Bogus"):
        remove_training_ops(loaded.graph, RemovalParams(("Bogus",)))


def test_removal_reports_entry_that_matches_nothing(removed):
    # After a first removal there is nothing left to match: the runner turns 0 into an error.
    assert remove_training_ops(removed, RemovalParams(("CheckNumerics",))).matches == {"CheckNumerics": 0}


def test_mask_reimpl_one_bias_shared_by_every_layer(removed, loaded, feeds, reference):
    result, delta = check_pass(rewrite_attention_mask, removed, MaskParams(), feeds, reference, 1e-6)
    graph_def = result.graph.graph_def
    users = consumers(graph_def)
    adds = [user for user, _ in users[f"{SCOPE}/bias"]]
    assert len(adds) == loaded.shape.layers
    nodes = nodes_by_name(graph_def)
    assert all(any(u.op == "Softmax" for u, _ in users[add.name]) for add in adds)
    assert "Fill" not in op_histogram(graph_def), "the ones-broadcast [B,F,T] mask is gone"
    assert delta["ExpandDims"] == -loaded.shape.layers
    reshape_shape = nodes[f"{SCOPE}/shape"]
    assert list(tf.make_ndarray(reshape_shape.attr["value"].tensor)) == [-1, 1, 1, loaded.shape.seq_len]


def test_mask_fold_scale_folds_into_query_weights(removed, feeds, reference):
    result, _ = check_pass(rewrite_attention_mask, removed, MaskParams(fold_scale=True), feeds, reference, 1e-5)
    assert result.matches["folded_scales"] == 2
    kernel = "bert/encoder/layer_0/attention/self/query/kernel"
    np.testing.assert_allclose(result.graph.weights[kernel], removed.weights[kernel] / np.sqrt(8), rtol=1e-6)
    nodes = nodes_by_name(result.graph.graph_def)
    assert "bert/encoder/layer_0/attention/self/Mul" not in nodes


def test_mask_bias_value_must_be_finite_in_compute_dtype(removed):
    with pytest.raises(ConfigError, match="not finite in float16"):
        rewrite_attention_mask(removed, MaskParams(bias_value=-1e9, compute_dtype="float16"))
    rewrite_attention_mask(removed, MaskParams(bias_value=-1e9, compute_dtype="bfloat16"))


def test_mask_not_found_names_where_matching_stopped(removed):
    graph = removed.replace(inputs={**removed.inputs, "input_mask": removed.inputs["segment_ids"]})
    with pytest.raises(GraphError, match="no attention site found"):
        rewrite_attention_mask(graph, MaskParams())


@pytest.mark.parametrize("dtype, atol", [("float16", 5e-3), ("bfloat16", 3e-2)])
def test_precision_converts_regions_and_stores_weights_in_compute_dtype(masked, feeds, reference, dtype, atol):
    result, delta = check_pass(apply_precision_map, masked, mixed(dtype), feeds, reference, atol)
    graph = result.graph
    nodes = nodes_by_name(graph.graph_def)
    enum = tf.as_dtype(dtype).as_datatype_enum
    matmuls = [
        n for n in graph.graph_def.node if n.op in ("MatMul", "BatchMatMulV2") and n.name.startswith("bert/encoder/")
    ]
    assert matmuls and all(n.attr["T"].type == enum for n in matmuls), "an fp32 matmul is left in a converted region"
    assert graph.weights["bert/encoder/layer_0/intermediate/dense/kernel"].dtype == tf.as_dtype(dtype).as_numpy_dtype
    assert graph.weights["bert/encoder/layer_0/output/LayerNorm/gamma"].dtype == np.float32
    assert graph.weights["bert/embeddings/word_embeddings"].dtype == np.float32
    float_casts = {n.name for n in graph.graph_def.node if n.op == "Cast" and n.attr["SrcT"].type in FLOAT_TYPES}
    for name in float_casts:
        assert split_input(nodes[name].input[0])[0] not in float_casts, f"two casts in a row at {name}"
    # The mask bias is cast once, not once per layer.
    assert sum(1 for n in graph.graph_def.node if n.op == "Cast" and n.input[0] == f"{SCOPE}/bias") == 1
    assert delta["Cast"] > 0
    assert all(nodes[split_input(t)[0]].op != "Const" for t in graph.outputs.values())


def test_precision_rule_matching_nothing_is_counted(masked):
    params = PrecisionParams((PrecisionRule("no/such/scope/*", (), "float16"),))
    assert apply_precision_map(masked, params).matches == {"scope='no/such/scope/*' -> float16": 0}


def test_precision_rejects_unknown_dtype(masked):
    with pytest.raises(ConfigError, match="dtype must be one of"):
        apply_precision_map(masked, PrecisionParams((PrecisionRule("*", (), "float8"),)))


def test_partition_splits_host_and_device(masked, feeds, reference):
    precise = apply_precision_map(masked, mixed("bfloat16")).graph
    bf16_reference = run_graph(precise, feeds)
    result, delta = check_pass(partition_graph, precise, PartitionParams(), feeds, bf16_reference, 0)
    assert delta == {"Identity": 2}
    boundaries = {b.key: b for b in boundaries_of(result.graph)}
    assert boundaries["embedding_output"].shape == (None, 128, 32) and boundaries["embedding_output"].dtype == "float32"
    assert boundaries["attention_mask"].shape == (None, 1, 1, 128) and boundaries["attention_mask"].dtype == "bfloat16"
    host, device = split_partition(result.graph)
    host_ops = {node.op for node in host.graph_def.node}
    assert "GatherV2" in host_ops and "BatchMatMulV2" not in host_ops
    assert all(node.device == "/device:CPU:0" for node in host.graph_def.node)
    device_names = {node.name for node in device.graph_def.node}
    assert not device_names & {"input_ids", "input_mask", "segment_ids"}
    assert "bert/embeddings/word_embeddings" not in device.weights


def test_partition_unknown_boundary_lists_nearest(masked):
    with pytest.raises(ConfigError, match="nearest node names") as error:
        partition_graph(masked, PartitionParams(("bert/embeddings/LayerNorm/batchnorm/add_9:0",)))
    assert "bert/embeddings/LayerNorm/batchnorm/add_1" in str(error.value)


def test_partition_on_explicit_tensor_names(masked, feeds, reference):
    params = PartitionParams(("bert/embeddings/LayerNorm/batchnorm/add_1:0", f"{SCOPE}/bias:0"))
    result, _ = check_pass(partition_graph, masked, params, feeds, reference, 1e-6)
    assert [b.key for b in boundaries_of(result.graph)] == ["b0", "b1"]


def test_partition_boundary_named_twice_is_refused_by_its_parameters():
    """The plan builds every group's parameters, so the dataclass refuses the value where it enters."""
    with pytest.raises(ConfigError, match=r"partition.boundaries names \['@attention_mask'\] more than once"):
        PartitionParams(("@attention_mask", "@embedding_output", "@attention_mask"))


def test_partition_that_does_not_cut_is_refused(masked):
    with pytest.raises(GraphError, match="still reads serving input"):
        partition_graph(masked, PartitionParams(("@embedding_output",)))


def test_removal_entry_ending_in_a_question_mark_may_match_nothing(removed):
    import types

    from bertc.driver.pipeline import StepFailed, run_step

    def step(*ops):
        return types.SimpleNamespace(name="remove_training_ops", group="removal", params=RemovalParams(ops))

    graph, record = run_step(step("Identity?", "CheckNumerics?"), removed, [])
    assert record["matches"] == {"Identity?": 0, "CheckNumerics?": 0}
    with pytest.raises(StepFailed, match=r"\['CheckNumerics'\] matched nothing"):
        run_step(step("CheckNumerics?", "CheckNumerics"), removed, [])
    with pytest.raises(ConfigError, match="Bogus"):
        remove_training_ops(removed, RemovalParams(("Bogus?",)))
