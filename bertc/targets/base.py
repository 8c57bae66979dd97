"""The target interface: what the pipeline hands a target (`TargetOptions`, derived by the plan from the
config and the model's shape, with the target's own `params`), what a target does with it (`Target.lower`) and
what that gives (`Artifact`: it warms up, saves itself, opens its saved files with its engine's own runtime for
verify and bench, and says how it serves). A target also declares what the plan checks before anything runs: its
parameters (conf/target/<name>.yaml), the length modes it takes, the batches it builds, its line in the plan.
Nothing here imports TensorFlow: an engine's artifact need not be a SavedModel."""

from __future__ import annotations

import abc
import collections
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bertc.errors import ConfigError
from bertc.schema import derived

# What verify and bench call: bertc's serving inputs (input_ids, input_mask, segment_ids: int32 [batch, seq_len])
# -> {"probabilities", "logits"} (float32 [batch, labels]), computed by the engine that serves the artifact.
Forward = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class TargetOptions:
    name: str  # the target's name, as in target=...
    device: str  # target.device: cpu | gpu | auto
    batch_size: int  # the shape compiled (warmed up) at build time
    seq_len: int  # the model's sequence length
    host_device: str = "/device:CPU:0"  # where a partition's host part runs
    compute_dtype: str = "float32"  # the narrowest dtype of the precision rules (not the preset's name)
    scale_folded: bool = False  # mask.fold_scale: 1/sqrt(head_size) lives in the query weights
    # {"input_ids": vocab size, "segment_ids": type vocab size}: ids outside [0, limit) are refused; None: no guard
    input_limits: Mapping[str, int] | None = None
    precision: str = "fp32"  # the precision preset's label, for manifests
    gate_tolerance: float = 1e-5  # the verify gate the artifact's own self-check uses
    fingerprint: str = ""  # the plan's fingerprint, for manifests
    # (preset size, seed) when the weights are a preset's seeded ones, so a manifest can say how to remake them
    seeded_preset: tuple[str, int] | None = None
    model_shape: Mapping[str, int | float] | None = None  # the BERT shape read at load, for manifests
    keep_signature: bool = False  # removal.keep_signature: the signature also takes label_ids, is_real_example
    length_mode: str = "full"  # length.mode: full | trim | buckets (a target refuses one it cannot run)
    # "int8": the precision map's int8 matmuls (Graph.quantize) are quantized by the engine; "": none
    quantize: str = ""
    params: Any = None  # the target's own parameters: an instance of its `params` dataclass; None: it declares none


class Artifact(Protocol):
    """What a target builds from the rewritten graph, before and after it is saved."""

    def warm_up(self, batch_size: int, seq_len: int) -> Mapping[str, float] | None:
        """Run once at the built shape (an XLA compile happens here, not at the first request); length buckets:
        {bucket: seconds of its first call}."""

    def save(self, path: Path) -> None:
        """Write the artifact's files into the folder `path`, then let go of what it held in memory."""

    def open(self, path: Path, served: Any) -> Forward:
        """The saved files at `path`, loaded with the engine's own runtime, fed under the user's names (`served`:
        bertc.frontends.signature.ServedSignature, or None for bertc's names)."""

    def describe(self, path: Path, run_dir: Path, label: str, user: Mapping) -> dict:
        """For a passed model at `path`: its files, signature and how to serve it (writing any serving layout
        the engine's server wants into `run_dir`); report.json's `serving` entry. `user`: the input model's
        signature as the run read it."""


class EngineArtifact(abc.ABC):
    """An engine's model held in memory until saved, then written as the engine's files (`write_model`) beside
    `info_file`, the JSON record of its conversion (inputs, outputs, versions). The engine compiles the model
    when the saved files are opened, so there is nothing to warm up; `open` and `describe` are the engine's."""

    info_file: str  # the JSON record's name in the saved folder, set by each engine

    def __init__(self, model: Any, info: dict):
        self.model, self.info = model, info

    def warm_up(self, batch_size: int, seq_len: int) -> None:
        return None  # the engine builds its session when the saved model is opened

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.write_model(path)
        (path / self.info_file).write_text(json.dumps(self.info, indent=2) + "\n")
        self.model = None  # the weights are in the engine's files now

    @abc.abstractmethod
    def write_model(self, path: Path) -> None:
        """The in-memory model as the engine's files in the folder `path`."""

    def saved_info(self, path: Path) -> dict:
        """The JSON record `save` wrote into `path`."""
        return json.loads((path / self.info_file).read_text())


