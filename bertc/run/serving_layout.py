"""A passed run's `model/` -> `serving/<name>/1/`, the layout TensorFlow Serving loads as it is; report lines.

TensorFlow Serving watches a base path holding numbered versions (`<base>/<version>/saved_model.pb`),
while `model/` holds the SavedModel directly. The version folder holds hard links to model/'s files
(no second copy on disk, no symlinks that a `docker -v` mount could not follow; a copy where the
file system refuses links). It is written beside its place and moved in complete. A rejected model
gets none.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from bertc.ir.signature import SERVING_INPUTS as SERVED_INPUTS  # int32 [batch, seq_len]
from bertc.ir.signature import TRAINING_INPUTS  # run_classifier's int32 [batch] inputs, never read when serving

SERVING_VERSION = 1


def serving_name(label: str) -> str:
    """The model's label as a TensorFlow Serving model name (letters, digits, `_` and `-`)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", label) or "bert"


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def write_repository(model_dir: Path, run_dir: Path, server: str, label: str, files: dict[str, str]) -> Path:
    """run_dir/serving/<server>/<name>/ in a model server's repository layout: `files` maps a path under <name>/ to
    a file of model_dir (linked or copied), or to its text when the value starts with "text:". Written beside its
    place and moved in complete; returns <name>'s folder."""
    name = serving_name(label)
    root = run_dir / "serving"
    root.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{server}.partial-", dir=root))
    try:
        for relative, source in files.items():
            destination = staging / name / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            if source.startswith("text:"):
                destination.write_text(source.removeprefix("text:"))
            else:
                _link_or_copy(str(model_dir / source), str(destination))
        final = root / server
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / name


def served_signature(model_dir: Path) -> tuple[list[str], list[str]]:
    """The compiled SavedModel's serving_default (input keys, output keys), read from saved_model.pb."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((model_dir / "saved_model.pb").read_bytes())
    signature = saved.meta_graphs[0].signature_def["serving_default"]
    return list(signature.inputs), sorted(signature.outputs)


def write_serving_layout(model_dir: Path, run_dir: Path, label: str, user: dict) -> dict:
    """Write run_dir/serving/<name>/1/ from model_dir; returns report.json's `serving` entry. `user`: the input
    model's signature as the run read it (report.json's input.signature: input_names, inputs, outputs)."""
    name = serving_name(label)
    staging = Path(tempfile.mkdtemp(prefix=".serving.partial-", dir=run_dir))
    try:
        # stablehlo/ is target=stablehlo's PJRT bundle: TensorFlow Serving does not read it.
        shutil.copytree(
            model_dir,
            staging / name / str(SERVING_VERSION),
            copy_function=_link_or_copy,
            ignore=shutil.ignore_patterns("stablehlo"),
        )
        final = run_dir / "serving"
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    inputs, outputs = served_signature(final / name / str(SERVING_VERSION))
    order = [user.get("input_names", {}).get(key, key) for key in SERVED_INPUTS] + list(TRAINING_INPUTS)

    def ordered(keys) -> list[str]:  # BERT's order, run_classifier's extra inputs after
        return sorted(keys, key=lambda key: (order.index(key) if key in order else len(order), key))

    return {
        "base_path": str(final / name),
        "model_name": name,
        "version": SERVING_VERSION,
        "inputs": ordered(inputs),
        "dropped_inputs": ordered(key for key in user.get("inputs", ()) if key not in inputs),
        "outputs": outputs,
        "added_outputs": [key for key in outputs if key not in user.get("outputs", outputs)],
    }


def signature_note(serving: dict) -> str:
    """What the serving signature takes and returns, against the input model's, for report.md."""
    kept = [key for key in serving["inputs"] if key not in TRAINING_INPUTS]
    note = f"serving_default takes your model's {', '.join(kept)} (int32 [batch, seq_len])"
    if serving["dropped_inputs"]:
        note += (
            f"; run_classifier's {' and '.join(serving['dropped_inputs'])} are gone (serving never read them): "
            "a client that sends them gets an error; removal.keep_signature=true keeps them (accepted and ignored)"
        )
    elif any(key in TRAINING_INPUTS for key in serving["inputs"]):
        note += f" and keeps run_classifier's {' and '.join(TRAINING_INPUTS)} (int32 [batch], accepted and ignored)"
    outputs = ", ".join(f"`{key}`" for key in serving.get("outputs", ("probabilities", "logits")))
    added = serving.get("added_outputs") or []
    if added:
        outputs += f" ({', '.join(added)} added by bertc: your model returns the other only)"
    return f"{note}; it returns {outputs} (float32)"


def serving_lines(serving: dict | None) -> list[str]:
    """report.md's Serving section: the signature and the exact commands that serve this run's model."""
    if not serving:
        return []
    if "base_path" not in serving:  # another engine's artifact: what its target says of it
        return ["", "## Serving", "", *[f"- {key}: {value}" for key, value in serving.items()]]
    base, name = serving["base_path"], serving["model_name"]
    return [
        "",
        "## Serving",
        "",
        f"- TensorFlow Serving layout: `{base}/{serving['version']}/` (hard links to `model/`)",
        f"- signature: {signature_note(serving)}",
        "",
        "```",
        f"tensorflow_model_server --rest_api_port=8501 --model_name={name} --model_base_path={base}",
        f"docker run -p 8501:8501 -v {base}:/models/{name} -e MODEL_NAME={name} tensorflow/serving",
        f"curl -d @request.json http://localhost:8501/v1/models/{name}:predict",
        "```",
    ]
