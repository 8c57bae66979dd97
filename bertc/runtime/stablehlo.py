"""A target=stablehlo artifact (manifest, StableHLO modules, weights) -> probabilities and logits, on any PJRT device.

Needs NumPy, safetensors and JAX only; no TensorFlow, no Hydra. The host part (embedding lookups,
LayerNorm, the mask) is computed here in NumPy from the manifest's recipe; the device part is the
module compiled for the smallest batch size that holds the batch (a larger batch is cut into
chunks of the largest), the rows padded with zeros and the padding dropped from the outputs. An
artifact built with length=buckets has a module per (batch size, bucket): each chunk is cut to the
smallest bucket that holds its longest real row (the length step's rule, `bertc.passes.length.rule.batch_length`,
computed here as the compiled graph computes it) before its rows are padded.

    from bertc.runtime.stablehlo import Runtime
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

import collections
import re
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bertc.ir.signature import SERVING_INPUTS
from bertc.jsonfile import read_json_object
from bertc.passes.length.rule import batch_length  # the length step's rule, NumPy only
from bertc.runtime.machine import available_memory
from bertc.runtime.manifest import HostRecipe, Manifest, Module, Parameter, manifest_json, parse_manifest
from bertc.runtime.portable import (  # the artifact's format, shared with the target that writes it
    BUCKETS_FORMAT,
    FORMAT,
    FORMATS,
    MANIFEST,
    PARITY_GATES,
    ServingError,
    compute_host,
    file_digest,
    numpy_dtype,
    tensor_digest,
)
from bertc.runtime.records import RecordError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "SERVING_INPUTS",
    "Runtime",
    "ServingError",
    "compute_host",
    "numpy_dtype",
    "tensor_digest",
]


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


def load_manifest(path: str | Path) -> Manifest:
    """manifest.json -> the Manifest, bounded, typed and checked (a damaged or foreign file: a ServingError naming
    what is wrong, not a KeyError)."""
    file = stablehlo_folder(path) / MANIFEST
    size = file.stat().st_size
    _need(size <= MAX_MANIFEST_BYTES, file, f"it is {size} bytes, over the {MAX_MANIFEST_BYTES} a manifest may be")
    try:
        value = read_json_object(file, ServingError, f"; {REBUILD}")
    except RecursionError:  # a JSON nested thousands deep: Python's parser gives up, as this runtime does
        raise ServingError(f"{file} is nested too deeply to be a manifest; {REBUILD}") from None
    _need(_depth(value) <= MAX_MANIFEST_DEPTH, file, f"it is nested deeper than {MAX_MANIFEST_DEPTH} levels")
    if value.get("format") not in FORMATS:
        raise ServingError(
            f"{path}: manifest format {value.get('format')!r}, this runtime reads {' and '.join(map(repr, FORMATS))}."
        )
    try:
        manifest = parse_manifest(value)
    except RecordError as error:
        raise ServingError(f"{file}: {error}; {REBUILD}") from None
    check_manifest(manifest, file)
    return manifest


def read_manifest(path: str | Path) -> dict:
    """manifest.json as JSON, checked as `load_manifest` checks it: for scripts that read it as a dict."""
    return manifest_json(load_manifest(path))


# ---- checking the artifact before it is trusted ------------------------------------------------
# The manifest is the root of trust: the weights file must match its digests and shapes, every file
# it names must lie inside the artifact's folder, and what bounds the inputs and the self-check (id
# limits, parity gate) comes from the checked weights themselves, so an edited manifest field can
# only tighten them. Each field's type and range is the record's (bertc/runtime/manifest.py); here, how
# the fields fit together.

REBUILD = "the artifact is damaged or was edited: compile it again (python -m bertc target=stablehlo ...)."
# What a manifest may ask, bounded before anything is allocated or compiled: bertc writes a few hundred KiB,
# nested about six deep (batch sizes: bertc/runtime/manifest.py MAX_BATCH_SIZE).
MAX_MANIFEST_BYTES = 64 << 20
MAX_MANIFEST_DEPTH = 32
WORD_TABLE, TOKEN_TYPE_TABLE, POSITION_TABLE = (
    "word_embeddings",
    "token_type_embeddings",
    "position_embeddings",
)


def _need(condition, file: Path, what: str) -> None:
    if not condition:
        raise ServingError(f"{file}: {what}; {REBUILD}")


def _depth(value, limit: int = MAX_MANIFEST_DEPTH + 1) -> int:
    """How deep lists and objects nest in a parsed JSON value, counted up to `limit` (no deeper walk)."""
    depth, level = 0, [value]
    while level and depth < limit:
        items = [item for node in level for item in (node.values() if isinstance(node, dict) else node)]
        level = [item for item in items if isinstance(item, (dict, list))]
        depth += 1
    return depth


def check_manifest(manifest: Manifest, file: Path) -> None:
    """How the manifest's fields fit together, before the runtime relies on them."""
    widths = _check_length(manifest, file)
    _check_modules(manifest, widths, file)
    _need(
        [entry.name for entry in manifest.outputs] == ["probabilities", "logits"],
        file,
        "outputs are not probabilities and logits",
    )
    _check_weight_entries(manifest, file)
    _check_host(manifest, file)


