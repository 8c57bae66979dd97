"""Targets: (rewritten Graph, TargetParams, seq_len) -> a tf.Module whose `serve` is saved as the SavedModel.

`check_available` runs before any work, so a missing toolchain fails the run at once.
"""
from bertc.targets import neuron, stablehlo, tf_runtime, xla

REGISTRY = {"tf": tf_runtime, "xla": xla, "neuron": neuron, "stablehlo": stablehlo}


def get(name: str):
    if name not in REGISTRY:
        raise KeyError(f"unknown target {name!r}; targets: {', '.join(REGISTRY)}")
    return REGISTRY[name]
