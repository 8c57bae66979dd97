"""The target interface: what the pipeline hands a target (`TargetOptions`, derived by the plan from the
config and the model's shape) and what a target must do with it (`Target`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


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
    dynamic_batch: bool = True  # neuron: serve any batch from a static-batch compile
    batch_sizes: tuple[int, ...] = (1, 8)  # stablehlo: one module per static batch size
    precision: str = "fp32"  # the precision preset's label, for manifests
    gate_tolerance: float = 1e-5  # the verify gate the artifact's own self-check uses
    fingerprint: str = ""  # the plan's fingerprint, for manifests
    # (preset size, seed) when the weights are a preset's seeded ones, so a manifest can say how to remake them
    seeded_preset: tuple[str, int] | None = None
    model_shape: Mapping[str, int | float] | None = None  # the BERT shape read at load, for manifests
    keep_signature: bool = False  # removal.keep_signature: the signature also takes label_ids, is_real_example
    length_mode: str = "full"  # length.mode: full | trim | buckets (a target refuses one it cannot run)


class Target(Protocol):
    """One way of compiling the rewritten graph. `check_available` runs before any work."""

    name: str
    # The TensorFlow runtime the artifact's math runs in when it serves on a CPU ("tf" or "xla"), for the
    # precision probe (bertc/hardware.py); None where the math runs elsewhere (Inferentia).
    probe_runtime: str | None

    def check_available(self, options: TargetOptions) -> None: ...

    def serves_on_cpu(self, options: TargetOptions) -> bool:
        """Whether the artifact's math runs in `probe_runtime` on this machine's CPU."""

    def lower(self, graph: Any, options: TargetOptions) -> Any:
        """The rewritten Graph -> a tf.Module with a `serve` function (not yet saved)."""

    def save(self, module: Any, path: Path, options: TargetOptions) -> None:
        """Write the module as a SavedModel at `path`, plus anything the target adds beside it."""


class SavedModelTarget:
    """The common case: lower to a module, save it as a SavedModel, nothing more."""

    name = ""
    probe_runtime: str | None = "tf"

    def check_available(self, options: TargetOptions) -> None:
        from bertc.targets.devices import resolve_device

        resolve_device(options.device)

    def serves_on_cpu(self, options: TargetOptions) -> bool:
        from bertc.targets.devices import resolve_device

        return self.probe_runtime is not None and resolve_device(options.device) == "/device:CPU:0"

    def save(self, module: Any, path: Path, options: TargetOptions) -> None:
        from bertc.targets.serving import save_compiled

        save_compiled(module, path, keep_signature=options.keep_signature)
