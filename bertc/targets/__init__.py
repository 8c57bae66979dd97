"""Targets: (rewritten Graph, TargetOptions) -> a tf.Module whose `serve` is saved as the SavedModel.

Each target module defines `TARGET`, an object with the `Target` interface (bertc/targets/base.py).
This file only lists them, without importing them (TensorFlow loads when a compile starts).
"""

from __future__ import annotations

import importlib

TARGETS = {
    "tf": "bertc.targets.tf_runtime",
    "xla": "bertc.targets.xla",
    "neuron": "bertc.targets.neuron",
    "stablehlo": "bertc.targets.stablehlo",
}
DEVICES = ("auto", "cpu", "gpu")


def get(name: str):
    if name not in TARGETS:
        raise KeyError(f"unknown target {name!r}; targets: {', '.join(TARGETS)}")
    return importlib.import_module(TARGETS[name]).TARGET