def _check_length(manifest: Manifest, file: Path) -> list[int]:
    """The widths the modules run at: the buckets of a length=buckets artifact (its own format), else seq_len."""
    length, seq_len = manifest.length, manifest.seq_len
    bucketed = manifest.format == BUCKETS_FORMAT
    _need(
        (length is None) != bucketed,
        file,
        f"format {manifest.format} {'needs' if bucketed else 'has no'} a length section",
    )
    if length is None:
        return [seq_len]
    sizes = length.sizes
    _need(
        sizes == sorted(set(sizes)) and sizes[-1] == seq_len,
        file,
        f"the length buckets {str(sizes)[:80]} are not ascending sizes ending at seq_len {seq_len}",
    )
    return sizes


def _check_modules(manifest: Manifest, widths: list[int], file: Path) -> None:
    """Each module: its width, a digest for each file it names, its input shapes; and one module for every
    (batch size, width), so that every batch finds its module."""
    keys = []
    for entry in manifest.modules:
        label = module_label(entry.batch_size, entry.seq_len, len(widths) > 1)
        _need(entry.bytecode or entry.text, file, f"the {label} module names no bytecode or text file")
        for kind in ("bytecode", "text"):
            _need(
                getattr(entry, kind) is None or str(getattr(entry, f"{kind}_sha256")).startswith("sha256:"),
                file,
                f"the {label} module's {kind} file has no sha256",
            )
        _need(
            entry.seq_len in widths,
            file,
            f"seq_len {manifest.seq_len} is not the length the {label} module takes ({entry.seq_len}); "
            f"its width must be one of {widths}",
        )
        _check_module_inputs(entry, manifest.inputs(), label, file)
        keys.append((entry.batch_size, entry.seq_len))
    batch_sizes = sorted({batch for batch, _ in keys})
    _need(
        len(keys) == len(set(keys)) and set(keys) == {(batch, width) for batch in batch_sizes for width in widths},
        file,
        f"the modules are not one per batch size {batch_sizes} and width {widths}",
    )


def _check_module_inputs(entry: Module, inputs: list[Parameter], label: str, file: Path) -> None:
    """A module's input shapes: its batch size, the parameters' static dimensions, its width where they vary."""
    _need(
        len(entry.inputs) == len(inputs),
        file,
        f"the {label} module lists no shape for each of its {len(inputs)} inputs",
    )
    for shape, parameter in zip(entry.inputs, inputs):
        declared = parameter.shape
        expected = [entry.batch_size] + [entry.seq_len if dim is None else dim for dim in declared[1:]]
        _need(
            shape == expected,
            file,
            f"the {label} module's input {parameter.name} is {shape}, not {expected} "
            f"(the parameter's {declared} at its batch size and width)",
        )


def module_label(batch_size: int, width: int, bucketed: bool) -> str:
    """How messages name a module: batch-8, or batch-8 length-32 when the artifact has buckets."""
    return f"batch-{batch_size}" + (f" length-{width}" if bucketed else "")


