"""length=pack: the packed graph matches the original on batches of mixed real lengths, its layers run on
exactly the batch's real tokens, it falls back to the full length for masks that are not right-padded, and
it composes with fold_scale, mixed_bf16, partition=cpu_embed (the pack mask crossing on its own) and target=tf."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from support.compile import compile_tiny, compose_config
from support.length import not_right_padded, serve
from support.pack import PACK, assert_matches_original, mixed_batches, with_packed
from support.precision import mixed

from bertc.errors import ConfigError
from bertc.evaluate.lengths import synthetic_feeds
from bertc.frontends.load import load_saved_model
from bertc.ir.graph import GraphError, check_graph, op_delta, op_histogram, run_graph
from bertc.passes.apply_precision_map import apply_precision_map
from bertc.passes.length.contract import PACK_MASK, is_packed, split_length
from bertc.passes.length.trim_sequence_length import LengthParams, trim_sequence_length
from bertc.passes.partition.contract import split_partition
from bertc.passes.partition.partition_graph import ALIASES, PartitionParams, partition_graph
from bertc.passes.remove_training_ops import RemovalParams, remove_training_ops
from bertc.passes.rewrite_attention_mask import MaskParams, rewrite_attention_mask
from bertc.targets.serving import CompiledBert, Placement


@pytest.fixture(scope="module")
def removed(loaded):
    return remove_training_ops(loaded.graph, RemovalParams()).graph


@pytest.fixture(scope="module")
def masked(removed):
    return rewrite_attention_mask(removed, MaskParams()).graph


@pytest.fixture(scope="module")
def packed(masked):
    return trim_sequence_length(masked, PACK)


def test_packed_graph_matches_original_and_runs_on_the_real_tokens(loaded, masked, packed):
    snapshot = copy.deepcopy(masked.graph_def)
    weights = {name: value.copy() for name, value in masked.weights.items()}
    result = trim_sequence_length(masked, PACK)
    check_graph(result.graph)
    assert masked.graph_def == snapshot, "the pass mutated its input graph"
    assert all(np.array_equal(masked.weights[name], value) for name, value in weights.items())
    assert is_packed(result.graph) and result.matches == packed.matches
    for feeds in mixed_batches(loaded.shape.vocab):
        outputs = assert_matches_original(loaded, with_packed(result.graph), feeds)
        real_tokens = int(feeds["input_mask"].sum())
        assert outputs["packed"].shape == (real_tokens, loaded.shape.hidden), feeds["input_mask"].sum(1)


def test_op_delta_and_what_was_packed(masked, packed):
    trimmed = trim_sequence_length(masked, LengthParams("trim")).graph
    delta = op_delta(op_histogram(trimmed.graph_def), op_histogram(packed.graph.graph_def))
    # 2 layers: the entry, 3 projections scattered back per row and 1 context packed per layer, the [CLS] rows
    assert delta["GatherV2"] == 1 + 2 * 3 + 2 + 1 and delta["Where"] == 1 and delta["Cumsum"] == 1
    # the pooler's [B, L, H] reshape, first-token slice and squeeze are gone: it reads the gathered [CLS] rows
    assert delta["Squeeze"] == -1 and delta["Reshape"] == 3 - 1
    assert packed.matches == {
        "sequence_constants": 13,
        "inputs_cut": 3,
        "packed_inputs": 1,
        "attention_unpacks": 6,
        "context_packs": 2,
        "first_token_gathers": 1,
    }


def test_second_run_changes_nothing_and_other_length_modes_are_refused(masked, packed):
    again = trim_sequence_length(packed.graph, PACK)
    assert again.graph.graph_def == packed.graph.graph_def and again.matches == packed.matches
    with pytest.raises(GraphError, match=r"already length-polymorphic \(length=pack\)"):
        trim_sequence_length(packed.graph, LengthParams("trim"))
    trimmed = trim_sequence_length(masked, LengthParams("trim")).graph
    with pytest.raises(GraphError, match=r"already length-polymorphic \(length=trim\).*length=pack"):
        trim_sequence_length(trimmed, PACK)


def test_mask_that_is_not_right_padded_runs_every_position(loaded, packed):
    graph = with_packed(packed.graph)
    feeds = not_right_padded(loaded.shape.vocab)
    outputs = assert_matches_original(loaded, graph, feeds)
    assert outputs["packed"].shape[0] == 3 * 128
    for change in ("empty_row", "two"):  # an all-padding row, a value other than 0/1
        feeds = synthetic_feeds(np.array([10, 20]), 128, loaded.shape.vocab, seed=4)
        if change == "empty_row":
            feeds["input_mask"][0] = 0
        else:
            feeds["input_mask"][0, 0] = 2
        outputs = assert_matches_original(loaded, graph, feeds)
        assert outputs["packed"].shape[0] == 2 * 128, change


def test_mask_original_and_fold_scale(loaded, removed):
    for params in (None, MaskParams(fold_scale=True)):
        graph = removed if params is None else rewrite_attention_mask(removed, params).graph
        result = trim_sequence_length(graph, PACK).graph
        for feeds in mixed_batches(loaded.shape.vocab)[:3]:
            assert_matches_original(loaded, result, feeds)


def test_mixed_bf16_after_packing_converts_the_packed_layers(loaded, packed):
    result = apply_precision_map(packed.graph, mixed("bfloat16"))
    converted = result.details["converted_roles"]
    # the roles see through the pack gathers: attention and FFN on [T, H] are found and converted
    assert {"attention_projection", "attention_context", "attention_output", "ffn_in", "gelu", "ffn_out"} <= set(
        converted
    )
    for feeds in mixed_batches(loaded.shape.vocab)[:3]:
        assert_matches_original(loaded, result.graph, feeds, atol=2e-2)


def test_cpu_embed_crosses_the_pack_mask_on_its_own(loaded, packed):
    parted = partition_graph(packed.graph, PartitionParams()).graph
    assert partition_graph(packed.graph, PartitionParams((*ALIASES, f"{PACK_MASK}:0"))).matches[f"{PACK_MASK}:0"] == 1
    _, body = split_length(parted)
    host, device = split_partition(body)
    assert set(device.inputs) == {"embedding_output", "attention_mask", "pack_mask"}  # the pack mask, added
    module = CompiledBert(parted, 128, Placement())
    for feeds in mixed_batches(loaded.shape.vocab)[:3]:
        reference = run_graph(loaded.graph, feeds)["probabilities"]
        np.testing.assert_allclose(serve(module, feeds)["probabilities"], reference, atol=1e-5, rtol=0)


def test_tf_target_serves_packed_batches(loaded, packed):
    module = CompiledBert(packed.graph, 128, Placement())
    assert not module.length.dispatch
    for feeds in [*mixed_batches(loaded.shape.vocab), not_right_padded(loaded.shape.vocab)]:
        reference = run_graph(loaded.graph, feeds)["probabilities"]
        np.testing.assert_allclose(serve(module, feeds)["probabilities"], reference, atol=1e-5, rtol=0)


def length_params(cfg):
    from bertc.driver.plan import build_plan

    return build_plan(cfg).step_params("length")


def test_config_and_static_shape_targets_refused_before_any_work():
    assert length_params(compose_config(["length=pack"])).mode == "pack"
    # target=xla's packed shapes: tests/targets/test_pack_static.py
    assert length_params(compose_config(["length=pack", "target=xla"])).static_shapes
    for target in ("stablehlo", "neuron"):
        with pytest.raises(ConfigError, match=rf"length=pack on target={target}: .* use length=buckets"):
            length_params(compose_config(["length=pack", f"target={target}"]))


@pytest.mark.slow
def test_runner_compiles_packed_with_fold_scale(tiny_model_dir, tmp_path):
    report = compile_tiny(tiny_model_dir, tmp_path, ["length=pack", "mask.fold_scale=true", "verify.batches=4"])
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-5
    step = next(step for step in report["steps"] if step["name"] == "trim_sequence_length")
    assert step["matches"]["packed_inputs"] == 1 and step["matches"]["attention_unpacks"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["google_onehot", "hf_tf", "keras_hub_saved_model", "model_garden"])
def test_exporter_dialects_pack_or_are_refused_naming_the_layout(exporter, tmp_path):
    """The google-research layout packs (the one-hot word embedding too); the TF2 exporters' 3-D layers are
    refused, naming the layer input that stays [B, S, H]: never a silent no-op."""
    from support import exporters

    exporters.skip_unless_installed(exporter)
    shape = exporters.SHAPES["L3_H48_A3_C3"]  # intermediate 96: no dimension equals the sequence length 128
    folder = exporters.build(exporter, [shape], tmp_path)[0]
    loaded = load_saved_model(folder)
    graph = rewrite_attention_mask(remove_training_ops(loaded.graph, RemovalParams()).graph, MaskParams()).graph
    if exporter != "google_onehot":
        with pytest.raises(GraphError, match=r"length=pack: the hidden states entering the first layer .* rank 3"):
            trim_sequence_length(graph, PACK)
        return
    result = trim_sequence_length(graph, PACK)
    assert result.matches["attention_unpacks"] == 3 * shape.layers
    feeds = synthetic_feeds(np.array([128, 2, 3, 60]), 128, exporters.VOCAB_SIZE, seed=0)
    outputs = assert_matches_original(loaded, with_packed(result.graph), feeds)
    assert outputs["packed"].shape == (128 + 2 + 3 + 60, shape.hidden)
