"""length=trim|buckets: the cut graph matches the original on padded batches of mixed lengths, falls back
to the full length for masks that are not right-padded, and target=xla runs each bucket's own function."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tensorflow as tf
from support.compile import compile_tiny, compose_config
from support.length import SIZES, expected_length, mixed_batches, not_right_padded, serve
from support.precision import mixed

from bertc.errors import ConfigError
from bertc.evaluate.lengths import mrpc_like_lengths, synthetic_feeds
from bertc.frontends.load import load_saved_model
from bertc.ir.graph import GraphError, check_graph, op_delta, op_histogram, run_graph
from bertc.passes.apply_precision_map import apply_precision_map
from bertc.passes.length.contract import LENGTH, cut_name, split_length
from bertc.passes.length.trim_sequence_length import LengthParams, bucket_sizes, trim_sequence_length
from bertc.passes.partition.partition_graph import PartitionParams, partition_graph
from bertc.passes.remove_training_ops import RemovalParams, remove_training_ops
from bertc.passes.rewrite_attention_mask import MaskParams, rewrite_attention_mask
from bertc.targets.serving import CompiledBert, Placement, warm_up


@pytest.fixture(scope="module")
def masked(loaded):
    removed = remove_training_ops(loaded.graph, RemovalParams()).graph
    return rewrite_attention_mask(removed, MaskParams()).graph


def with_length(graph):
    return graph.replace(outputs={**graph.outputs, "length": f"{LENGTH}:0"})


@pytest.mark.parametrize("mode", ["trim", "buckets"])
def test_cut_graph_matches_original_and_runs_at_the_real_length(loaded, masked, mode):
    params = LengthParams(mode, SIZES if mode == "buckets" else ())
    snapshot = copy.deepcopy(masked.graph_def)
    weights = {name: value.copy() for name, value in masked.weights.items()}
    result = trim_sequence_length(masked, params)
    check_graph(result.graph)
    assert masked.graph_def == snapshot, "the pass mutated its input graph"
    assert all(np.array_equal(masked.weights[name], value) for name, value in weights.items())
    sizes = bucket_sizes(SIZES, 128) if mode == "buckets" else ()
    for feeds in mixed_batches(loaded.shape.vocab):
        reference = run_graph(loaded.graph, feeds)
        outputs = run_graph(with_length(result.graph), feeds)
        assert int(outputs["length"]) == expected_length(feeds["input_mask"], sizes)
        for key in ("probabilities", "logits"):
            np.testing.assert_allclose(outputs[key], reference[key], atol=1e-5, rtol=0)


def test_op_delta_and_what_was_rewired(loaded, masked):
    result = trim_sequence_length(masked, LengthParams("trim"))
    delta = op_delta(op_histogram(masked.graph_def), op_histogram(result.graph.graph_def))
    # 3 input cuts + head/tail/first-column mask checks = 6 Slices; 2 layers x 3 head reshapes, 3 hidden
    # reshapes, 2 context reshapes [B*S,H] (Mul), the position Slice, [1,S,H] and the bias reshape: 14.
    assert delta["Slice"] == 6 and delta["SelectV2"] == 1 and delta["Max"] == 1
    assert result.matches == {"sequence_constants": 14, "inputs_cut": 3}
    names = {node.name for node in result.graph.graph_def.node}
    assert {cut_name(key) for key in ("input_ids", "input_mask", "segment_ids")} <= names
    # Nothing but the length computation and the cuts reads the serving inputs any more.
    readers = {node.name for node in result.graph.graph_def.node for ref in node.input if ref in result.graph.inputs}
    assert all(name.startswith("bertc/length/") for name in readers), readers


def test_not_right_padded_mask_takes_the_full_length_path(loaded, masked):
    feeds = not_right_padded(loaded.shape.vocab)
    reference = run_graph(loaded.graph, feeds)
    for params in (LengthParams("trim"), LengthParams("buckets", SIZES)):
        outputs = run_graph(with_length(trim_sequence_length(masked, params).graph), feeds)
        assert int(outputs["length"]) == 128
        np.testing.assert_allclose(outputs["probabilities"], reference["probabilities"], atol=1e-5, rtol=0)
    # An all-padding row and a non-binary mask fall back too.
    for change in ("empty_row", "two"):
        feeds = synthetic_feeds(np.array([10, 20]), 128, loaded.shape.vocab, seed=4)
        if change == "empty_row":
            feeds["input_mask"][0] = 0
        else:
            feeds["input_mask"][0, 0] = 2
        outputs = run_graph(with_length(trim_sequence_length(masked, LengthParams("trim")).graph), feeds)
        assert int(outputs["length"]) == 128, change


def test_second_run_changes_nothing_and_other_params_are_refused(masked):
    once = trim_sequence_length(masked, LengthParams("buckets", SIZES))
    again = trim_sequence_length(once.graph, LengthParams("buckets", SIZES))
    assert again.graph.graph_def == once.graph.graph_def and again.matches == once.matches
    with pytest.raises(GraphError, match="already length-polymorphic"):
        trim_sequence_length(once.graph, LengthParams("trim"))


def test_mask_original_ones_fill_follows_the_cut(loaded):
    removed = remove_training_ops(loaded.graph, RemovalParams()).graph
    result = trim_sequence_length(removed, LengthParams("trim"))
    feeds = mixed_batches(loaded.shape.vocab)[1]
    outputs = run_graph(with_length(result.graph), feeds)
    assert int(outputs["length"]) == 64
    np.testing.assert_allclose(outputs["probabilities"], run_graph(loaded.graph, feeds)["probabilities"], atol=1e-5)


def test_sequence_length_equal_to_the_hidden_size_is_refused(tmp_path):
    from bertc.model.export import export_model

    out = tmp_path / "model"
    export_model("size", "tiny", out, seq_len=32, num_labels=2, seed=0)  # tiny: hidden 32
    graph = load_saved_model(out).graph
    with pytest.raises(GraphError, match="ambiguous"):
        trim_sequence_length(graph, LengthParams("trim"))


def test_partition_and_mixed_precision_after_the_cut(loaded, masked):
    cut = trim_sequence_length(masked, LengthParams("buckets", SIZES)).graph
    converted = apply_precision_map(cut, mixed("float16")).graph
    parted = partition_graph(converted, PartitionParams()).graph
    length_part, body = split_length(parted)
    assert length_part is not None and set(body.inputs) == {"input_ids", "input_mask", "segment_ids"}
    for feeds in mixed_batches(loaded.shape.vocab)[:3]:
        np.testing.assert_allclose(
            run_graph(parted, feeds)["probabilities"],
            run_graph(loaded.graph, feeds)["probabilities"],
            atol=5e-3,
            rtol=0,
        )


# ---- targets -----------------------------------------------------------------------------------


def branch_input_widths(module) -> list[int]:
    """The static width each branch of the serving function's bucket switch hands its jit function."""
    concrete = module.serve.get_concrete_function()
    case = next(op for op in concrete.graph.get_operations() if op.type in ("Case", "StatelessCase"))
    widths = []
    for branch in case.get_attr("branches"):
        graph = concrete.graph._functions[branch.name].graph  # TF has no public accessor for branch graphs
        calls = [
            op
            for op in graph.get_operations()
            if op.type in ("StatefulPartitionedCall", "PartitionedCall") and op.node_def.attr["_XlaMustCompile"].b
        ]
        assert len(calls) == 1, branch.name
        # input_ids [B, L], or with cpu_embed the embedding output [B, L, H]: dim 1 is the width.
        widths.append({tensor.shape[1] for tensor in calls[0].inputs if tensor.shape.rank in (2, 3)}.pop())
    return widths


