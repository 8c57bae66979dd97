"""The rewrite steps: name -> (pass function, its parameter type). Each pass is `graph, params -> PassResult`."""
from bertc.passes.apply_precision_map import PrecisionParams, PrecisionRule, apply_precision_map
from bertc.passes.partition_graph import PartitionParams, partition_graph
from bertc.passes.remove_training_ops import RemovalParams, remove_training_ops
from bertc.passes.rewrite_attention_mask import MaskParams, rewrite_attention_mask
from bertc.passes.trim_sequence_length import LengthParams, trim_sequence_length

REGISTRY = {
    "remove_training_ops": (remove_training_ops, RemovalParams),
    "rewrite_attention_mask": (rewrite_attention_mask, MaskParams),
    "trim_sequence_length": (trim_sequence_length, LengthParams),
    "apply_precision_map": (apply_precision_map, PrecisionParams),
    "partition_graph": (partition_graph, PartitionParams),
}

__all__ = [
    "REGISTRY", "LengthParams", "MaskParams", "PartitionParams", "PrecisionParams", "PrecisionRule", "RemovalParams",
]
