"""A target=stablehlo artifact's manifest.json as records: written by bertc/targets/stablehlo.py from these
dataclasses, read back by the runtime through `parse_manifest`, every field's type and range checked and a bad one
named (`manifest.modules[2].batch_size: expected an integer from 1 to 1048576, got "8"`).

The runtime's checks that relate fields to each other, to the files and to this machine (module per batch size
and width, weights listed, the memory bound) are bertc/runtime/stablehlo.py's; these only say what each field is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bertc.runtime.records import field, from_json, to_json

# What a manifest may ask, bounded before anything is allocated or compiled: batch sizes as target.batch_sizes
# allows (bertc/driver/config.py: BATCH).
MAX_BATCH_SIZE = 1 << 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tensor:
    """A serving input or an output: its name, dtype and shape (the batch null)."""

    name: str
    dtype: str
    shape: list[int | None] = field(low=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Length:
    """length=buckets: the widths the modules run at, and the rule that picks one (bertc.runtime.portable)."""

    mode: str = field(choices=("buckets",))
    sizes: list[int] = field(low=1, filled=True)
    rule: str
    computed_by: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerNormRecipe:
    gamma: str
    beta: str
    epsilon: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddingRecipe:
    word_embeddings: str
    token_type_embeddings: str
    position_embeddings: str
    layer_norm: LayerNormRecipe
    dtype: str
    formula: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskRecipe:
    form: str = field(choices=("bias", "mask"))
    bias_value: float | None = field(omitted=True)  # form bias only
    dtype: str
    shape: list[int | None] = field(low=0)
    formula: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostRecipe:
    """The host part (partition=cpu_embed) as NumPy computes it: bertc.runtime.portable.compute_host."""

    embedding_output: EmbeddingRecipe
    attention_mask: MaskRecipe

    def weight_names(self) -> list[str]:
        embedding = self.embedding_output
        norm = embedding.layer_norm
        return [
            embedding.word_embeddings,
            embedding.token_type_embeddings,
            embedding.position_embeddings,
            norm.gamma,
            norm.beta,
        ]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Module:
    """One StableHLO module: its batch size and width, each input's static shape, its files and their digests."""

    batch_size: int = field(low=1, high=MAX_BATCH_SIZE)
    seq_len: int = field(low=1)
    inputs: list[list[int]] = field(low=0)
    text: str | None = None
    text_sha256: str | None = None
    bytecode: str | None = None
    bytecode_sha256: str | None = None
    stablehlo_version: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Parameter:
    """A module parameter, in order: the inputs (batch and bucketed widths null), then the weights."""

    kind: str = field(choices=("input", "weight"))
    name: str
    shape: list[int | None] = field(low=0)
    dtype: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightTensor:
    shape: list[int] = field(low=0)
    dtype: str
    sha256: str
    source: str  # the seeded weight it was drawn as
    scale: float | None  # fold_scale's factor, replayed on the draw


@dataclasses.dataclass(frozen=True, kw_only=True)
class Regeneration:
    """How a preset's seeded weights are remade with NumPy (bertc.model.weights.random_weight)."""

    generator: str
    size: str
    seed: int
    initializer_range: float
    steps: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Weights:
    file: str
    regenerate: Regeneration | None
    regenerate_note: str | None = field(omitted=True)  # why the weights cannot be regenerated
    tensors: dict[str, WeightTensor]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReferenceBatch:
    """Serving inputs and what the TensorFlow build computed for them (nested lists: NumPy checks them)."""

    input_ids: list | None = field(omitted=True)
    input_mask: list | None = field(omitted=True)
    segment_ids: list | None = field(omitted=True)
    # length=buckets: the width the TensorFlow build ran the batch at; checked by the self-check (--check), so that
    # a damaged reference refuses the check, not the serving
    width: Any = field(omitted=True)
    probabilities: list | None = field(omitted=True)
    logits: list | None = field(omitted=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reference(ReferenceBatch):
    """The runtime's self-check: one batch (its fields here), or with length buckets `batches`."""

    batches: list[ReferenceBatch] | None = field(omitted=True)
    tolerance: float | None = None
    note: str | None = None

    def batch_list(self, bucketed: bool) -> list[ReferenceBatch]:
        return list(self.batches or []) if bucketed else [self]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest:
    format: str
    fingerprint: str | None = None
    precision: str | None = None
    seq_len: int = field(low=1)
    length: Length | None = None
    model_shape: dict[str, Any] | None = None
    tensorflow: str | None = None
    serving_inputs: list[Tensor] = dataclasses.field(default_factory=list)
    input_limits: dict[str, int] | None = None
    host: HostRecipe | None = None
    modules: list[Module] = field(filled=True)
    parameters: list[Parameter] = field(filled=True)
    outputs: list[Tensor]
    weights: Weights
    reference: Reference | None = None

    def inputs(self) -> list[Parameter]:
        return [parameter for parameter in self.parameters if parameter.kind == "input"]


def parse_manifest(value: Mapping, where: str = "manifest") -> Manifest:
    """A parsed manifest.json -> the Manifest; RecordError naming the first bad field."""
    return from_json(Manifest, value, where)


def manifest_json(manifest: Manifest) -> dict:
    """The Manifest -> the JSON object manifest.json holds (keys in the fields' order)."""
    return to_json(manifest)