@pytest.mark.parametrize("partition", ["none", pytest.param("cpu_embed", marks=pytest.mark.slow)])
def test_xla_buckets_one_function_per_bucket_used_for_its_lengths(loaded, masked, partition):
    graph = trim_sequence_length(masked, LengthParams("buckets", SIZES)).graph
    if partition == "cpu_embed":
        graph = partition_graph(graph, PartitionParams()).graph
    module = CompiledBert(graph, 128, Placement(jit_compile=True))
    compile_seconds = warm_up(module, 2, 128)
    assert list(compile_seconds) == ["32", "64", "96", "128"]
    assert branch_input_widths(module) == list(SIZES)
    for feeds in mixed_batches(loaded.shape.vocab) + [not_right_padded(loaded.shape.vocab)]:
        lengths = module.length.lengths(feeds["input_mask"])
        right_padded = not np.any(np.diff(feeds["input_mask"], axis=1) > 0)
        width = expected_length(feeds["input_mask"], SIZES) if right_padded else 128
        assert int(lengths["length"]) == width and SIZES[int(lengths["bucket_index"])] == width
        np.testing.assert_allclose(
            serve(module, feeds)["probabilities"],
            run_graph(loaded.graph, feeds)["probabilities"],
            atol=1e-5,
            rtol=0,
        )