def _check_weight_entries(manifest: Manifest, file: Path) -> None:
    """The modules' weight parameters are the weights the manifest lists, with their shapes and dtypes."""
    listed = manifest.weights.tensors
    for entry in manifest.parameters:
        if entry.kind == "weight":
            tensor = listed.get(entry.name)
            _need(
                tensor is not None and tensor.shape == entry.shape and tensor.dtype == entry.dtype,
                file,
                f"the module's weight parameter {entry.name} is not the weight the manifest lists",
            )


def _check_host(manifest: Manifest, file: Path) -> None:
    """The host recipe, when there is one: dtypes NumPy knows, and reading only listed weights."""
    host = manifest.host
    if host is None:
        return
    for where, dtype in (
        ("embedding_output", host.embedding_output.dtype),
        ("attention_mask", host.attention_mask.dtype),
    ):
        try:
            numpy_dtype(dtype)
        except TypeError:
            raise ServingError(
                f"{file}: the host recipe's {where} dtype {dtype!r} is no NumPy dtype; {REBUILD}"
            ) from None
    _need(
        host.attention_mask.form != "bias" or host.attention_mask.bias_value is not None,
        file,
        "the host recipe's bias mask has no bias_value",
    )
    _need(
        all(name in manifest.weights.tensors for name in host.weight_names()),
        file,
        "the host recipe reads weights the manifest does not list",
    )


def artifact_file(folder: Path, name, what: str) -> Path:
    """A file the manifest names -> its path; refused if the name leaves the artifact folder (.., absolute,
    a link out)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ServingError(f"{folder / MANIFEST} names {what} {name!r}, outside the artifact folder; {REBUILD}")
    path = folder / name
    root = folder.resolve()
    if not path.resolve().is_relative_to(root):
        raise ServingError(f"{path} ({what}) is a link that leaves the artifact folder {root}; {REBUILD}")
    return path


def check_weights(manifest: Manifest, weights: Mapping[str, np.ndarray], digests: bool, where: str) -> None:
    """Every weight the manifest lists: present, its shape and dtype, and (digests=True) its sha256."""
    listed = manifest.weights.tensors
    missing = [name for name in listed if name not in weights]
    if missing:
        raise ServingError(
            f"{len(missing)} weight(s) missing from {where}, first {missing[:3]}; the weights are not this artifact's."
        )
    for name, entry in listed.items():
        value = np.asarray(weights[name])
        if list(value.shape) != entry.shape or value.dtype.name != entry.dtype:
            raise ServingError(
                f"the weight {name} in {where} is {value.dtype.name} {list(value.shape)}, the manifest says "
                f"{entry.dtype} {entry.shape}; the weights are not this artifact's."
            )
        if digests and tensor_digest(value) != entry.sha256:
            raise ServingError(
                f"the weight {name} in {where} does not match its sha256 in the manifest: the file was "
                "modified or "
                f"damaged after the build; {REBUILD}"
            )


def _table(weights: Mapping[str, np.ndarray], suffix: str, host: HostRecipe | None, host_key: str | None) -> str | None:
    """The 2-D embedding table whose name ends in `suffix`; where a host recipe reads one, it must be that."""
    found = [name for name, value in weights.items() if name.split("/")[-1] == suffix and np.ndim(value) == 2]
    if host is not None and host_key is not None:
        named = getattr(host.embedding_output, host_key)
        if found and named not in found:
            raise ServingError(
                f"the host recipe reads {named} as the {suffix} table, but the artifact's is {found[0]}; {REBUILD}"
            )
        return named
    return found[0] if len(found) == 1 else None


def input_limits(manifest: Manifest, weights: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The id limits from the embedding tables' own rows (a manifest's input_limits may only lower them)."""
    host = manifest.host
    limits = {}
    for key, suffix, host_key in (
        ("input_ids", WORD_TABLE, "word_embeddings"),
        ("segment_ids", TOKEN_TYPE_TABLE, "token_type_embeddings"),
    ):
        table = _table(weights, suffix, host, host_key)
        if table is None:
            raise ServingError(
                f"the artifact has no {suffix} table the runtime can recognise, so {key} cannot be bounded; {REBUILD}"
            )
        limits[key] = int(np.shape(weights[table])[0])
    for key, limit in (manifest.input_limits or {}).items():
        if key in limits and 0 < limit < limits[key]:
            limits[key] = limit
    return limits


