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

from bertc import targets
from bertc.driver.config import BenchConf, ModelInput, SecurityConf, ShapeConf, TargetConf, VerifyConf
from bertc.driver.limits import RunLimits, run_limits  # value checks and time limits
from bertc.errors import ConfigError
from bertc.passes import passes
from bertc.schema import check_choice, config_fields, from_config

# The canonical step order, read from the passes' own `after` declarations (each with its NOTE).
STEP_ORDER: tuple[tuple[str, str], ...] = tuple((spec.group, spec.name) for spec in passes())
PRECISION_GATES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
QUANTIZED_GATE = "int8"  # a precision map with int8 rules: gated on argmax agreement (bertc/evaluate/verify.py)


@dataclasses.dataclass(frozen=True)
class Step:
    group: str
    name: str
    params: Any


@dataclasses.dataclass(frozen=True)
class Plan:
    model: ModelInput
    steps: tuple[Step, ...]
    target: TargetConf
    shape: ShapeConf
    verify: VerifyConf
    bench: BenchConf
    security: SecurityConf
    precision: str = "fp32"  # the precision preset's name, a label for reports
    compute_dtype: str = "float32"  # the narrowest dtype the precision rules use
    gate: str = "fp32"  # which verify gate applies: that of the compute dtype, or int8's
    limits: RunLimits = dataclasses.field(default_factory=RunLimits)  # time limits: not fingerprinted
    # what the passes say of their groups (Pass.facts), by name: quantize, keep_signature, host_device, scale_folded,
    # length_mode. Not in artifact_spec as such: each follows from the steps' parameters or the groups' labels
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def allow_ops(self) -> tuple[str, ...]:
        return self.security.allow_ops

    def step_params(self, group: str):
        return next((step.params for step in self.steps if step.group == group), None)

    @property
    def length_mode(self) -> str:
        """The length mode as it runs (a fact of the length pass: full when its step is off)."""
        return self.facts["length_mode"]

    @property
    def quantize(self) -> str:
        """ "int8": the precision map has int8 rules, for the engine to quantize; "": none (precision's fact)."""
        return self.facts["quantize"]

    @property
    def keep_signature(self) -> bool:
        """The served signature keeps run_classifier's two training inputs (a fact of removal's label)."""
        return self.facts["keep_signature"]

    def artifact_spec(self) -> dict:
        """Everything about the plan that can change the compiled model."""
        return {
            "steps": [{"name": step.name, "params": _plain(step.params)} for step in self.steps],
            # NOTE: the time limit never changes the artifact: it stays out of the fingerprint.
            "target": {
                **{key: value for key, value in _plain(self.target).items() if key not in ("timeout_s", "params")},
                **_own_keys(self.target.params),
                **_plain(self.shape),
                "guard_inputs": self.security.guard_inputs,
                "keep_signature": self.keep_signature,
            },
            # the served input names follow model.inputs; listed only when set, so other fingerprints stay
            **(
                {"signature": {"inputs": self.model.named_inputs, "output": self.model.output}}
                if self.model.named_inputs or self.model.output
                else {}
            ),
        }

    def to_dict(self) -> dict:
        return {
            "model": {"kind": self.model.kind, **_plain(self.model)},
            **self.artifact_spec(),
            "verify": _plain(self.verify),
            "bench": _plain(self.bench),
            "security": _plain(self.security),
            "limits": _plain(self.limits),
        }

    def describe(self) -> list[str]:
        """The plan as a person reads it, one line per item (printed before anything runs)."""
        source = self.model.path or (
            f"packaged {self.model.packaged}"
            if self.model.packaged
            else f"preset {self.model.size} (seed {self.model.seed})"
        )
        lines = [f"input    {self.model.name}: {source}"]
        described = {spec.name: spec.describe for spec in passes()}
        for number, step in enumerate(self.steps, 1):
            describe = described[step.name]
            first, *below = describe(step.params) if describe else [_describe_params(step.params)]
            lines.append(f"step {number}   {step.name}  {first}")
            lines += [f"           {line}" for line in below]
        if not self.steps:
            lines.append("steps    none: the graph is compiled as loaded")
        target = self.target
        lines.append(
            f"target   {target.name} on {target.device}, warm-up batch {self.shape.batch_size}, "
            f"seq_len {self.shape.seq_len or 'from model'}, input guard {'on' if self.security.guard_inputs else 'off'}"
            + (
                f", threads intra={target.intra_op_threads} inter={target.inter_op_threads}"
                if target.intra_op_threads or target.inter_op_threads
                else ""
            )
            + (f", {line}" if (line := targets.get(target.name).describe(target.params)) else "")
            + (", signature keeps label_ids and is_real_example" if self.keep_signature else "")
        )
        verify = self.verify
        lines.append(
            "verify   off"
            if not verify.enabled
            else f"verify   {verify.batches} synthetic batches of {verify.batch_size} (seed {verify.seed})"
            + (f" + {verify.dataset}" if verify.dataset else "")
            + f", gate {self.gate}"
            + (f" tolerance {verify.tolerance}" if verify.tolerance is not None and not self.quantize else "")
            + (f" agreement >= {verify.min_agreement}" if verify.min_agreement is not None and self.quantize else "")
        )
        bench = self.bench
        lines.append(
            "bench    off"
            if not bench.enabled
            else f"bench    batch sizes {list(bench.batch_sizes)}, "
            f"{bench.rounds} interleaved rounds of {bench.seconds}s"
        )
        return lines