def test_tf_trim_serves_mixed_lengths(loaded, masked):
    module = CompiledBert(trim_sequence_length(masked, LengthParams("trim")).graph, 128, Placement())
    for feeds in mixed_batches(loaded.shape.vocab):
        assert int(module.length.lengths(feeds["input_mask"])["length"]) == feeds["input_mask"].sum(1).max()
        np.testing.assert_allclose(
            serve(module, feeds)["probabilities"],
            run_graph(loaded.graph, feeds)["probabilities"],
            atol=1e-5,
            rtol=0,
        )
    assert not module.length.dispatch  # dynamic shapes: the graph's own cut, no switch


# ---- config and the runner ---------------------------------------------------------------------


def length_params(cfg):
    from bertc.driver.plan import build_plan

    return build_plan(cfg).step_params("length")


def test_config_group_and_target_checks():
    assert length_params(compose_config([])) is None  # the default: full
    assert length_params(compose_config(["length=trim"])).mode == "trim"
    assert length_params(compose_config(["length=buckets", "target=xla", "length.sizes=[16,64]"])) == LengthParams(
        "buckets", (16, 64)
    )
    for overrides, message in (
        (["length=trim", "target=xla"], "dynamic shapes"),
        (["length=trim", "target=neuron"], "dynamic shapes"),
        (["length=buckets", "length.sizes=[]"], "at least one size"),
    ):
        with pytest.raises(ConfigError, match=message):
            length_params(compose_config(overrides))


def test_mrpc_like_lengths_have_mrpcs_distribution():
    lengths = mrpc_like_lengths(4096, 128, seed=0)
    assert abs(lengths.mean() - 53) < 2 and abs(np.percentile(lengths, 90) - 70) < 2 and lengths.max() <= 86
    assert mrpc_like_lengths(64, 48, seed=1).max() <= 48


@pytest.mark.slow
def test_runner_reports_buckets_and_lengths_ran(tiny_model_dir, tmp_path):
    report = compile_tiny(tiny_model_dir, tmp_path, ["target=xla", "length=buckets", "verify.batches=4"])
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-5
    assert report["length"]["buckets"] == [32, 64, 96, 128]
    assert set(report["length"]["compile_seconds"]) == {"32", "64", "96", "128"}
    assert sum(report["length"]["ran"].values()) == 4 and len(report["length"]["ran"]) >= 3  # verify covers buckets
    assert [step["name"] for step in report["steps"]][2] == "trim_sequence_length"
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    assert "bertc_length" in loaded.signatures


def test_bench_step_measures_a_real_length_mix():
    from bertc.evaluate.bench import benchmark_lengths

    seen: list[int] = []

    def model(feeds):
        seen.append(int(feeds["input_mask"].sum(1).max()))
        return {}

    result = benchmark_lengths(
        {"original": model, "compiled": model},
        128,
        30522,
        {"batch_sizes": (1, 8), "rounds": 1, "seconds": 0.01, "warmup": 1},
    )
    assert result["source"].startswith("synthetic MRPC-like") and 40 < result["mean_longest_row"] <= 86
    assert set(result["compiled"]["throughput"]) == {"1", "8"} and "p50" in result["compiled"]["latency_ms"]
    assert max(seen) <= 86 and len(set(seen)) > 3, "the batches cycle through varied real lengths"
