"""target=stablehlo with length=buckets on the tiny model: one module per (batch size, bucket), the batch's length
computed by bertc.runtime.stablehlo (NumPy, no TensorFlow) as the graph computes it, parity with the original on padded
batches of mixed lengths, the full-length fallback, each bucket's module used for its lengths, and the runtime's
checks extended to every bucket module. Tests that run modules need JAX (skipped without it)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.compile import compile_tiny, compose_config
from support.length import MIXED_LENGTHS, SIZES, expected_length, mixed_batches, not_right_padded
from support.runtime import assert_refused, cli, manifest, write_manifest

from bertc.evaluate.lengths import synthetic_feeds
from bertc.frontends.load import load_saved_model
from bertc.ir.graph import run_graph
from bertc.passes.length.rule import batch_length
from bertc.targets.serving import ServedSavedModel

needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
BATCH_SIZES = (1, 8)


@pytest.fixture(scope="module", params=["none", pytest.param("cpu_embed", marks=pytest.mark.slow)])
def build(request, tiny_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny model, target=stablehlo length=buckets, modules for batch 1 and 8 (partition none or cpu_embed)."""
    run_dir = tmp_path_factory.mktemp(f"stablehlo-buckets-{request.param}")
    report = compile_tiny(
        tiny_model_dir,
        run_dir,
        [
            "target=stablehlo",
            "length=buckets",
            "target.batch_sizes=[8,1]",
            f"partition={request.param}",
            "verify.batches=2",
        ],
    )
    return run_dir / "model", report


@pytest.fixture(scope="module")
def original(tiny_model_dir):
    graph = load_saved_model(tiny_model_dir).graph
    return lambda feeds: run_graph(graph, feeds)


@pytest.fixture(scope="module")
def runtime(build):
    from bertc.runtime.stablehlo import Runtime

    return Runtime(build[0], platform="cpu")


def test_one_module_per_batch_size_and_bucket_and_the_manifest_lists_the_buckets(build):
    model, report = build
    folder = model / "stablehlo"
    value = manifest(folder)
    assert value["format"] == "bertc-stablehlo-2"
    assert value["length"]["mode"] == "buckets" and value["length"]["sizes"] == list(SIZES)
    assert sorted((entry["batch_size"], entry["seq_len"]) for entry in value["modules"]) == sorted(
        (batch, width) for batch in BATCH_SIZES for width in SIZES
    )
    for entry in value["modules"]:
        batch, width = entry["batch_size"], entry["seq_len"]
        text = (folder / entry["text"]).read_text()
        assert entry["text"] == f"device_b{batch}_s{width}.mlir"
        assert f"module @bertc_device_b{batch}_s{width}" in text and "custom_call" not in text
        if value["host"] is None:  # the module reads the serving inputs cut to its bucket
            assert entry["inputs"] == [[batch, width]] * 3 and f"tensor<{batch}x{width}xi32>" in text
        else:  # the embedding output [B, L, H] and the mask bias [B, 1, 1, L]
            assert entry["inputs"] == [[batch, 1, 1, width], [batch, width, 32]]
            assert f"tensor<{batch}x{width}x32xf32>" in text
        assert f"tensor<{batch}x128x" not in text or width == 128, "no full-length tensor in a smaller bucket"
    # Every bucket has a reference batch that the TensorFlow build ran at that width, and one falls back.
    assert [batch["width"] for batch in value["reference"]["batches"]] == [*SIZES, 128]
    assert report["length"]["buckets"] == list(SIZES) and set(report["length"]["compile_seconds"]) == set(
        map(str, SIZES)
    )
    assert report["parity"]["passed"] and sum(report["length"]["ran"].values()) == 2


@needs_jax
def test_runtime_matches_the_original_on_padded_batches_of_mixed_lengths(build, runtime, original):
    compiled = ServedSavedModel(build[0])
    feeds_list = mixed_batches(30522)
    # 11 rows: a chunk of 8 and a chunk of 3 (padded to 8), each at its own width; and single rows.
    feeds_list.append(synthetic_feeds(np.array([3, 9, 30, 2, 5, 7, 31, 12, 90, 4, 60]), 128, 30522, seed=5))
    feeds_list.append(synthetic_feeds(np.array([77]), 128, 30522, seed=6))
    for feeds in feeds_list:
        ours, reference = runtime(feeds), original(feeds)
        for key in ("probabilities", "logits"):
            np.testing.assert_allclose(ours[key], reference[key], atol=1e-5, rtol=0, err_msg=key)
        np.testing.assert_allclose(ours["probabilities"], compiled(feeds)["probabilities"], atol=1e-5, rtol=0)
    check = runtime.self_check()
    assert check["passed"] and check["widths"] == [*SIZES, 128] and not check["width_disagreements"]


@needs_jax
def test_each_buckets_module_is_used_for_its_lengths(runtime):
    for lengths in MIXED_LENGTHS:
        feeds = synthetic_feeds(np.array(lengths), 128, 30522, seed=1)
        before = runtime.ran.copy()
        runtime(feeds)
        width = expected_length(feeds["input_mask"], SIZES)
        assert runtime.ran - before == {(8, width): 1}, lengths
    assert {width for _, width in runtime.ran} == set(SIZES)
    # A batch past the largest module: each chunk runs at the width of its own real rows, not its padding rows.
    before = runtime.ran.copy()
    runtime(synthetic_feeds(np.array([5] * 8 + [100, 3, 3]), 128, 30522, seed=2))  # chunks of 8 and 3 (padded)
    assert runtime.ran - before == {(8, 32): 1, (8, 128): 1}
    before = runtime.ran.copy()
    runtime(synthetic_feeds(np.array([40]), 128, 30522, seed=3))
    assert runtime.ran - before == {(1, 64): 1}
    assert {key for key in runtime.compile_seconds} <= {(batch, width) for batch in BATCH_SIZES for width in SIZES}


