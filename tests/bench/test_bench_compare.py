"""bench/compare.py and bench/peers.py's pure logic: the per-batch cut, the two bounds, the warm-up batches, the
timed rounds, the presets and goals, and the Hugging Face folder every peer reads. No peer package is needed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import compare  # noqa: E402  (bench/ is a folder of scripts, put on sys.path above)
import peers  # noqa: E402

from bertc.evaluate.bench import interleaved_rounds  # noqa: E402

CONFIG = {"hidden_size": 8, "intermediate_size": 32, "num_hidden_layers": 2}


def batch(lengths: list[int], seq_len: int = 8) -> dict[str, np.ndarray]:
    """A right-padded batch with these real lengths; ids are 1 + position, so a cut is easy to check."""
    mask = (np.arange(seq_len)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    ids = (np.arange(seq_len, dtype=np.int32)[None, :] + 1) * mask
    return {
        "input_ids": ids,
        "input_mask": mask,
        "segment_ids": np.zeros_like(ids),
        "label_ids": np.zeros(len(lengths)),
    }


def test_cut_to_longest_keeps_the_longest_row_and_drops_only_padding():
    feeds = batch([3, 5, 2])
    cut = peers.cut_to_longest(feeds)
    assert cut["input_ids"].shape == (3, 5)
    assert cut["input_ids"].flags["C_CONTIGUOUS"]
    for key in ("input_ids", "input_mask", "segment_ids"):
        np.testing.assert_array_equal(cut[key], feeds[key][:, :5])
        assert not feeds[key][:, 5:].any()  # nothing real was cut
    assert cut["label_ids"] is feeds["label_ids"]  # 1-D inputs stay as they are
    np.testing.assert_array_equal(peers.row_lengths(cut), [3, 5, 2])


def test_cut_of_a_full_batch_is_the_batch():
    feeds = batch([8, 8])
    assert peers.cut_to_longest(feeds)["input_ids"].shape == (2, 8)


def test_the_bounds_on_made_up_lengths():
    flops = {length: compare.useful_flops(CONFIG, length) for length in (10, 20, 30)}
    rate = 1.0  # GFLOP/s
    batches = [np.array([10, 20]), np.array([30])]
    batch_max = compare.batch_max_bound(CONFIG, batches, rate)
    real_token = compare.real_token_bound(CONFIG, batches, rate)
    assert batch_max == pytest.approx(3 / ((2 * flops[20] + flops[30]) / 1e9))
    assert real_token == pytest.approx(3 / ((flops[10] + flops[20] + flops[30]) / 1e9))
    assert real_token > batch_max  # the padding of the first batch's shorter row is work the real-token bound skips


def test_the_bounds_agree_without_padding_and_scale_with_the_rate():
    batches = [np.array([16, 16]), np.array([24])]
    assert compare.real_token_bound(CONFIG, batches, 2.0) == pytest.approx(
        compare.batch_max_bound(CONFIG, batches, 2.0)
    )
    assert compare.batch_max_bound(CONFIG, batches, 4.0) == pytest.approx(
        2 * compare.batch_max_bound(CONFIG, batches, 2.0)
    )


def test_bounds_per_workload_reads_the_lengths_from_the_masks():
    workloads = {"mix": (2, [batch([2, 6]), batch([4, 4])])}
    result = compare.bounds(CONFIG, workloads, 1.0)["mix"]
    assert result["mean_length_run"] == 5.0
    assert result["mean_length_real"] == 4.0
    lengths = [np.array([2, 6]), np.array([4, 4])]
    assert result["batch_max"] == pytest.approx(compare.batch_max_bound(CONFIG, lengths, 1.0))


def test_warmup_takes_each_distinct_longest_row_once():
    feeds = [batch([3, 5]), batch([5, 1]), batch([7, 2]), batch([4, 7])]
    assert compare.first_of_each_length(feeds) == [0, 2]


class Recorder:
    """A system that records which batch each call got."""

    def __init__(self, name: str, calls: list, static_shape: bool = False):
        self.name, self.calls, self.static_shape = name, calls, static_shape

    def __call__(self, batch) -> None:
        self.calls.append((self.name, batch))


def test_warm_up_calls_each_length_of_a_system_that_takes_a_variable_length():
    calls: list = []
    systems = {"cut": Recorder("cut", calls), "padded": Recorder("padded", calls, static_shape=True)}
    workloads = {"mix": (2, [batch([3, 5]), batch([5, 1]), batch([7, 2])])}
    prepared = {name: {"mix": ["b0", "b1", "b2"]} for name in systems}
    compare.warm_up_systems(systems, prepared, workloads, 1)
    assert calls == [("cut", "b0"), ("cut", "b0"), ("cut", "b2"), ("padded", "b0")]


def test_rounds_rotate_the_order_and_go_on_where_the_last_round_stopped():
    """compare.py times through bertc's loop: with no time set, each (workload, system) gets its 3 calls a round."""
    calls: list = []
    systems = {name: Recorder(name, calls) for name in ("a", "b")}
    feeds = {name: {"mix": [0, 1, 2, 3, 4], "one": [9]} for name in systems}
    logged: list = []
    durations = interleaved_rounds(systems, feeds, {"mix": 0.0, "one": 0.0}, 2, lambda n, d: logged.append(n))
    assert [name for name, _ in calls] == list("aaabbb" * 2 + "bbbaaa" * 2)
    assert [batch for name, batch in calls if name == "a" and batch != 9] == [0, 1, 2, 3, 4, 0]
    assert logged == [0, 1]
    assert [len(calls) for calls in durations["b"]["one"]] == [3, 3]


def test_presets_and_goals_are_data():
    assert set(compare.DEFAULT_CANDIDATES) <= set(compare.PRESETS)
    assert all(overrides.startswith("precision=") and "${" not in overrides for overrides in compare.PRESETS.values())
    assert compare.describe(compare.PRESETS["fp32_pack"]) == "precision=fp32 mask.fold_scale=true length=pack"
    assert set(compare.GOALS) == {"full_length", "real_lengths", "int8"}
    assert all(isinstance(value, float) for goals in compare.GOALS.values() for value in goals.values())


def test_hf_folder_holds_the_seeded_weights_under_hugging_face_names(tmp_path):
    from bertc.model.config import preset
    from bertc.model.sources import read_hf_folder
    from bertc.model.weights import random_weights

    folder = peers.write_hf_folder("tiny", tmp_path / "hf")
    config, weights, labels, has_classifier, _ = read_hf_folder(folder)
    assert (labels, has_classifier, config.hidden_act) == (2, True, "gelu")  # gelu_new: google's tanh form
    expected = random_weights(preset("tiny"), 2, seed=0)
    assert set(weights) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(weights[name], value, err_msg=name)


def test_a_peer_without_its_package_or_its_build_is_missing_not_an_error(tmp_path):
    with pytest.raises(peers.Missing, match="not installed: surely_absent_package_42 .pip install it."):
        peers.require("surely_absent_package_42", hint="pip install it")
    settings = {"threads": 0, "ort_spinning": "default"}
    for name in ("onnxruntime", "onnxruntime_int8", "ctranslate2", "ctranslate2_int8"):
        with pytest.raises(peers.Missing):  # its package is absent, or its build step left nothing in tmp_path
            peers.PEERS[name](tmp_path, settings)


def test_an_error_fits_one_table_cell():
    assert compare.one_line("bertc exit 2: /x\nerror: a | b\n") == "bertc exit 2: /x error: a / b"
    assert len(compare.one_line("y" * 1000)) == 300