class Target(Protocol):
    """One way of compiling the rewritten graph. `check_available` runs before any work. The registry imports the
    module that defines it without TensorFlow (bertc/targets/__init__.py): the plan reads the declarations."""

    name: str
    # A frozen dataclass of the target's own config keys, read from the `target` group (conf/target/<name>.yaml)
    # like a pass's params (bertc/schema.py: bounded, choice; `derived` fields come from `derive`); None: no keys.
    params: type | None
    quantizes: bool  # whether it takes a precision map with int8 rules (TargetOptions.quantize)
    # The TensorFlow runtime the artifact's math runs in when it serves on a CPU ("tf" or "xla"), for the
    # precision probe (bertc/driver/hardware.py); None where the math runs elsewhere (Inferentia).
    probe_runtime: str | None
    # Its compiled functions have static shapes: length=trim is refused (a compile per distinct length) and
    # length=pack buckets its row count (bertc/passes/length/modes.py).
    static_shapes: bool
    pack_refused: str  # why it cannot run length=pack, as a sentence; "" where it can
    # How many copies of the model's float32 weights the process holds at its peak, compiling and serving (measured;
    # bench/compile_memory.py): the memory check's factor (bertc/driver/limits.py, estimated_peak_bytes).
    weight_copies: float

    def derive(self, facts: Mapping[str, Any]) -> dict:
        """The `derived` fields of `params`, from the plan's facts (the precision step's parameters, ...)."""

    def describe(self, params: Any) -> str:
        """What its parameters add to the plan's target line; "" for nothing."""

    def batches(self, params: Any) -> list[tuple[int, str]]:
        """(size, config key) of each batch it builds beyond shape.batch_size, for the memory check."""

    def check_available(self, options: TargetOptions) -> None: ...

    def serves_on_cpu(self, options: TargetOptions) -> bool:
        """Whether the artifact's math runs in `probe_runtime` on this machine's CPU."""

    def lower(self, graph: Any, options: TargetOptions) -> Artifact:
        """The rewritten Graph -> the artifact (not yet saved)."""

    def engine_versions(self, quantize: str = "") -> dict[str, str]:
        """The versions of the engine the artifact is built for, beyond TensorFlow's: in the fingerprint. `quantize`:
        the plan's ("int8" or ""), where a quantizer of its own builds the artifact too."""


class BaseTarget:
    """What a target declares unless it says otherwise: no keys of its own, no int8, no TensorFlow runtime to probe,
    dynamic shapes (every length mode), nothing to add to the plan, no batch beyond the plan's, nothing to check."""

    name = ""
    params: type | None = None
    quantizes = False
    probe_runtime: str | None = None
    static_shapes = False
    pack_refused = ""
    weight_copies = 3.0  # the reader's, the compiled model's, the original's

    def derive(self, facts: Mapping[str, Any]) -> dict:
        return {}

    def describe(self, params: Any) -> str:
        return ""

    def batches(self, params: Any) -> list[tuple[int, str]]:
        return []

    def check_available(self, options: TargetOptions) -> None:
        pass

    def serves_on_cpu(self, options: TargetOptions) -> bool:
        return False

    def engine_versions(self, quantize: str = "") -> dict[str, str]:
        return {}


class SavedModelTarget(BaseTarget):
    """The common case: a TensorFlow SavedModel served by TensorFlow (bertc.targets.serving.SavedModelArtifact)."""

    quantizes = False  # TensorFlow has no int8 path at speed on CPU: the engine targets quantize
    probe_runtime: str | None = "tf"

    def check_available(self, options: TargetOptions) -> None:
        from bertc.targets.devices import resolve_device

        resolve_device(options.device)

    def serves_on_cpu(self, options: TargetOptions) -> bool:
        from bertc.targets.devices import resolve_device

        return self.probe_runtime is not None and resolve_device(options.device) == "/device:CPU:0"

    def engine_versions(self, quantize: str = "") -> dict[str, str]:
        return {}  # TensorFlow's version is in every fingerprint already


@dataclasses.dataclass(frozen=True)
class Int8Params:
    """What a quantizing target reads of the precision step's int8 settings; the plan derives them (they stay keys
    of the precision group: precision.activations, precision.calibration_batches)."""

    activations: str = derived("dynamic")  # dynamic (per call) or static (calibrated at build time)
    calibration_batches: int = derived(8)  # static: seeded batches the activation ranges are read from


class QuantizingTarget(BaseTarget):
    """An engine that quantizes the precision map's int8 matmuls itself (ONNX Runtime, OpenVINO): its math runs
    outside TensorFlow, so the precision probe does not apply."""

    params: type | None = Int8Params
    quantizes = True
    float32_only = ""  # why the engine takes precision=fp32 or int8 only (said when a narrower float is asked)

    def derive(self, facts: Mapping[str, Any]) -> dict:
        precision = facts["precision"]
        return {"activations": precision.activations, "calibration_batches": precision.calibration_batches}

    def refuse_gpu_and_narrow_floats(self, options: TargetOptions) -> None:
        """The engine runs here on the CPU, in float32 or int8: a GPU device or a float16/bfloat16 plan is refused."""
        if options.device == "gpu":
            raise ConfigError(f"target={self.name} runs on the CPU here; use target.device=cpu (or auto).")
        if options.compute_dtype != "float32":
            raise ConfigError(
                f"target={self.name} takes precision=fp32 or int8 (this plan computes in {options.compute_dtype}): "
                f"{self.float32_only} Use precision=fp32 or int8."
            )


def engine_node_names(marked: Iterable[str], found: list[str], engine: str) -> dict[str, str]:
    """TensorFlow node name -> the engine's name for that node (int8's marked matmuls): converters keep TensorFlow's
    names, under the prefix of the function they traced (tf2onnx: StatefulPartitionedCall/...; OpenVINO: none
    today); the one prefix under which every marked name is among `found` is the engine's."""
    from bertc.errors import ModelError

    marked = list(marked)
    prefixes: collections.Counter = collections.Counter()
    for name in marked:
        prefixes.update({each[: -len(name)] for each in found if each == name or each.endswith("/" + name)})
    common = [prefix for prefix, count in prefixes.items() if count == len(marked)]
    if len(common) != 1:
        missing = [name for name in marked if not any(each.endswith(name) for each in found)]
        raise ModelError(
            f"the {engine} model does not hold the matmuls precision=int8 marked ({len(marked)} marked; not found: "
            f"{missing[:3]}; {len(common)} common name prefixes). This is a bertc fault: please report it with the "
            "run's report.json."
        )
    return {name: common[0] + name for name in marked}
