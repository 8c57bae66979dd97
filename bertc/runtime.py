"""A target=stablehlo artifact (manifest, StableHLO modules, weights) -> probabilities and logits, on any PJRT device.

Needs NumPy, safetensors and JAX only; no TensorFlow, no Hydra. The host part (embedding lookups,
LayerNorm, the mask) is computed here in NumPy from the manifest's recipe; the device part is the
module compiled for the smallest batch size that holds the batch (a larger batch is cut into
chunks of the largest), the rows padded with zeros and the padding dropped from the outputs.

    from bertc.runtime import Runtime
    model = Runtime("outputs/.../model", platform="cpu")      # or "cuda", "tpu", a PJRT plugin's name
    out = model({"input_ids": ids, "input_mask": mask, "segment_ids": segments})   # int32 [batch, seq_len]
    out["probabilities"], out["logits"]

The modules are compiled with the PJRT client that JAX holds for the platform:
`jax.extend.backend.get_backend(platform).compile_and_load(module, devices, options)` (`compile` in
older jaxlib), given the StableHLO portable artifact (versioned bytecode), else the text. Checked
with jax 0.10.2 (CPU) and 0.11.2 (CUDA).
`jax.jit` takes Python functions, not StableHLO, and `jax.export.deserialize` reads only
jax.export's own format; jax.extend is JAX's documented API for such extensions.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bertc.portable import (  # the artifact's format, shared with the target that writes it
    FORMAT,
    MANIFEST,
    ServingError,
    compute_host,
    numpy_dtype,
    tensor_digest,
)
from bertc.signature import SERVING_INPUTS

__all__ = ["FORMAT", "MANIFEST", "SERVING_INPUTS", "Runtime", "ServingError", "compute_host", "numpy_dtype",
           "tensor_digest"]


# ---- the artifact --------------------------------------------------------------------------------

def stablehlo_folder(path: str | Path) -> Path:
    """A run's model/ folder or its stablehlo/ folder -> the folder holding manifest.json."""
    path = Path(path)
    for candidate in (path, path / "stablehlo"):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise ServingError(
        f"{path} holds no {MANIFEST}: give the model/ folder of a target=stablehlo run (python -m bertc "
        "target=stablehlo ...), or its stablehlo/ folder."
    )