def parity_gate(weights: Mapping[str, np.ndarray], recorded=None) -> float:
    """The self-check's gate from the narrowest float dtype of the (checked) weights, as verify gates that
    precision; a gate recorded in the manifest may only be tighter."""
    dtypes = {np.asarray(value).dtype.name for value in weights.values()}
    gates = PARITY_GATES
    gate = gates["bf16"] if "bfloat16" in dtypes else gates["fp16"] if "float16" in dtypes else gates["fp32"]
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and 0 <= recorded < gate:
        return float(recorded)
    return gate


def load_weights(path: str | Path, manifest: Manifest | None = None) -> dict[str, np.ndarray]:
    """The weights the manifest lists, from weights.safetensors (bf16 is stored as safetensors' BF16)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = stablehlo_folder(path)
    manifest = manifest or load_manifest(folder)
    file = artifact_file(folder, manifest.weights.file, "the weights file")
    if not file.is_file():
        raise ServingError(
            f"{file} is missing. The benchmark bundles leave the weights out: "
            "pass weights=regenerate_weights(manifest) "
            "when the manifest says how to regenerate them."
        )
    try:
        weights = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as error:  # a damaged or foreign file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ServingError(f"{file} cannot be read as safetensors ({reason}); {REBUILD}") from None
    check_weights(manifest, weights, digests=True, where=str(file))
    return weights


def regenerate_weights(
    manifest: Manifest | Mapping, check: bool = True, drawn: dict[tuple, np.ndarray] | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The weights remade with NumPy from the seed in the manifest, with bertc's transforms replayed
    (fold_scale's query scaling, the precision map's dtype); returns (weights, names whose digest differs).

    Only for models made from a preset's seeded random weights (bertc.model.weights); a digest that
    differs means another NumPy draws other numbers: timings still hold, parity does not. `drawn`
    keeps the float32 draws between calls (several precisions of one model draw the same numbers). A manifest
    given as JSON (a dict) is read as `load_manifest` reads one.
    """
    from bertc.model.config import BertConfig
    from bertc.model.weights import random_weight

    if not isinstance(manifest, Manifest):
        try:
            manifest = parse_manifest(manifest)
        except RecordError as error:
            raise ServingError(f"{error}; {REBUILD}") from None
    recipe = manifest.weights.regenerate
    if recipe is None:
        raise ServingError(
            "this artifact's weights cannot be regenerated (they are not a preset's seeded random weights); "
            "keep weights.safetensors beside the manifest."
        )
    config = BertConfig(initializer_range=recipe.initializer_range)
    weights, differ = {}, []
    for name, entry in manifest.weights.tensors.items():
        key = (entry.source, tuple(entry.shape), recipe.initializer_range, recipe.seed)
        if drawn is not None and key in drawn:
            value = drawn[key]
        else:
            value = random_weight(entry.source, tuple(entry.shape), config, recipe.seed)
            if drawn is not None:
                drawn[key] = value
        if entry.scale is not None:
            value = (value * np.float32(entry.scale)).astype(np.float32)
        value = value.astype(numpy_dtype(entry.dtype))
        if check and tensor_digest(value) != entry.sha256:
            differ.append(name)
        weights[name] = value
    return weights, differ


# ---- what a module takes, read from its file before it is compiled ---------------------------------
# A module relabelled in the manifest (another batch size's file under this one's name, digests and all) would
# compile, then fail inside XLA at the first call; its own signature says what it takes.

