"""bertc.runtime.stablehlo checks a target=stablehlo artifact before trusting it: weight digests and shapes, file names
inside the artifact, id limits and the self-check's gate from the weights (not editable manifest fields), and
clean errors (exit 2, no traceback) for broken manifests, weights and inputs."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from support.compile import compose_config
from support.runtime import assert_refused, cli, manifest, write_manifest

from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan
from bertc.evaluate.batches import synthetic_batches
from bertc.evaluate.verify import GATES
from bertc.runtime.stablehlo import ServingError, parity_gate, tensor_digest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
WORD = "bert/embeddings/word_embeddings"
CLASSIFIER = "output_weights"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The tiny preset, target=stablehlo, fp32, one module for batch 8."""
    run_dir = tmp_path_factory.mktemp("stablehlo-checks")
    cfg = compose_config(["model=tiny", "target=stablehlo", "target.batch_sizes=[8]", "bench=off", "verify=off"])
    code = compile_run(build_plan(cfg), run_dir, Console(file=io.StringIO()))
    assert code == 0, json.loads((run_dir / "report.json").read_text()).get("error")
    return run_dir / "model"


@pytest.fixture
def artifact(built, tmp_path) -> Path:
    """A private copy of the stablehlo/ folder that a test may tamper with."""
    folder = tmp_path / "artifact"
    shutil.copytree(built / "stablehlo", folder)
    return folder


def edit_weights(folder: Path, edit) -> dict:
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(folder / "weights.safetensors"))
    edit(weights)
    save_file(weights, str(folder / "weights.safetensors"))
    return weights


def test_a_tampered_embedding_row_is_refused(artifact, capsys):
    def tamper(weights):
        weights[WORD][30000] = 1.0  # a row the reference batch may never read: only the digest can tell

    edit_weights(artifact, tamper)
    assert_refused(artifact, capsys, WORD, "sha256")


def test_a_weight_of_another_shape_is_refused(artifact, capsys):
    def shrink(weights):
        weights[WORD] = np.ascontiguousarray(weights[WORD][:1000])

    edit_weights(artifact, shrink)
    assert_refused(artifact, capsys, WORD, "[1000, 32]", "[30522, 32]")


def test_the_gate_comes_from_the_weights_not_the_manifest(artifact, capsys):
    """A weight changed with its digest updated to match, and the manifest's gate raised to 1.0: --check fails
    at the fp32 gate."""

    def tamper(weights):
        weights[CLASSIFIER] = (weights[CLASSIFIER] * 400.0).astype(np.float32)

    weights = edit_weights(artifact, tamper)
    value = manifest(artifact)
    value["weights"]["tensors"][CLASSIFIER]["sha256"] = tensor_digest(weights[CLASSIFIER])
    value["reference"]["tolerance"] = 1.0
    write_manifest(artifact, value)
    code, out, _ = cli(artifact, "--check", capsys=capsys)
    assert code == 1 and "FAILED" in out and f"gate {GATES['fp32']}" in out, out


def test_parity_gate_follows_the_narrowest_weight_dtype():
    import ml_dtypes

    fp32 = {"a": np.zeros(2, np.float32)}
    assert parity_gate(fp32) == GATES["fp32"]
    assert parity_gate({**fp32, "b": np.zeros(2, np.float16)}) == GATES["fp16"]
    assert parity_gate({**fp32, "b": np.zeros(2, ml_dtypes.bfloat16)}) == GATES["bf16"]
    assert parity_gate(fp32, recorded=1.0) == GATES["fp32"], "a manifest cannot loosen the gate"
    assert parity_gate(fp32, recorded=1e-7) == 1e-7, "a manifest may tighten it"
    assert parity_gate(fp32, recorded="1") == GATES["fp32"]


