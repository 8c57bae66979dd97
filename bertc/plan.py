"""A composed config -> a Plan: the input, the ordered steps with typed parameters, target, verify, bench.

The canonical step order is data (STEP_ORDER); config switches steps on and sets their
parameters, never reorders them. The fingerprint hashes everything that can change the compiled
artifact (steps, parameters, target, shapes, input digest, library versions) and nothing else:
no paths, no times, no verify or bench settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from bertc.errors import ConfigError
from bertc.passes import MaskParams, PartitionParams, PrecisionParams, PrecisionRule, RemovalParams

STEP_ORDER: tuple[tuple[str, str], ...] = (
    # NOTE: removal first: later steps match structure without Identity reads and asserts in the way.
    ("removal", "remove_training_ops"),
    # NOTE: mask before precision: one shared bias then needs one cast, not one per layer.
    ("mask", "rewrite_attention_mask"),
    # NOTE: precision before partition: the boundary tensors carry their final dtypes.
    ("precision", "apply_precision_map"),
    # NOTE: partition last: it places the nodes every earlier step made.
    ("partition", "partition_graph"),
)
TARGETS = ("tf", "xla", "neuron", "stablehlo")
DEVICES = ("auto", "cpu", "gpu")
PRECISION_DTYPES = ("float32", "float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    kind: str  # preset | path | packaged
    name: str
    path: str | None = None
    size: str | None = None
    packaged: str | None = None
    seq_len: int = 128
    num_labels: int = 2
    seed: int = 0
    inputs: tuple[tuple[str, str], ...] = ()  # model.inputs: (bertc name, signature key)
    output: str | None = None  # model.output


@dataclasses.dataclass(frozen=True)
class Step:
    group: str
    name: str
    params: Any


@dataclasses.dataclass(frozen=True)
class TargetParams:
    name: str = "tf"
    device: str = "auto"
    batch_size: int = 8
    seq_len: int | None = None
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    dynamic_batch: bool = True
    guard_inputs: bool = True
    batch_sizes: tuple[int, ...] = (1, 8)  # target=stablehlo: the static batch sizes it emits a module for


@dataclasses.dataclass(frozen=True)
class VerifyParams:
    enabled: bool = True
    batches: int = 4
    batch_size: int = 8
    seed: int = 0
    dataset: str | None = None
    max_examples: int | None = None
    tolerance: float | None = None
    precision: str = "fp32"


@dataclasses.dataclass(frozen=True)
class BenchParams:
    enabled: bool = True
    batch_sizes: tuple[int, ...] = (1, 8)
    rounds: int = 3
    seconds: float = 1.5
    warmup: int = 2


@dataclasses.dataclass(frozen=True)
class Plan:
    model: ModelSource
    steps: tuple[Step, ...]
    target: TargetParams
    verify: VerifyParams
    bench: BenchParams
    allow_ops: tuple[str, ...] = ()
    precision: str = "fp32"

    def artifact_spec(self) -> dict:
        """Everything about the plan that can change the compiled model."""
        return {
            "steps": [{"name": step.name, "params": _plain(step.params)} for step in self.steps],
            "target": _plain(self.target),
            # the served input names follow model.inputs; listed only when set, so other fingerprints stay
            **({"signature": {"inputs": dict(self.model.inputs), "output": self.model.output}}
               if self.model.inputs or self.model.output else {}),
        }

    def to_dict(self) -> dict:
        return {
            "model": _plain(self.model),
            **self.artifact_spec(),
            "verify": _plain(self.verify),
            "bench": _plain(self.bench),
            "security": {"allow_ops": list(self.allow_ops)},
        }

    def describe(self) -> list[str]:
        """The plan as a person reads it, one line per item (printed before anything runs)."""
        source = self.model.path or (f"packaged {self.model.packaged}" if self.model.packaged else f"preset {self.model.size} (seed {self.model.seed})")
        lines = [f"input    {self.model.name}: {source}"]
        for number, step in enumerate(self.steps, 1):
            if isinstance(step.params, PrecisionParams):
                lines.append(f"step {number}   {step.name}  (first matching rule wins; the rest stays float32)")
                lines += [f"           {rule.describe()}" for rule in step.params.rules]
            else:
                lines.append(f"step {number}   {step.name}  {_describe_params(step.params)}")
        if not self.steps:
            lines.append("steps    none: the graph is compiled as loaded")
        target = self.target
        lines.append(
            f"target   {target.name} on {target.device}, warm-up batch {target.batch_size}, "
            f"seq_len {target.seq_len or 'from model'}, input guard {'on' if target.guard_inputs else 'off'}"
            + (f", threads intra={target.intra_op_threads} inter={target.inter_op_threads}" if target.intra_op_threads or target.inter_op_threads else "")
            + (f", StableHLO modules for batch sizes {list(target.batch_sizes)}" if target.name == "stablehlo" else "")
        )
        verify = self.verify
        lines.append(
            "verify   off" if not verify.enabled else
            f"verify   {verify.batches} synthetic batches of {verify.batch_size} (seed {verify.seed})"
            + (f" + {verify.dataset}" if verify.dataset else "")
            + f", gate {verify.precision}" + (f" tolerance {verify.tolerance}" if verify.tolerance is not None else "")
        )
        bench = self.bench
        lines.append(
            "bench    off" if not bench.enabled else
            f"bench    batch sizes {list(bench.batch_sizes)}, {bench.rounds} interleaved rounds of {bench.seconds}s"
        )
        return lines


def _describe_params(params: Any) -> str:
    return ", ".join(f"{key}={value}" for key, value in _plain(params).items())


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def versions() -> dict[str, str]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "absent"

    return {
        "bertc": version("bertc"),
        "tensorflow": version("tensorflow"),
        "hydra-core": version("hydra-core"),
        "omegaconf": version("omegaconf"),
        "numpy": version("numpy"),
        "python": platform.python_version(),
    }


def fingerprint(plan: Plan, input_digest: str, library_versions: Mapping[str, str]) -> str:
    payload = {"plan": plan.artifact_spec(), "input": input_digest, "versions": dict(library_versions)}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _one_of(value: str, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}.")
    return value


def build_plan(cfg: Any) -> Plan:
    """A composed config (DictConfig or Config dataclass) -> Plan; raises ConfigError on bad values."""
    model = cfg.model
    if model.path:
        source = ModelSource("path", model.name if model.name != "demo" else "user", path=str(model.path),
                             seq_len=model.seq_len, num_labels=model.num_labels, seed=model.seed,
                             inputs=tuple(sorted((key, value) for key, value in
                                                 dict(getattr(model, "inputs", None) or {}).items() if value)),
                             output=getattr(model, "output", None))
    elif model.packaged:
        source = ModelSource("packaged", model.name, packaged=model.packaged, seq_len=model.seq_len,
                             num_labels=model.num_labels, seed=model.seed)
    else:
        source = ModelSource("preset", model.name, size=model.size, seq_len=model.seq_len,
                             num_labels=model.num_labels, seed=model.seed)

    steps: list[Step] = []
    narrowest = _narrowest_dtype(cfg.precision)
    for group, name in STEP_ORDER:
        params = _step_params(cfg, group, narrowest)
        if params is not None:
            steps.append(Step(group, name, params))

    target = cfg.target
    _one_of(target.name, TARGETS, "target.name")
    _one_of(target.device, DEVICES, "target.device")
    if cfg.shape.batch_size < 1:
        raise ConfigError(f"shape.batch_size={cfg.shape.batch_size} must be at least 1.")
    if target.name == "stablehlo" and (not target.batch_sizes or min(target.batch_sizes) < 1):
        raise ConfigError(f"target.batch_sizes={list(target.batch_sizes)} needs at least one size, each >= 1.")
    if cfg.shape.seq_len is not None and cfg.shape.seq_len < 1:
        raise ConfigError(f"shape.seq_len={cfg.shape.seq_len} must be positive.")
    verify, bench = cfg.verify, cfg.bench
    if bench.enabled and (not bench.batch_sizes or min(bench.batch_sizes) < 1):
        raise ConfigError(f"bench.batch_sizes={list(bench.batch_sizes)} needs at least one size, each >= 1.")
    if verify.enabled and (verify.batches < 1 or verify.batch_size < 1):
        raise ConfigError("verify.batches and verify.batch_size must be at least 1 (or verify=off).")
    return Plan(
        model=source,
        steps=tuple(steps),
        target=TargetParams(target.name, target.device, cfg.shape.batch_size, cfg.shape.seq_len,
                            target.intra_op_threads, target.inter_op_threads, target.dynamic_batch,
                            cfg.security.guard_inputs, tuple(sorted(set(target.batch_sizes)))),
        verify=VerifyParams(verify.enabled, verify.batches, verify.batch_size, verify.seed,
                            verify.dataset, verify.max_examples, verify.tolerance, _gate_name(cfg.precision)),
        bench=BenchParams(bench.enabled, tuple(bench.batch_sizes), bench.rounds, bench.seconds, bench.warmup),
        allow_ops=tuple(cfg.security.allow_ops),
        precision=cfg.precision.name,
    )


def _narrowest_dtype(precision: Any) -> str:
    dtypes = {rule.dtype for rule in precision.rules}
    for dtype in ("float16", "bfloat16"):
        if dtype in dtypes:
            return dtype
    return "float32"


def _gate_name(precision: Any) -> str:
    """Which verify gate applies: the narrowest dtype any rule uses."""
    return {"float16": "fp16", "bfloat16": "bf16"}.get(_narrowest_dtype(precision), "fp32")


def _step_params(cfg: Any, group: str, narrowest: str) -> Any:
    if group == "removal":
        return RemovalParams(tuple(cfg.removal.ops)) if cfg.removal.enabled else None
    if group == "mask":
        mode = _one_of(cfg.mask.mode, ("original", "reimpl"), "mask.mode")
        if mode == "original":
            return None
        return MaskParams(float(cfg.mask.bias_value), bool(cfg.mask.fold_scale), narrowest)
    if group == "precision":
        rules = tuple(
            PrecisionRule(rule.scope, tuple(rule.ops), _one_of(rule.dtype, PRECISION_DTYPES, "precision rule dtype"))
            for rule in cfg.precision.rules
        )
        return PrecisionParams(rules) if rules else None
    if group == "partition":
        mode = _one_of(cfg.partition.mode, ("none", "cpu_embed"), "partition.mode")
        if mode == "none":
            return None
        return PartitionParams(tuple(cfg.partition.boundaries), cfg.partition.host_device)
    raise AssertionError(group)
