"""precision: the mixed map's rules, spelled by scope as the seed spelled them, in a chosen compute dtype."""

from __future__ import annotations

from bertc.passes.apply_precision_map import PrecisionParams, PrecisionRule

MIXED_RULES = (
    PrecisionRule("*/LayerNorm/*", (), "float32"),
    PrecisionRule("bert/encoder/layer_*/attention/self/*", (), "{dtype}"),
    PrecisionRule("bert/encoder/layer_*/attention/output/dense/*", (), "{dtype}"),
    PrecisionRule("bert/encoder/layer_*/intermediate/*", (), "{dtype}"),
    PrecisionRule("bert/encoder/layer_*/output/dense/*", (), "{dtype}"),
    PrecisionRule("bert/pooler/*", (), "{dtype}"),
    PrecisionRule("loss/*", ("MatMul", "BiasAdd"), "{dtype}"),
)


def mixed(dtype: str) -> PrecisionParams:
    return PrecisionParams(tuple(PrecisionRule(r.scope, r.ops, r.dtype.format(dtype=dtype)) for r in MIXED_RULES))