@needs_jax
def test_a_mask_that_is_not_right_padded_runs_at_the_full_length(runtime, original):
    feeds = not_right_padded(30522)
    before = runtime.ran.copy()
    ours = runtime(feeds)
    assert runtime.ran - before == {(8, 128): 1}
    np.testing.assert_allclose(ours["probabilities"], original(feeds)["probabilities"], atol=1e-5, rtol=0)
    for change in ("empty_row", "two", "first_is_padding"):
        feeds = synthetic_feeds(np.array([10, 20]), 128, 30522, seed=4)
        row = {"empty_row": (0, slice(None)), "two": (0, 0), "first_is_padding": (1, 0)}[change]
        feeds["input_mask"][row] = 2 if change == "two" else 0
        assert runtime.lengths(feeds["input_mask"])["length"] == 128, change


def test_the_runtimes_length_rule_is_the_graphs(build):
    """The NumPy rule against the compiled model's own bertc_length signature, on random masks of every kind."""
    compiled = ServedSavedModel(build[0])
    rng = np.random.default_rng(0)
    for trial in range(40):
        rows = int(rng.integers(1, 6))
        mask = synthetic_feeds(rng.integers(1, 129, rows), 128, 1000, seed=trial)["input_mask"]
        if trial % 4 == 1:
            mask[rng.integers(rows), rng.integers(1, 128)] = 1  # may rise after a 0
        elif trial % 4 == 2:
            mask[rng.integers(rows), 0] = int(rng.choice([0, 2]))
        theirs = {key: int(value) for key, value in compiled.lengths(mask).items()}
        assert batch_length(mask, SIZES) == theirs, (trial, mask.sum(1))


@pytest.fixture
def artifact(build, tmp_path) -> Path:
    folder = tmp_path / "artifact"
    shutil.copytree(build[0] / "stablehlo", folder)
    return folder


def _module(value: dict, batch: int, width: int) -> dict:
    return next(entry for entry in value["modules"] if (entry["batch_size"], entry["seq_len"]) == (batch, width))


@needs_jax
def test_a_changed_bucket_module_is_refused_by_its_digest(artifact):
    from bertc.runtime.stablehlo import Runtime, ServingError

    entry = _module(manifest(artifact), 8, 64)
    other = _module(manifest(artifact), 8, 32)
    shutil.copy(artifact / other["bytecode"], artifact / entry["bytecode"])  # the 32 module under the 64 name
    shutil.copy(artifact / other["text"], artifact / entry["text"])
    runtime = Runtime(artifact, platform="cpu")
    runtime(synthetic_feeds(np.array([10]), 128, 30522, seed=0))  # other buckets still serve
    with pytest.raises(ServingError, match=r"batch-8 length-64 module: .*does not match its sha256"):
        runtime(synthetic_feeds(np.array([50, 3]), 128, 30522, seed=0))


def _edit(folder: Path, edit) -> None:
    value = manifest(folder)
    edit(value)
    write_manifest(folder, value)


BROKEN_BUCKET_MANIFESTS = {
    "a bucket's module missing": (
        lambda value: value["modules"].remove(_module(value, 1, 96)),
        ["not one per batch size [1, 8] and width [32, 64, 96, 128]"],
    ),
    "buckets not ending at seq_len": (
        lambda value: value["length"].update(sizes=[32, 64, 96]),
        ["ending at seq_len 128"],
    ),
    "buckets out of order": (
        lambda value: value["length"].update(sizes=[64, 32, 96, 128]),
        ["not ascending"],
    ),
    "no length section": (lambda value: value.update(length=None), ["needs a length section"]),
    "a module at a width that is no bucket": (
        lambda value: _module(value, 8, 64).update(seq_len=80),
        ["length-80 module takes (80)"],
    ),
    "a module input of another width": (
        lambda value: _module(value, 8, 64)["inputs"].__setitem__(0, [8, 128] + _module(value, 8, 64)["inputs"][0][2:]),
        ["batch-8 length-64 module's input", "is [8, 128"],
    ),
    "a module file without digest": (
        lambda value: _module(value, 1, 32).pop("bytecode_sha256"),
        ["batch-1 length-32 module's bytecode file has no sha256"],
    ),
    "a reference batch without its width": (
        lambda value: value["reference"]["batches"][0].update(width="32"),
        ["reference width is '32'"],
    ),
}


@needs_jax
@pytest.mark.parametrize("case", list(BROKEN_BUCKET_MANIFESTS))
def test_broken_bucket_manifest_gives_a_clean_error(artifact, capsys, case):
    edit, words = BROKEN_BUCKET_MANIFESTS[case]
    _edit(artifact, edit)
    if case == "a reference batch without its width":  # the artifact loads; --check refuses the reference
        code, _, err = cli(artifact, "--check", capsys=capsys)
        assert code == 2 and all(word in err for word in words), err
        return
    assert_refused(artifact, capsys, *words)


@needs_jax
def test_check_fails_when_a_reference_width_is_not_the_runtimes(artifact, capsys):
    _edit(artifact, lambda value: value["reference"]["batches"][0].update(width=64))
    code, out, _ = cli(artifact, "--check", capsys=capsys)
    assert code == 1 and "FAILED" in out and "ran at width 32, the TensorFlow build ran it at 64" in out, out


def test_stablehlo_and_neuron_take_buckets():
    from bertc.driver.plan import build_plan

    for target in ("stablehlo", "neuron"):
        plan = build_plan(compose_config(["length=buckets", f"target={target}"]))
        assert plan.step_params("length").mode == "buckets"