def _own_keys(params: Any) -> dict:
    """A target's own keys as the config gives them (what it derives from other groups is theirs)."""
    return {field.name: _plain(getattr(params, field.name)) for field in config_fields(type(params))} if params else {}


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


def build_plan(cfg: Any) -> Plan:
    """A composed config (DictConfig or schema instance) -> Plan; raises ConfigError on bad values."""
    model = from_config(ModelInput, cfg.model, "model")
    if model.path and model.name == "demo":
        model = dataclasses.replace(model, name="user")
    compute_dtype = _narrowest_dtype(cfg.precision)
    target = from_config(TargetConf, cfg.target, "target")
    facts = {"compute_dtype": compute_dtype, "target": targets.get(target.name), "length": cfg.length}
    steps: list[Step] = []
    built: dict[str, Any] = {}  # every group's parameters, of the steps that do not run too
    step_facts: dict[str, Any] = {}  # what each pass says of its group (Pass.facts), whether its step runs or not
    for spec in passes():
        node = cfg[spec.group]
        for key in spec.config_keys:
            if key.choices:
                check_choice(node[key.name], key.choices, f"{spec.group}.{key.name}")
        # NOTE: every group's values are checked, the steps that do not run included: a bad value is refused
        # where it enters, not later when the step is switched on
        params = built[spec.group] = from_config(spec.params, node, spec.group, **spec.derive(facts))
        runs = spec.runs(node)
        step_facts.update(spec.facts(params if runs else None, node))
        if runs:
            steps.append(Step(spec.group, spec.name, params))
    plan = Plan(
        model=model,
        steps=tuple(steps),
        # the precision step's parameters: the int8 settings a quantizing target derives its own from
        target=dataclasses.replace(target, params=_target_params(cfg.target, target.name, built["precision"])),
        shape=from_config(ShapeConf, cfg.shape, "shape"),
        verify=from_config(VerifyConf, cfg.verify, "verify"),
        bench=from_config(BenchConf, cfg.bench, "bench"),
        security=from_config(SecurityConf, cfg.security, "security"),
        precision=cfg.precision.name,
        compute_dtype=compute_dtype,
        gate=QUANTIZED_GATE if step_facts["quantize"] else PRECISION_GATES[compute_dtype],
        limits=run_limits(cfg),  # tolerance, threads, timeouts, slowdown
        facts=step_facts,
    )
    _check_values(plan)
    return plan


def _target_params(node: Any, chosen: str, precision: Any) -> Any:
    """The chosen target's own parameters, read from the `target` group. NOTE: every target's keys are checked, the
    targets not chosen included: a bad value is refused where it enters, as a pass's are."""
    found = {}
    for name in targets.TARGETS:
        target = targets.get(name)
        if target.params is not None:
            found[name] = from_config(target.params, node, "target", **target.derive({"precision": precision}))
    return found.get(chosen)


def _check_values(plan: Plan) -> None:
    """What a type cannot say: sizes at least 1, lists not empty."""
    shape, verify, bench = plan.shape, plan.verify, plan.bench
    if shape.batch_size < 1:
        raise ConfigError(f"shape.batch_size={shape.batch_size} must be at least 1.")
    if shape.seq_len is not None and shape.seq_len < 1:
        raise ConfigError(f"shape.seq_len={shape.seq_len} must be positive.")
    if bench.enabled and (not bench.batch_sizes or min(bench.batch_sizes) < 1):
        raise ConfigError(f"bench.batch_sizes={list(bench.batch_sizes)} needs at least one size, each >= 1.")
    if verify.enabled and (verify.batches < 1 or verify.batch_size < 1):
        raise ConfigError("verify.batches and verify.batch_size must be at least 1 (or verify=off).")


def _narrowest_dtype(precision: Any) -> str:
    """The narrowest dtype any precision rule uses: the attention's compute dtype."""
    dtypes = {rule.dtype for rule in precision.rules}
    return next((dtype for dtype in ("float16", "bfloat16") if dtype in dtypes), "float32")
