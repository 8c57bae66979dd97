"""target=stablehlo and bertc.runtime.stablehlo on the tiny model: modules at two batch sizes, the runner on JAX's CPU
against the TensorFlow build (fp32, fp16, bf16), padding to a compiled batch size, the host recipe,
regenerated weights, and bench/gpu.py's tiny mode. Tests that run modules need JAX (skipped without it)."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from support.compile import compose_config

from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan
from bertc.errors import ConfigError
from bertc.evaluate.batches import synthetic_batches
from bertc.evaluate.verify import GATES
from bertc.targets.serving import ServedSavedModel

needs_jax = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="JAX is not installed (pip install 'bertc[runtime]')"
)
BUILDS = {
    # name: (overrides, verify gate)
    "fp32": (["precision=fp32"], "fp32"),
    "mixed": (["precision=mixed", "partition=cpu_embed"], "fp16"),
    "mixed_bf16": (["precision=mixed_bf16", "partition=cpu_embed", "mask.fold_scale=true"], "bf16"),
}


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    """The tiny preset (seeded weights, so regenerable) compiled once per precision, modules for batch 1 and 8."""
    result = {}
    for name, (overrides, _) in BUILDS.items():
        run_dir = tmp_path_factory.mktemp(f"stablehlo-{name}")
        cfg = compose_config(
            ["model=tiny", "target=stablehlo", "target.batch_sizes=[8,1]", "bench=off", "verify=off", *overrides]
        )
        code = compile_run(build_plan(cfg), run_dir, Console(file=io.StringIO()))
        report = json.loads((run_dir / "report.json").read_text())
        assert code == 0, report.get("error")
        result[name] = run_dir / "model"
    return result


def manifest_of(model: Path) -> dict:
    return json.loads((model / "stablehlo" / "manifest.json").read_text())


def test_builds_a_module_per_batch_size_beside_the_savedmodel(builds):
    model = builds["fp32"]
    folder = model / "stablehlo"
    manifest = manifest_of(model)
    assert (model / "saved_model.pb").is_file(), "verify and bench measure the XLA SavedModel"
    assert [entry["batch_size"] for entry in manifest["modules"]] == [1, 8]
    for entry in manifest["modules"]:
        text = (folder / entry["text"]).read_text()
        assert f"module @bertc_device_b{entry['batch_size']}" in text and "custom_call" not in text
        assert f"tensor<{entry['batch_size']}x128xi32>" in text, "partition=none: the module reads the serving inputs"
        assert (folder / entry["bytecode"]).read_bytes()[:4] == b"ML\xefR", "a StableHLO portable artifact"
    parameters = manifest["parameters"]
    assert [entry["name"] for entry in parameters if entry["kind"] == "input"] == [
        "input_ids",
        "input_mask",
        "segment_ids",
    ]
    assert manifest["host"] is None and manifest["outputs"][0] == {
        "name": "probabilities",
        "dtype": "float32",
        "shape": [None, 2],
    }
    assert manifest["model_shape"]["layers"] == 2 and manifest["model_shape"]["num_labels"] == 2
    assert manifest["fingerprint"] == json.loads((model.parent / "report.json").read_text())["fingerprint"]


def test_partitioned_build_records_the_host_recipe(builds):
    manifest = manifest_of(builds["mixed_bf16"])
    inputs = {entry["name"]: entry for entry in manifest["parameters"] if entry["kind"] == "input"}
    assert inputs["embedding_output"]["shape"] == [None, 128, 32] and inputs["embedding_output"]["dtype"] == "float32"
    assert inputs["attention_mask"]["shape"] == [None, 1, 1, 128]
    host = manifest["host"]
    assert host["embedding_output"]["word_embeddings"] == "bert/embeddings/word_embeddings"
    assert host["embedding_output"]["layer_norm"]["epsilon"] == pytest.approx(1e-12)
    assert host["attention_mask"] | {"formula": None} == {
        "form": "bias",
        "bias_value": -10000.0,
        "dtype": "bfloat16",
        "shape": [None, 1, 1, 128],
        "formula": None,
    }
    weights = manifest["weights"]["tensors"]
    assert weights["bert/encoder/layer_0/attention/self/query/kernel"]["dtype"] == "bfloat16"
    assert weights["bert/encoder/layer_0/attention/self/query/kernel"]["scale"] == pytest.approx(8**-0.5), (
        "fold_scale replayed"
    )
    assert weights["bert/embeddings/word_embeddings"]["dtype"] == "float32"


@pytest.mark.parametrize("name", list(BUILDS))
def test_regenerated_weights_are_the_saved_ones(builds, name):
    from bertc.runtime.stablehlo import load_weights, regenerate_weights

    manifest = manifest_of(builds[name])
    regenerated, differ = regenerate_weights(manifest)
    saved = load_weights(builds[name])
    assert not differ and sorted(regenerated) == sorted(saved)
    for key, value in saved.items():
        assert regenerated[key].dtype == value.dtype and regenerated[key].tobytes() == value.tobytes(), key


@needs_jax
@pytest.mark.parametrize("name", list(BUILDS))
def test_runtime_on_jax_cpu_matches_the_tensorflow_build(builds, name):
    from bertc.runtime.stablehlo import Runtime

    gate = GATES[BUILDS[name][1]]
    runtime = Runtime(builds[name], platform="cpu")
    compiled = ServedSavedModel(builds[name])
    for batch in synthetic_batches(3, 8, 128, 30522, seed=21):
        ours, theirs = runtime(batch.feeds()), compiled(batch.feeds())
        assert np.abs(ours["probabilities"] - theirs["probabilities"]).max() <= gate
        assert (ours["probabilities"].argmax(-1) == theirs["probabilities"].argmax(-1)).mean() >= 0.85
    check = runtime.self_check()
    assert check["passed"] and check["examples"] == 8


@needs_jax
def test_batch_of_3_runs_on_the_batch_8_module_with_padding(builds):
    from bertc.runtime.stablehlo import Runtime

    runtime = Runtime(builds["fp32"], platform="cpu")
    assert runtime.plan_chunks(3) == [(0, 3, 8)]
    assert runtime.plan_chunks(1) == [(0, 1, 1)]
    assert runtime.plan_chunks(11) == [(0, 8, 8), (8, 11, 8)], (
        "past the largest module: chunks of it, the last one padded"
    )
    feeds = synthetic_batches(1, 11, 128, 30522, seed=4)[0].feeds()
    expected = ServedSavedModel(builds["fp32"])(feeds)
    for rows in (3, 11):
        out = runtime({key: value[:rows] for key, value in feeds.items()})
        assert out["probabilities"].shape == (rows, 2) and out["logits"].shape == (rows, 2)
        np.testing.assert_allclose(out["probabilities"], expected["probabilities"][:rows], atol=GATES["fp32"])
    assert set(runtime.compile_seconds) == {8}, "a module is compiled at its first use"


@needs_jax
def test_runtime_refuses_bad_inputs(builds):
    from bertc.runtime.stablehlo import Runtime, ServingError

    runtime = Runtime(builds["fp32"], platform="cpu")
    feeds = synthetic_batches(1, 2, 128, 30522, seed=4)[0].feeds()
    with pytest.raises(ServingError, match="128"):
        runtime({key: value[:, :64] for key, value in feeds.items()})
    with pytest.raises(ServingError, match=r"input_ids holds ids outside \[0, 30522\)"):
        runtime({**feeds, "input_ids": feeds["input_ids"] + 30522})
    with pytest.raises(ServingError, match="segment_ids"):
        runtime({key: value for key, value in feeds.items() if key != "segment_ids"})


def test_stablehlo_target_needs_batch_sizes():
    with pytest.raises(ConfigError, match="target.batch_sizes"):
        build_plan(compose_config(["target=stablehlo", "target.batch_sizes=[]"]))
    plan = build_plan(compose_config(["target=stablehlo", "target.batch_sizes=[64,1,8,8]"]))
    assert plan.target.params.batch_sizes == (1, 8, 64)
    assert "StableHLO modules for batch sizes [1, 8, 64]" in plan.describe()[-3]


@needs_jax
def test_gpu_bench_tiny_mode_runs_on_cpu(builds, tmp_path):
    """bench/gpu.py as it runs on a GPU machine, on the tiny bundles (modules + manifest, no weights), on the CPU."""
    root = Path(__file__).resolve().parents[2]
    prepare = _load(root / "bench" / "prepare_gpu.py", "prepare_gpu")
    gpu = _load(root / "bench" / "gpu.py", "bench_gpu")
    for name, model in builds.items():
        prepare.bundle(model, tmp_path / "artifacts" / f"tiny-{name}")
    assert not list((tmp_path / "artifacts").rglob("*.safetensors")), "bundles carry no weights"
    summary = gpu.main(
        [
            "--tiny",
            "--artifacts",
            str(tmp_path / "artifacts"),
            "--budget-s",
            "120",
            "--json",
            str(tmp_path / "gpu.json"),
        ]
    )
    ours = [row for row in summary["results"] if row["system"] == "bertc"]
    assert [row["precision"] for row in ours] == ["fp32", "mixed", "mixed_bf16"]
    for row in ours:
        assert row["weights_match_build"] and row["self_check"]["passed"]
        assert set(row["by_batch"]) == {1, 8} and all(entry["throughput"] > 0 for entry in row["by_batch"].values())
    torch_rows = [row for row in summary["results"] if row["system"] == "pytorch"]
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        assert torch_rows and all("error" not in row for row in torch_rows)
    else:
        assert not torch_rows
    assert json.loads((tmp_path / "gpu.json").read_text())["model"] == "tiny"


@needs_jax
def test_gpu_bench_measures_bucketed_bundles_on_mrpc_lengths(tmp_path):
    """prepare_gpu.py --buckets -> bundles with a module per (batch, bucket); bench/gpu.py then runs the mrpc
    workload and each batch runs the bucket its longest real row picks (the widths it ran say so)."""
    from bertc.passes.length.rule import batch_length

    root = Path(__file__).resolve().parents[2]
    prepare = _load(root / "bench" / "prepare_gpu.py", "prepare_gpu")
    gpu = _load(root / "bench" / "gpu.py", "bench_gpu")
    overrides = prepare.length_overrides("32,64,96")
    assert overrides == ["length=buckets", "length.sizes=[32,64,96]"] and prepare.length_overrides("none") == []
    cfg = compose_config(
        ["model=tiny", "target=stablehlo", "target.batch_sizes=[8,1]", "bench=off", "verify=off", *overrides]
    )
    run_dir = tmp_path / "build"
    assert compile_run(build_plan(cfg), run_dir, Console(file=io.StringIO())) == 0
    prepare.bundle(run_dir / "model", tmp_path / "artifacts" / "tiny-fp32")
    summary = gpu.main(
        ["--tiny", "--precisions", "fp32", "--artifacts", str(tmp_path / "artifacts"), "--budget-s", "120"]
    )
    assert summary["workload"] == "mrpc"
    (ours,) = [row for row in summary["results"] if row["system"] == "bertc"]
    assert ours["self_check"]["passed"] and ours["lengths"] == "buckets 32,64,96,128"
    feeds = gpu.feeds_for("mrpc", [1, 8], 128, 30522)  # the masks do not depend on the vocabulary
    sizes = [32, 64, 96, 128]
    widths = {size: {batch_length(batch["input_mask"], sizes)["length"] for batch in feeds[size]} for size in (1, 8)}
    for size in (1, 8):
        assert set(map(int, ours["by_batch"][size]["widths_ran"])) == widths[size]
    assert len(widths[1]) > 1, "single MRPC-like pairs reach more than one bucket"
    for row in (row for row in summary["results"] if row["system"] == "pytorch"):
        assert row["lengths"] in ("padded", "real") and "error" not in row


def test_gpu_bench_ratios_and_table_on_made_up_rows():
    """The GPU summary on rows like a real run leaves: a failed bertc half, errors, skips, missing batch sizes."""
    gpu = _load(Path(__file__).resolve().parents[2] / "bench" / "gpu.py", "bench_gpu")

    def row(system, precision, mode, lengths, **by_batch):
        return {
            "system": system,
            "precision": precision,
            "mode": mode,
            "lengths": lengths,
            "by_batch": {int(key[1:]): value for key, value in by_batch.items()},
        }

    results = [
        row(
            "bertc",
            "mixed",
            "stablehlo/gpu",
            "buckets 32,64,96,128",
            b1={"throughput": 300, "p50_ms": 3.0},
            b128={"throughput": 5000},
        ),
        row("bertc", "-", "failed", "-"),  # the bertc half failed for another bundle
        row(
            "pytorch", "fp16", "eager/cuda", "padded", b1={"throughput": 70, "p50_ms": 14.0}, b128={"throughput": 3500}
        ),
        row("pytorch", "fp16", "compile/dynamic/cuda", "padded", b128={"throughput": 5500}),
        row("pytorch", "fp16", "compile/dynamic/cuda", "real", b128={"throughput": 6250}),
        {**row("pytorch", "fp16", "compile/dynamic/cuda", "real"), "error": "OutOfMemoryError: b128"},
        {**row("pytorch", "bf16", "compile/dynamic/cuda", "padded"), "skipped": "time budget"},
    ]
    results[0]["workload"] = "mrpc"
    lines = gpu.ratios(results, [1, 128])
    assert "bertc mixed vs pytorch fp16 eager/cuda lengths padded: throughput b128 x1.43, b1 latency x0.21" in lines[0]
    assert lines[-1].startswith("bertc mixed (buckets 32,64,96,128) on the mrpc workload, b128: x0.80 the best")
    assert "compile/dynamic/cuda lengths real, 6250.0 seq/s" in lines[-1]
    assert not any("bf16" in line or "bertc -" in line for line in lines)
    text = gpu.table(results, [1, 128])
    assert "skip" in text and "err" in text and "buckets 32,64,96,128" in text


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_jax
def test_run_on_a_platform_this_machine_lacks_says_so_in_one_line(builds):
    import jax

    if any(device.platform == "gpu" for device in jax.devices()):
        pytest.skip("this machine has a GPU")
    result = subprocess.run(
        [sys.executable, "-m", "bertc.runtime.serve", str(builds["fp32"]), "--check", "--platform", "gpu"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: platform 'gpu' is not available here: JAX sees only cpu")


def test_an_op_stablehlo_cannot_hold_is_a_clear_error():
    """The exact GELU's erf lowers to mhlo.erf, which no StableHLO portable artifact can hold (MiniLM hit this)."""
    import tensorflow as tf

    from bertc.ir.graph import GraphError
    from bertc.targets.stablehlo import emit_text

    function = tf.function(lambda x: (tf.math.erf(x),), jit_compile=True, autograph=False)
    with pytest.raises(GraphError, match=r"uses \['mhlo.erf'\].*gelu=tanh"):
        emit_text(function, [{"name": "x", "shape": [None, 4], "dtype": "float32"}], {}, [], 2, "bertc_device_b2")
