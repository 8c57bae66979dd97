"""length=pack at static shapes (target=xla): the packed row count bucketed to multiples of token_step and the
batch's longest row to the configured sizes, the pack index computed before the compiled function, one XLA
function per (L, T) pair; the pack mask crossing a partition without asking."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from support.compile import compile_tiny, compose_config
from support.length import not_right_padded, serve
from support.pack import PACK, assert_matches_original, mixed_batches, with_packed

from bertc.evaluate.lengths import synthetic_feeds
from bertc.ir.graph import GraphError, run_graph
from bertc.passes.length.contract import PACK_INDEX, split_length, token_step_of
from bertc.passes.length.dispatch import pack_mask, warm_up_buckets
from bertc.passes.length.modes import pack_shapes
from bertc.passes.length.trim_sequence_length import LengthParams, trim_sequence_length
from bertc.passes.partition.contract import split_partition
from bertc.passes.partition.partition_graph import ALIASES, PACK_MASK_KEY, PartitionParams, partition_graph
from bertc.passes.remove_training_ops import RemovalParams, remove_training_ops
from bertc.passes.rewrite_attention_mask import MaskParams, rewrite_attention_mask
from bertc.targets.serving import Placement
from bertc.targets.xla import PackedXlaBert, xla_module

STEP = 64
STATIC = LengthParams("pack", sizes=(32, 64, 128), token_step=STEP, static_shapes=True)


@pytest.fixture(scope="module")
def masked(loaded):
    return rewrite_attention_mask(remove_training_ops(loaded.graph, RemovalParams()).graph, MaskParams()).graph


@pytest.fixture(scope="module")
def packed(masked):
    return trim_sequence_length(masked, PACK)


@pytest.fixture(scope="module")
def static_packed(masked):
    return trim_sequence_length(masked, STATIC)


@pytest.fixture(scope="module")
def static_module(static_packed):
    return PackedXlaBert(static_packed.graph, 128, Placement(jit_compile=True))


def token_bucket(tokens: int, batch: int, width: int) -> int:
    return min(-(-tokens // STEP) * STEP, batch * width)


def test_padded_rows_change_nothing_and_the_real_rows_are_the_batch_real_tokens(loaded, static_packed):
    graph = static_packed.graph
    assert token_step_of(graph) == STEP and static_packed.matches["buckets"] == 3
    fetch = with_packed(graph).replace(outputs={**with_packed(graph).outputs, "index": f"{PACK_INDEX}:0"})
    for feeds in mixed_batches(loaded.shape.vocab):
        outputs = assert_matches_original(loaded, fetch, feeds)
        lengths = feeds["input_mask"].sum(1)
        width = min(size for size in (32, 64, 128) if size >= lengths.max())
        real = int(lengths.sum())
        assert outputs["packed"].shape == (token_bucket(real, len(lengths), width), loaded.shape.hidden)
        # the first `real` rows are the batch's real tokens, in row order; the pad rows read row 0's [CLS]
        flat = np.flatnonzero(feeds["input_mask"][:, :width].reshape(-1))
        np.testing.assert_array_equal(outputs["index"][:real], flat)
        assert not outputs["index"][real:].any()


def test_second_run_changes_nothing_and_another_step_is_refused(static_packed):
    again = trim_sequence_length(static_packed.graph, STATIC)
    assert again.graph.graph_def == static_packed.graph.graph_def and again.matches == static_packed.matches
    with pytest.raises(GraphError, match=r"length=pack, buckets \[32, 64, 128\], token_step 64\).*token_step 32"):
        trim_sequence_length(static_packed.graph, LengthParams("pack", (32, 64, 128), 32, static_shapes=True))


def test_xla_matches_original_on_mixed_lengths_and_falls_back(loaded, static_module):
    assert static_module.length.dispatch and static_module.token_step == STEP
    for feeds in [*mixed_batches(loaded.shape.vocab), not_right_padded(loaded.shape.vocab)]:
        reference = run_graph(loaded.graph, feeds)["probabilities"]
        np.testing.assert_allclose(serve(static_module, feeds)["probabilities"], reference, atol=1e-5, rtol=0)
    ran = static_module.length.lengths(not_right_padded(loaded.shape.vocab)["input_mask"])
    assert int(ran["length"]) == 128  # the fallback: every position of the full length is a row


def test_batches_in_different_token_buckets_each_run_their_own_shape(loaded, static_module):
    """Same batch size and L bucket (64), T in three buckets: 64 (T=40), 128 (T=100), 192 (T=129, just over)."""
    shapes = []
    for lengths in ([33, 3, 2, 2], [60, 20, 10, 10], [64, 64, 1]):
        feeds = synthetic_feeds(np.array(lengths), 128, loaded.shape.vocab, seed=len(lengths))
        reference = run_graph(loaded.graph, feeds)["probabilities"]
        np.testing.assert_allclose(serve(static_module, feeds)["probabilities"], reference, atol=1e-5, rtol=0)
        shapes.append(token_bucket(sum(lengths), len(lengths), 64))
    assert shapes == [64, 128, 192]
    # the index reaches the compiled function padded to its bucket: a static [T_bucket] there
    feeds = synthetic_feeds(np.array([64, 64, 1]), 128, loaded.shape.vocab, seed=0)
    cut = {key: tf.constant(value[:, :64]) for key, value in feeds.items()}
    (index,) = static_module._index[0](*(cut[key] for key in static_module._index_keys))
    assert index.shape == (192,)


def test_warm_up_compiles_every_pair_a_batch_can_run_at(loaded, static_packed):
    shapes = pack_shapes((32, 64, 128), STEP, 2)
    assert shapes == [(32, 64), (64, 64), (64, 128), (128, 128), (128, 192), (128, 256)]
    for size, tokens in shapes:
        below = max((other for other in (32, 64, 128) if other < size), default=0)
        mask = pack_mask(2, 128, size, tokens, below)
        assert mask.sum() == tokens and below < mask.sum(1).max() <= size
    module = PackedXlaBert(static_packed.graph, 128, Placement(jit_compile=True))
    assert list(warm_up_buckets(module, 2, 128)) == [f"{size}x{tokens}" for size, tokens in shapes]


def test_cpu_embed_crosses_the_pack_mask_without_asking(loaded, packed, static_packed):
    for graph in (packed.graph, static_packed.graph):
        parted = partition_graph(graph, PartitionParams())
        assert parted.matches == {**dict.fromkeys(ALIASES, 1), "bertc/length/pack/mask:0": 1}
        again = partition_graph(parted.graph, PartitionParams())
        assert again.graph.graph_def == parted.graph.graph_def
        _, device = split_partition(split_length(parted.graph)[1])
        assert set(device.inputs) == {"embedding_output", "attention_mask", PACK_MASK_KEY}
    # the mask given by hand, as before: one crossing, under the key the user's list gives it
    by_hand = partition_graph(packed.graph, PartitionParams((*ALIASES, "bertc/length/pack/mask:0"))).graph
    assert set(split_partition(split_length(by_hand)[1])[1].inputs) == {"embedding_output", "attention_mask", "b2"}
    module = PackedXlaBert(parted.graph, 128, Placement(jit_compile=True))
    for feeds in [*mixed_batches(loaded.shape.vocab)[:2], not_right_padded(loaded.shape.vocab)]:
        reference = run_graph(loaded.graph, feeds)["probabilities"]
        np.testing.assert_allclose(serve(module, feeds)["probabilities"], reference, atol=1e-5, rtol=0)


def test_xla_refuses_a_pack_graph_built_for_dynamic_shapes(packed):
    from bertc.targets.base import TargetOptions

    with pytest.raises(GraphError, match="length.token_step"):
        xla_module(packed.graph, TargetOptions("xla", "cpu", batch_size=8, seq_len=128))


def test_config_buckets_pack_on_xla_only():
    from bertc.driver.plan import build_plan

    params = build_plan(compose_config(["length=pack", "target=xla"])).step_params("length")
    assert params.static_shapes and params.sizes == (64, 128) and params.token_step == 64
    assert len(pack_shapes(params.sizes, params.token_step, 8)) == 23  # what conf/length/pack.yaml says
    assert not build_plan(compose_config(["length=pack"])).step_params("length").static_shapes


@pytest.mark.slow
def test_runner_compiles_packed_on_xla(tiny_model_dir, tmp_path):
    report = compile_tiny(
        tiny_model_dir,
        tmp_path,
        ["length=pack", "target=xla", "length.sizes=[64]", "length.token_step=256", "verify.batches=4"],
    )
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-5
    assert report["length"]["compiled_shapes"] == ["64x256", "64x512", "128x256", "128x512", "128x768", "128x1024"]


def test_the_graphs_arrays_are_freed_before_the_packed_functions_compile(tiny_model_dir, tmp_path, monkeypatch):
    """PackedXlaBert splits the graph again for the pack index and keeps no weight array: XLA compiles its (L, T)
    functions beside the variables alone (as tests/driver/test_compile.py checks for the other builds)."""
    from support.compile import watch_weights_at_compile

    seen = watch_weights_at_compile(monkeypatch)
    overrides = ["length=pack", "target=xla", "length.sizes=[128]", "length.token_step=1024", "verify=off"]
    report = compile_tiny(tiny_model_dir, tmp_path / "run", overrides)
    assert report["length"]["compiled_shapes"] == ["128x1024"]
    assert len(seen["arrays"]) > 10
    assert seen["alive_at_compile"] == 0, f"{seen['alive_at_compile']} weight arrays still held while XLA compiles"