def read_manifest(path: str | Path) -> dict:
    manifest = json.loads((stablehlo_folder(path) / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ServingError(f"{path}: manifest format {manifest.get('format')!r}, this runtime reads {FORMAT!r}.")
    return manifest


def load_weights(path: str | Path, manifest: Mapping | None = None) -> dict[str, np.ndarray]:
    """The weights the manifest lists, from weights.safetensors (bf16 is stored as safetensors' BF16)."""
    from safetensors.numpy import load_file

    folder = stablehlo_folder(path)
    manifest = manifest or read_manifest(folder)
    file = folder / manifest["weights"]["file"]
    if not file.is_file():
        raise ServingError(
            f"{file} is missing. The benchmark bundles leave the weights out: pass weights=regenerate_weights(manifest) "
            "when the manifest says how to regenerate them."
        )
    return load_file(str(file))


def regenerate_weights(
    manifest: Mapping, check: bool = True, drawn: dict[tuple, np.ndarray] | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The weights remade with NumPy from the seed in the manifest, with bertc's transforms replayed
    (fold_scale's query scaling, the precision map's dtype); returns (weights, names whose digest differs).

    Only for models made from a preset's seeded random weights (bertc.model.weights); a digest that
    differs means another NumPy draws other numbers: timings still hold, parity does not. `drawn`
    keeps the float32 draws between calls (several precisions of one model draw the same numbers).
    """
    from bertc.model.config import BertConfig
    from bertc.model.weights import random_weight

    recipe = manifest["weights"].get("regenerate")
    if not recipe:
        raise ServingError(
            "this artifact's weights cannot be regenerated (they are not a preset's seeded random weights); "
            "keep weights.safetensors beside the manifest."
        )
    config = BertConfig(initializer_range=recipe["initializer_range"])
    weights, differ = {}, []
    for name, entry in manifest["weights"]["tensors"].items():
        key = (entry["source"], tuple(entry["shape"]), recipe["initializer_range"], recipe["seed"])
        if drawn is not None and key in drawn:
            value = drawn[key]
        else:
            value = random_weight(entry["source"], tuple(entry["shape"]), config, recipe["seed"])
            if drawn is not None:
                drawn[key] = value
        if entry.get("scale") is not None:
            value = (value * np.float32(entry["scale"])).astype(np.float32)
        value = value.astype(numpy_dtype(entry["dtype"]))
        if check and tensor_digest(value) != entry["sha256"]:
            differ.append(name)
        weights[name] = value
    return weights, differ


# ---- compiling and running on a PJRT device ------------------------------------------------------

def _compile(client, device, module: bytes | str):
    from jax.extend import backend

    options = backend.get_compile_options(num_replicas=1, num_partitions=1)
    compile_ = getattr(client, "compile_and_load", None) or client.compile  # older jaxlib: compile
    try:
        return compile_(module, [device], options)
    except TypeError:  # a jaxlib that takes only its own DeviceList
        from jaxlib._jax import DeviceList

        return compile_(module, DeviceList((device,)), options)


def _execute(executable, arguments: list) -> list:
    if hasattr(executable, "execute"):
        return executable.execute(arguments)
    results = executable.execute_sharded([[argument] for argument in arguments])
    return [shards[0] for shards in results.disassemble_into_single_device_arrays()]


def _backend(backend, platform: str | None):
    """JAX's PJRT client for `platform`; a platform this machine lacks is one line saying so, not a traceback."""
    try:
        return backend.get_backend(platform)
    except RuntimeError:
        import jax

        present = sorted({device.platform for device in jax.devices()})
        raise ServingError(
            f"platform {platform!r} is not available here: JAX sees only {', '.join(present)}. "
            "For a GPU: an NVIDIA GPU with pip install 'jax[cuda12]'; or a PJRT plugin; or --platform cpu."
        ) from None


class Runtime:
    """Loads an artifact onto one PJRT device; calling it runs a batch of any size (see the module doc)."""

    def __init__(
        self,
        path: str | Path,
        platform: str | None = None,
        device_index: int = 0,
        weights: Mapping[str, np.ndarray] | None = None,
    ):
        import jax
        from jax.extend import backend

        self.folder = stablehlo_folder(path)
        self.manifest = read_manifest(self.folder)
        self.seq_len = int(self.manifest["seq_len"])
        self.batch_sizes = sorted(int(module["batch_size"]) for module in self.manifest["modules"])
        self.client = _backend(backend, platform)
        devices = self.client.local_devices()
        if device_index >= len(devices):
            raise ServingError(f"device {device_index} asked for, but {self.client.platform} has {len(devices)}.")
        self.device = devices[device_index]
        weights = dict(weights) if weights is not None else load_weights(self.folder, self.manifest)
        missing = [name for name in self.manifest["weights"]["tensors"] if name not in weights]
        if missing:
            raise ServingError(f"{len(missing)} weight(s) missing, first {missing[:3]}; the weights are not this artifact's.")
        parameters = self.manifest["parameters"]
        self.input_names = [entry["name"] for entry in parameters if entry["kind"] == "input"]
        self.host = self.manifest.get("host")
        host_names = set(_host_weight_names(self.host)) if self.host else set()
        self.host_weights = {name: weights[name] for name in host_names}
        # NOTE: the weights go to the device once; every call passes the same device buffers.
        self.device_weights = [jax.device_put(weights[entry["name"]], self.device) for entry in parameters if entry["kind"] == "weight"]
        self._executables: dict[int, object] = {}
        self.compile_seconds: dict[int, float] = {}

    @property
    def platform(self) -> str:
        return self.client.platform

    def compile(self, batch_sizes=None, threads: int = 1) -> dict[int, float]:
        """Compile the modules now (else each is compiled at its first use), `threads` at a time; returns
        seconds per batch size."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(self._executable, batch_sizes or self.batch_sizes))
        return dict(self.compile_seconds)

    def _executable(self, batch_size: int):
        if batch_size not in self._executables:
            entry = next((m for m in self.manifest["modules"] if m["batch_size"] == batch_size), None)
            if entry is None:
                raise ServingError(f"no module for batch {batch_size}; compiled batch sizes: {self.batch_sizes}.")
            start = time.perf_counter()
            errors = []
            for key, mode in (("bytecode", "rb"), ("text", "r")):
                if not entry.get(key):
                    continue
                with open(self.folder / entry[key], mode) as stream:
                    module = stream.read()
                try:
                    self._executables[batch_size] = _compile(self.client, self.device, module)
                    break
                except Exception as error:  # an older consumer may not read the producer's bytecode: try the text
                    errors.append(f"{entry[key]}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
            else:
                raise ServingError(f"{self.platform} could not compile the batch-{batch_size} module: {'; '.join(errors)}")
            self.compile_seconds[batch_size] = time.perf_counter() - start
        return self._executables[batch_size]

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in SERVING_INPUTS if name not in feeds]
        if missing:
            raise ServingError(f"inputs {missing} missing; give {', '.join(SERVING_INPUTS)} (int32 [batch, {self.seq_len}]).")
        arrays = {name: np.asarray(feeds[name]) for name in SERVING_INPUTS}
        shapes = {name: array.shape for name, array in arrays.items()}
        if len(set(shapes.values())) != 1 or len(shapes["input_ids"]) != 2 or shapes["input_ids"][1] != self.seq_len:
            raise ServingError(f"inputs must be [batch, {self.seq_len}], all alike; got {shapes}. Pad or truncate to {self.seq_len} tokens.")
        for name, array in arrays.items():
            if not np.issubdtype(array.dtype, np.integer):
                raise ServingError(f"{name} is {array.dtype}; token ids, masks and segment ids are integers.")
        for name, limit in (self.manifest.get("input_limits") or {}).items():
            array = arrays[name]
            if array.size and (array.min() < 0 or array.max() >= limit):
                raise ServingError(
                    f"{name} holds ids outside [0, {limit}), the model's table of {limit} rows; check the tokenizer's "
                    "vocabulary (or segment ids) against the model's."
                )
        return {name: array.astype(np.int32, copy=False) for name, array in arrays.items()}

    def plan_chunks(self, rows: int) -> list[tuple[int, int, int]]:
        """[(start, stop, compiled batch size)]: the smallest module that holds what is left, else the largest."""
        chunks, start = [], 0
        while start < rows:
            left = rows - start
            size = next((size for size in self.batch_sizes if size >= left), self.batch_sizes[-1])
            chunks.append((start, start + min(left, size), size))
            start += min(left, size)
        return chunks

    def device_inputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Serving inputs (already checked, one chunk) -> the module's input parameters, on the host."""
        return compute_host(self.host, self.host_weights, feeds) if self.host else dict(feeds)

    def run_chunk(self, feeds: Mapping[str, np.ndarray], batch_size: int) -> list:
        """One chunk of at most batch_size rows, padded with zeros -> the module's outputs (device arrays, padded)."""
        import jax

        rows = len(feeds["input_ids"])
        if rows < batch_size:
            feeds = {name: np.concatenate([array, np.zeros((batch_size - rows, *array.shape[1:]), array.dtype)]) for name, array in feeds.items()}
        inputs = self.device_inputs(feeds)
        arguments = [jax.device_put(inputs[name], self.device) for name in self.input_names]
        return _execute(self._executable(batch_size), arguments + self.device_weights)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self.check_feeds(feeds)
        names = [entry["name"] for entry in self.manifest["outputs"]]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for start, stop, size in self.plan_chunks(len(feeds["input_ids"])):
            outputs = self.run_chunk({name: array[start:stop] for name, array in feeds.items()}, size)
            for name, value in zip(names, outputs):
                parts[name].append(np.asarray(value)[: stop - start])
        if not parts[names[0]]:
            return {name: np.zeros((0, *entry["shape"][1:]), np.float32) for name, entry in zip(names, self.manifest["outputs"])}
        return {name: np.concatenate(values) for name, values in parts.items()}

    def self_check(self) -> dict:
        """Run the manifest's reference batch; its max |probability difference| against what the TensorFlow
        build computed, and whether that is within the precision's gate."""
        reference = self.manifest["reference"]
        feeds = {name: np.asarray(reference[name], np.int32) for name in SERVING_INPUTS}
        outputs = self(feeds)
        diff = float(np.abs(outputs["probabilities"] - np.asarray(reference["probabilities"], np.float32)).max())
        logits = float(np.abs(outputs["logits"] - np.asarray(reference["logits"], np.float32)).max())
        return {
            "examples": len(feeds["input_ids"]), "max_abs_diff": diff, "logits_max_abs_diff": logits,
            "tolerance": reference["tolerance"], "passed": bool(diff <= reference["tolerance"]),
        }


def _host_weight_names(host: Mapping) -> list[str]:
    embedding = host["embedding_output"]
    norm = embedding["layer_norm"]
    return [embedding["word_embeddings"], embedding["token_type_embeddings"], embedding["position_embeddings"], norm["gamma"], norm["beta"]]