def test_ids_are_bounded_by_the_tables_without_input_limits(artifact):
    from bertc.runtime.stablehlo import Runtime

    value = manifest(artifact)
    del value["input_limits"]
    write_manifest(artifact, value)
    runtime = Runtime(artifact, platform="cpu")
    assert runtime.input_limits == {"input_ids": 30522, "segment_ids": 2}
    feeds = synthetic_batches(1, 2, 128, 30522, seed=4)[0].feeds()
    with pytest.raises(ServingError, match=r"input_ids holds ids outside \[0, 30522\)"):
        runtime({**feeds, "input_ids": feeds["input_ids"] + 30522})
    with pytest.raises(ServingError, match=r"segment_ids holds ids outside \[0, 2\)"):
        runtime({**feeds, "segment_ids": feeds["segment_ids"] + 2})


def test_a_manifest_cannot_raise_the_id_limits(artifact):
    from bertc.runtime.stablehlo import Runtime

    value = manifest(artifact)
    value["input_limits"] = {"input_ids": 10**9, "segment_ids": 1}  # looser for ids, tighter for segments
    write_manifest(artifact, value)
    assert Runtime(artifact, platform="cpu").input_limits == {"input_ids": 30522, "segment_ids": 1}


@pytest.mark.parametrize("where", ["weights", "module"])
@pytest.mark.parametrize("name", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin"])
def test_file_names_that_leave_the_artifact_are_refused(artifact, capsys, where, name):
    shutil.copy(artifact / "weights.safetensors", artifact.parent / "outside.bin")
    value = manifest(artifact)
    if where == "weights":
        value["weights"]["file"] = name
    else:
        value["modules"][0]["bytecode"] = name
    write_manifest(artifact, value)
    assert_refused(artifact, capsys, "outside the artifact folder", repr(name))


def test_a_link_out_of_the_artifact_is_refused(artifact, capsys):
    outside = artifact.parent / "elsewhere.safetensors"
    (artifact / "weights.safetensors").rename(outside)
    os.symlink(outside, artifact / "weights.safetensors")
    assert_refused(artifact, capsys, "a link that leaves the artifact folder")


def _drop(key):
    def edit(value):
        del value[key]
        return value

    return edit


def _set(path: str, item):
    def edit(value):
        node = value
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = item
        return value

    return edit


BROKEN_MANIFESTS = {
    "not JSON": (
        lambda folder: (folder / "manifest.json").write_text("{ not json"),
        ["cannot be read as JSON"],
    ),
    "binary": (
        lambda folder: (folder / "manifest.json").write_bytes(bytes(range(256)) * 4),
        ["cannot be read as JSON"],
    ),
    "a list": (lambda folder: write_manifest(folder, [1, 2]), ["holds no JSON object"]),
    "another format": (
        lambda folder: write_manifest(folder, _set("format", "x")(manifest(folder))),
        ["manifest format 'x'"],
    ),
    "no modules": (
        lambda folder: write_manifest(folder, _drop("modules")(manifest(folder))),
        ["manifest.modules: missing"],
    ),
    "bad batch size": (
        lambda folder: write_manifest(folder, _set("modules.0.batch_size", "8")(manifest(folder))),
        ['manifest.modules[0].batch_size: expected an integer from 1 to 1048576, got "8"'],
    ),
    "bad seq_len": (
        lambda folder: write_manifest(folder, _set("seq_len", 64)(manifest(folder))),
        ["seq_len 64"],
    ),
    "parameter without shape": (
        lambda folder: write_manifest(folder, _set("parameters.3.shape", "big")(manifest(folder))),
        ['manifest.parameters[3].shape: expected a list, got "big"'],
    ),
    "weight without digest": (
        lambda folder: write_manifest(
            folder, _set(f"weights.tensors.{WORD}", {"shape": [1], "dtype": "float32"})(manifest(folder))
        ),
        [f'manifest.weights.tensors["{WORD}"].sha256: missing'],
    ),
    "parameter not the listed weight": (
        lambda folder: write_manifest(folder, _set("parameters.3.dtype", "float16")(manifest(folder))),
        ["is not the weight"],
    ),
    "no weights entry": (
        lambda folder: write_manifest(folder, _drop("weights")(manifest(folder))),
        ["manifest.weights: missing"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_MANIFESTS))
def test_broken_manifest_gives_a_clean_error(artifact, capsys, case):
    breaker, words = BROKEN_MANIFESTS[case]
    breaker(artifact)
    assert_refused(artifact, capsys, *words)


@pytest.mark.parametrize("case", ["truncated", "garbage", "missing"])
def test_broken_weights_file_gives_a_clean_error(artifact, capsys, case):
    file = artifact / "weights.safetensors"
    if case == "truncated":
        file.write_bytes(file.read_bytes()[:5000])
        words = ["cannot be read as safetensors"]
    elif case == "garbage":
        file.write_bytes(b"\x00" * 64)
        words = ["cannot be read as safetensors"]
    else:
        file.unlink()
        words = ["is missing"]
    assert_refused(artifact, capsys, *words)


def test_a_module_file_missing_or_broken_is_a_clean_error(artifact, capsys):
    from bertc.runtime.stablehlo import Runtime

    entry = manifest(artifact)["modules"][0]
    (artifact / entry["bytecode"]).unlink()
    (artifact / entry["text"]).write_text("module { this is not stablehlo")
    runtime = Runtime(artifact, platform="cpu")
    with pytest.raises(ServingError, match="could not compile the batch-8 module"):
        runtime.compile()
    code, _, err = cli(artifact, "--check", capsys=capsys)
    assert code == 2 and "could not compile" in err


def test_a_broken_reference_batch_is_a_clean_error(artifact, capsys):
    write_manifest(artifact, _drop("reference")(manifest(artifact)))
    code, _, err = cli(artifact, "--check", capsys=capsys)
    assert code == 2 and "reference batch is incomplete" in err


def test_bad_inputs_file_is_a_clean_error(artifact, capsys, tmp_path):
    (tmp_path / "batch.npz").write_bytes(b"not a zip file")
    code, _, err = cli(artifact, "--inputs", tmp_path / "batch.npz", capsys=capsys)
    assert code == 2 and "cannot be read as an .npz" in err


def test_the_untouched_artifact_still_passes(artifact, capsys):
    code, out, _ = cli(artifact, "--check", capsys=capsys)
    assert code == 0 and "passed" in out and f"gate {GATES['fp32']}" in out


# ---- issue 23, item 8: what a manifest can ask is bounded before anything is allocated or compiled ----------


def _huge_batch(folder: Path) -> None:
    value = manifest(folder)
    entry = value["modules"][0]
    entry["batch_size"] = 10**12
    entry["inputs"] = [[10**12, *shape[1:]] for shape in entry["inputs"]]
    write_manifest(folder, value)


def _nested(folder: Path) -> None:
    (folder / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)


def _nested_inside(folder: Path) -> None:
    value = manifest(folder)
    value["notes"] = json.loads("[" * 40 + "]" * 40)
    write_manifest(folder, value)


def _oversized(folder: Path) -> None:
    value = manifest(folder)
    value["notes"] = "x" * (65 << 20)
    write_manifest(folder, value)


MANIFEST_BOMBS = {
    "batch of 10**12": (_huge_batch, ["batch_size: expected an integer from 1 to 1048576"]),
    "nested 100000 deep": (_nested, ["nested too deeply"]),
    "nested 40 deep in an object": (_nested_inside, ["nested deeper than 32 levels"]),
    "65 MiB": (_oversized, ["over the 67108864 a manifest may be"]),
}


@pytest.mark.parametrize("case", list(MANIFEST_BOMBS))
def test_a_manifest_asking_too_much_is_refused_in_one_line(artifact, capsys, case):
    breaker, words = MANIFEST_BOMBS[case]
    breaker(artifact)
    assert_refused(artifact, capsys, *words)


def test_inputs_beyond_the_memory_available_are_refused_before_allocating(artifact, capsys, monkeypatch):
    monkeypatch.setattr("bertc.runtime.stablehlo.available_memory", lambda: 1 << 20)  # 1 MiB; batch 8 needs 12 KiB
    value = manifest(artifact)
    entry = value["modules"][0]
    entry["batch_size"] = 4096  # 4096 x 128 x 3 int32: 6 MiB of inputs
    entry["inputs"] = [[4096, *shape[1:]] for shape in entry["inputs"]]
    write_manifest(artifact, value)
    assert_refused(artifact, capsys, "batch-4096 module's inputs alone take", "GiB of memory available")


@pytest.mark.parametrize("kind", ["bytecode", "text"])
def test_a_module_relabelled_with_another_batch_size_is_refused_before_compiling(artifact, capsys, kind, monkeypatch):
    """The batch-8 module's files (digests and all) listed as the batch-1 module: its own signature says 8."""
    from bertc.runtime import stablehlo as runtime_module

    value = manifest(artifact)
    entry = value["modules"][0]
    entry["batch_size"] = 1
    entry["inputs"] = [[1, *shape[1:]] for shape in entry["inputs"]]
    for other in {"bytecode", "text"} - {kind}:  # the module is read from this kind of file only
        entry.pop(other)
        entry.pop(f"{other}_sha256")
    write_manifest(artifact, value)
    compiled = []
    monkeypatch.setattr(runtime_module, "_compile", lambda *arguments: compiled.append(arguments))
    code, out, err = cli(artifact, "--check", capsys=capsys)
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert "is not the batch-1 module the manifest lists" in err and "tensor<8x128xi32>, not tensor<1x128xi32>" in err
    assert compiled == []


# ---- issue 24, item 3: the manifest is a typed record; the runtime loads no TensorFlow ------------------------


def test_the_manifest_record_reads_back_to_the_same_json(artifact):
    """manifest.json -> Manifest -> JSON: the same keys and values in the same order (the writer builds the record)."""
    from bertc.runtime.manifest import manifest_json, parse_manifest

    value = manifest(artifact)
    assert json.dumps(manifest_json(parse_manifest(value))) == json.dumps(value)


@pytest.mark.parametrize(
    "path, item, message",
    [
        ("seq_len", True, "manifest.seq_len: expected an integer of at least 1, got true"),
        ("modules.0.inputs.1", [8, -1], "manifest.modules[0].inputs[1][1]: expected an integer of at least 0, got -1"),
        ("parameters.0.kind", "output", 'manifest.parameters[0].kind: expected one of "input", "weight", got "output"'),
        ("reference.tolerance", "1e-5", 'manifest.reference.tolerance: expected a number, got "1e-5"'),
        ("weights.regenerate", [], "manifest.weights.regenerate: expected an object, got a list"),
    ],
)
def test_a_bad_manifest_field_is_named(artifact, path, item, message):
    from bertc.runtime.manifest import parse_manifest
    from bertc.runtime.records import RecordError

    with pytest.raises(RecordError) as raised:
        parse_manifest(_set(path, item)(manifest(artifact)))
    assert str(raised.value) == message


def test_the_runtime_serving_an_artifact_loads_no_tensorflow(artifact):
    """bertc.runtime's modules imported, and an artifact loaded, checked and self-checked, in a fresh process:
    neither TensorFlow nor any bertc module that imports it (even inside a function) is loaded."""
    code = (
        "import sys, bertc.runtime, bertc.runtime.portable, bertc.runtime.serve, bertc.runtime.stablehlo as runtime; "
        f"model = runtime.Runtime({str(artifact)!r}, platform='cpu'); "
        "runtime.regenerate_weights(model.manifest); assert model.self_check()['passed']; "
        "print(' '.join(sorted(name for name in sys.modules if name.split('.')[0] in ('tensorflow', 'bertc'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = done.stdout.split()
    assert "bertc.runtime.stablehlo" in loaded and not [name for name in loaded if name.startswith("tensorflow")]
    assert [name for name in loaded if _imports_tensorflow(name)] == []
    assert [name for name in loaded if name.split(".")[1:2] in (["driver"], ["evaluate"])] == []


def _imports_tensorflow(module: str) -> bool:
    """Whether a bertc module's source imports TensorFlow anywhere (at the top or inside a function)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(name.split(".")[0] == "tensorflow" for name in names):
            return True
    return False