_MAIN = re.compile(r"func\.func (?:public )?@main\((.*?)\)\s*->", re.S)
_ARGUMENT = re.compile(r"%arg\d+: tensor<([^>]*)>")
_ELEMENT_TYPES = {"int32": "i32", "int64": "i64", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def module_parameters(content: bytes | str) -> list[str] | None:
    """The types of a module's @main parameters as MLIR spells them inside tensor<> ("8x128xi32"); None when
    they cannot be read here (no @main in the text, bytecode without jaxlib's MLIR bindings or not readable)."""
    if isinstance(content, str):
        match = _MAIN.search(content)
        return _ARGUMENT.findall(match.group(1)) if match else None  # no @main: the compile says why
    try:
        from jaxlib.mlir import ir
        from jaxlib.mlir.dialects import stablehlo
    except ImportError:
        return None
    with ir.Context() as context:
        try:
            module = stablehlo.deserialize_portable_artifact(context, content)
        except Exception:  # noqa: BLE001 (MLIR's binding raises its own types): the compile says why
            return None
        for operation in module.body.operations:
            if operation.operation.name == "func.func" and str(operation.attributes["sym_name"]) == '"main"':
                function = ir.FunctionType(ir.TypeAttr(operation.attributes["function_type"]).value)
                return [str(kind).removeprefix("tensor<").removesuffix(">") for kind in function.inputs]
    return []


def expected_parameters(manifest: Manifest, entry: Module) -> list[str]:
    """The parameter types a module entry promises: its inputs at its batch size and width, then the weights."""
    inputs = iter(entry.inputs)
    expected = []
    for parameter in manifest.parameters:
        shape = next(inputs) if parameter.kind == "input" else parameter.shape
        element = _ELEMENT_TYPES.get(parameter.dtype, parameter.dtype)
        expected.append("x".join([*map(str, shape), element]))
    return expected


def _check_input_memory(manifest: Manifest, file: Path) -> None:
    """The inputs of the largest module (the rows a chunk is padded to) must fit in this machine's memory."""
    available = available_memory()
    for entry in manifest.modules:
        needed = sum(
            int(np.prod(shape, dtype=np.float64)) * numpy_dtype(parameter.dtype).itemsize
            for shape, parameter in zip(entry.inputs, manifest.inputs())
        )
        _need(
            available is None or needed <= available,
            file,
            f"the {module_label(entry.batch_size, entry.seq_len, manifest.length is not None)} module's inputs "
            "alone take "
            f"{needed / 2**30:.1f} GiB, more than the {(available or 0) / 2**30:.1f} GiB of memory available",
        )


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
    """Loads an artifact onto one PJRT device; calling it runs a batch of any size (see the module doc).

    With length buckets (format bertc-stablehlo-2) each chunk of a batch runs at its own width: the length
    step's rule (`bertc.passes.length.rule.batch_length`: the longest real row of input_mask, the smallest bucket that
    holds it, the full length for a mask that is not right-padded) picks the bucket, the inputs are cut to
    it, and the module compiled for (batch size, bucket) runs. `ran` counts the modules each call used."""

    def __init__(
        self,
        path: str | Path,
        platform: str | None = None,
        device_index: int = 0,
        weights: Mapping[str, np.ndarray] | None = None,
    ):
        from jax.extend import backend

        self.folder = stablehlo_folder(path)
        self.manifest = load_manifest(self.folder)
        _check_input_memory(self.manifest, self.folder / MANIFEST)  # NOTE: before anything is allocated
        self.seq_len = self.manifest.seq_len
        length = self.manifest.length
        self.widths = list(length.sizes) if length else [self.seq_len]  # ascending; the last is seq_len
        self.bucketed = length is not None
        self.host = self.manifest.host
        self._modules = {(entry.batch_size, entry.seq_len): entry for entry in self.manifest.modules}
        self.batch_sizes = sorted({batch for batch, _ in self._modules})
        for key, entry in self._modules.items():  # every file the modules name, before anything is compiled
            for kind in ("bytecode", "text"):
                if getattr(entry, kind):
                    artifact_file(self.folder, getattr(entry, kind), f"the {self._label(*key)} module")
        # Weights read from the artifact are checked against the manifest's digests; weights passed in
        # (regenerate_weights, which reports digests itself) by shape and dtype.
        if weights is not None:
            weights = dict(weights)
            check_weights(self.manifest, weights, digests=False, where="the weights passed in")
        else:
            weights = load_weights(self.folder, self.manifest)
        self.input_limits = input_limits(self.manifest, weights)
        self.gate = parity_gate(weights, self.manifest.reference and self.manifest.reference.tolerance)
        self._check_seq_len(weights)
        self.client = _backend(backend, platform)
        devices = self.client.local_devices()
        if device_index >= len(devices):
            raise ServingError(f"device {device_index} asked for, but {self.client.platform} has {len(devices)}.")
        self.device = devices[device_index]
        self._place_weights(weights)
        self._executables: dict[tuple[int, int], object] = {}
        self.compile_seconds: dict = {}  # by batch size; by (batch size, width) when the artifact has buckets
        self.ran: collections.Counter = collections.Counter()  # (batch size, width) -> chunks run

    def _place_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        import jax

        parameters = self.manifest.parameters
        self.input_names = [entry.name for entry in self.manifest.inputs()]
        host_names = set(self.host.weight_names()) if self.host else set()
        self.host_weights = {name: weights[name] for name in host_names}
        # NOTE: the weights go to the device once; every call passes the same device buffers.
        self.device_weights = [
            jax.device_put(weights[entry.name], self.device) for entry in parameters if entry.kind == "weight"
        ]

    def _label(self, batch_size: int, width: int) -> str:
        return module_label(batch_size, width, self.bucketed)

    def _check_seq_len(self, weights: Mapping[str, np.ndarray]) -> None:
        """seq_len is what the modules take (their first input's dimension 1 is their width, the largest width
        seq_len) and what the position table holds."""
        inputs = [entry.name for entry in self.manifest.inputs()]
        first = "embedding_output" if self.host else "input_ids"
        file = self.folder / MANIFEST
        _need(first in inputs, file, f"the modules take no {first}")
        for (batch_size, width), entry in self._modules.items():
            shape = entry.inputs[inputs.index(first)]
            _need(
                len(shape) >= 2 and shape[1] == width,
                file,
                f"the {self._label(batch_size, width)} module's {first} is {shape}, not {width} tokens long",
            )
        table = _table(weights, POSITION_TABLE, self.host, "position_embeddings")
        if table is not None:
            _need(
                np.shape(weights[table])[0] >= self.seq_len,
                file,
                f"seq_len {self.seq_len} exceeds the {np.shape(weights[table])[0]} rows of {table}",
            )

    @property
    def platform(self) -> str:
        return self.client.platform

    def compile(self, batch_sizes=None, threads: int = 1) -> dict:
        """Compile the modules of these batch sizes (default all) at every width now (else each is compiled at its
        first use), `threads` at a time; returns seconds per batch size (per (batch size, width) with buckets)."""
        from concurrent.futures import ThreadPoolExecutor

        keys = [(batch, width) for batch in batch_sizes or self.batch_sizes for width in self.widths]
        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(lambda key: self._executable(*key), keys))
        return dict(self.compile_seconds)

    def _executable(self, batch_size: int, width: int):
        key = (batch_size, width)
        if key not in self._executables:
            entry = self._modules.get(key)
            if entry is None:
                raise ServingError(
                    f"no module for batch {batch_size}, width {key[1]}; compiled batch sizes: {self.batch_sizes}, "
                    f"widths: {self.widths}."
                )
            start = time.perf_counter()
            errors = []
            for kind in ("bytecode", "text"):
                if not getattr(entry, kind):
                    continue
                try:
                    module = self._read_module(entry, kind, self._label(*key))
                except ServingError as error:
                    errors.append(str(error))
                    continue
                self._check_parameters(entry, kind, module, self._label(*key))  # NOTE: before compiling it
                try:
                    self._executables[key] = _compile(self.client, self.device, module)
                    break
                except Exception as error:  # an older consumer may not read the producer's bytecode: try the text
                    errors.append(
                        f"{getattr(entry, kind)}: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
                    )
            else:
                raise ServingError(
                    f"{self.platform} could not compile the {self._label(*key)} module: {'; '.join(errors)}"
                )
            self.compile_seconds[key if self.bucketed else batch_size] = time.perf_counter() - start
        return self._executables[key]

    def _check_parameters(self, entry: Module, kind: str, module: bytes | str, label: str) -> None:
        """The module takes what its manifest entry promises (a relabelled module is refused, not compiled)."""
        found, expected = module_parameters(module), expected_parameters(self.manifest, entry)
        if found is not None and found != expected:
            differ = next((i for i, pair in enumerate(zip(found, expected)) if pair[0] != pair[1]), None)
            where = (
                f"parameter {differ} is tensor<{found[differ]}>, not tensor<{expected[differ]}>"
                if differ is not None
                else f"it takes {len(found)} parameters, not {len(expected)}"
            )
            name = getattr(entry, kind)
            raise ServingError(f"{name} is not the {label} module the manifest lists: {where}; {REBUILD}")

    def _read_module(self, entry: Module, kind: str, label: str) -> bytes | str:
        """A module file's content, checked against its sha256 in the manifest."""
        name = getattr(entry, kind)
        file = artifact_file(self.folder, name, f"the {label} module")
        try:
            content = file.read_bytes()
        except OSError as error:
            raise ServingError(f"{name}: cannot be read ({error})") from None
        if file_digest(content) != getattr(entry, f"{kind}_sha256"):
            raise ServingError(
                f"{name}: does not match its sha256 in the manifest (modified or damaged after the build)"
            )
        if kind == "bytecode":
            return content
        try:
            return content.decode()
        except UnicodeDecodeError as error:
            raise ServingError(f"{name}: cannot be read ({error})") from None

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in SERVING_INPUTS if name not in feeds]
        if missing:
            raise ServingError(
                f"inputs {missing} missing; give {', '.join(SERVING_INPUTS)} (int32 [batch, {self.seq_len}])."
            )
        arrays = {name: np.asarray(feeds[name]) for name in SERVING_INPUTS}
        shapes = {name: array.shape for name, array in arrays.items()}
        if len(set(shapes.values())) != 1 or len(shapes["input_ids"]) != 2 or shapes["input_ids"][1] != self.seq_len:
            raise ServingError(
                f"inputs must be [batch, {self.seq_len}], all alike; got {shapes}. "
                f"Pad or truncate to {self.seq_len} tokens."
            )
        for name, array in arrays.items():
            if not np.issubdtype(array.dtype, np.integer):
                raise ServingError(f"{name} is {array.dtype}; token ids, masks and segment ids are integers.")
        for name, limit in self.input_limits.items():
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

    def lengths(self, input_mask: np.ndarray) -> dict[str, int]:
        """The width a batch (or chunk) runs at, its longest real row and its bucket, as the compiled model's
        `bertc_length` signature computes them; without buckets, always the full length."""
        if not self.bucketed:
            return {"length": self.seq_len}
        return batch_length(input_mask, self.widths)

    def device_inputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Serving inputs (already checked and cut, one chunk) -> the module's input parameters, on the host."""
        return compute_host(self.host, self.host_weights, feeds) if self.host else dict(feeds)

    def run_chunk(self, feeds: Mapping[str, np.ndarray], batch_size: int) -> list:
        """One chunk of at most batch_size rows -> the module's outputs (device arrays, padded): cut to the chunk's
        width (before padding: a padding row is no real row), padded with zero rows to batch_size."""
        import jax

        width = self.lengths(feeds["input_mask"])["length"]
        executable = self._executable(batch_size, width)  # NOTE: checked and compiled before any padding
        rows = len(feeds["input_ids"])
        feeds = {name: array[:, :width] for name, array in feeds.items()}
        if rows < batch_size:
            feeds = {
                name: np.concatenate([array, np.zeros((batch_size - rows, *array.shape[1:]), array.dtype)])
                for name, array in feeds.items()
            }
        inputs = self.device_inputs(feeds)
        entry = self._modules[batch_size, width]
        for name, shape in zip(self.input_names, entry.inputs):
            if list(inputs[name].shape) != shape:  # a runtime bug, not the caller's: say which module and input
                raise ServingError(
                    f"the {self._label(batch_size, width)} module takes {name} {shape}; the runtime made "
                    f"{list(inputs[name].shape)}. Please report this with the artifact."
                )
        arguments = [jax.device_put(inputs[name], self.device) for name in self.input_names]
        self.ran[batch_size, width] += 1
        try:
            return _execute(executable, arguments + self.device_weights)
        except Exception as error:  # noqa: BLE001 (XLA raises its own types): one line, not its traceback
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ServingError(
                f"the {self._label(batch_size, width)} module failed on {self.platform}: {reason}"
            ) from None

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self.check_feeds(feeds)
        names = [entry.name for entry in self.manifest.outputs]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for start, stop, size in self.plan_chunks(len(feeds["input_ids"])):
            outputs = self.run_chunk({name: array[start:stop] for name, array in feeds.items()}, size)
            for name, value in zip(names, outputs):
                parts[name].append(np.asarray(value)[: stop - start])
        if not parts[names[0]]:
            return {  # an output's dimensions after the batch are static
                name: np.zeros((0, *(int(dim or 0) for dim in entry.shape[1:])), np.float32)
                for name, entry in zip(names, self.manifest.outputs)
            }
        return {name: np.concatenate(values) for name, values in parts.items()}

    def self_check(self) -> dict:
        """Run the manifest's reference batches (one per bucket and a fallback one with buckets); the max
        |probability difference| against what the TensorFlow build computed, whether that is within the
        precision's gate, and (with buckets) whether each batch ran at the width the TensorFlow build ran it."""
        file = self.folder / MANIFEST
        diff = logits = 0.0
        examples, widths, disagree = 0, [], []
        for feeds, expected, width in self._reference_batches(file):
            outputs = self(feeds)
            for key, value in expected.items():
                _need(
                    value.shape == outputs[key].shape,
                    file,
                    f"the reference {key} are {list(value.shape)}, the model gives {list(outputs[key].shape)}",
                )
            diff = max(diff, float(np.abs(outputs["probabilities"] - expected["probabilities"]).max(initial=0)))
            logits = max(logits, float(np.abs(outputs["logits"] - expected["logits"]).max(initial=0)))
            examples += len(feeds["input_ids"])
            ours = self.lengths(feeds["input_mask"])["length"]
            widths.append(ours)
            if width is not None and width != ours:
                disagree.append({"ours": ours, "tensorflow": width})
        return {
            "examples": examples,
            "max_abs_diff": diff,
            "logits_max_abs_diff": logits,
            "tolerance": self.gate,
            "widths": widths,
            "width_disagreements": disagree,
            "passed": bool(diff <= self.gate and not disagree),
        }

    def _reference_batches(self, file: Path) -> list[tuple[dict, dict, int | None]]:
        """[(feeds, expected outputs, the width TensorFlow ran it at or None)] from the manifest's reference."""
        reference = self.manifest.reference
        batches = reference.batch_list(self.bucketed) if reference is not None else []
        _need(batches, file, "the reference batch is incomplete: the manifest lists none")
        result = []
        for batch in batches:
            arrays = {name: getattr(batch, name) for name in (*SERVING_INPUTS, "probabilities", "logits")}
            lacks = [name for name, value in arrays.items() if value is None]
            lacks += ["width"] if self.bucketed and batch.width is None else []
            _need(not lacks, file, f"the reference batch is incomplete: it lacks {', '.join(lacks)}")
            _need(not self.bucketed or isinstance(batch.width, int), file, f"a reference width is {batch.width!r}")
            try:
                feeds = {name: np.asarray(arrays[name], np.int32) for name in SERVING_INPUTS}
                expected = {key: np.asarray(arrays[key], np.float32) for key in ("probabilities", "logits")}
            except (TypeError, ValueError) as error:
                raise ServingError(
                    f"{file}: the reference batch is incomplete ({type(error).__name__}: {error}); {REBUILD}"
                ) from None
            result.append((feeds, expected, batch.width if self.bucketed else None))
        return result
