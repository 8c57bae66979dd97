"""Targets: (rewritten Graph, TargetOptions) -> an Artifact that saves itself, opens itself with its engine's
runtime for verify and bench, and says how it serves (bertc/targets/base.py).

Each target module defines `TARGET`, an object with the `Target` interface. This file only lists them,
without importing them (TensorFlow loads when a compile starts); `register` adds one at run time (a plugin,
or a test's throwaway target), with a conf/target/<name>.yaml on Hydra's search path.
"""

from __future__ import annotations

import importlib

TARGETS: dict[str, object] = {  # name -> its module's import path, or a registered Target object
    "tf": "bertc.targets.tf_runtime",
    "xla": "bertc.targets.xla",
    "neuron": "bertc.targets.neuron",
    "stablehlo": "bertc.targets.stablehlo",
    "onnxruntime": "bertc.targets.onnxruntime",
    "openvino": "bertc.targets.openvino",
}
DEVICES = ("auto", "cpu", "gpu")


def get(name: str):
    if name not in TARGETS:
        raise KeyError(f"unknown target {name!r}; targets: {', '.join(TARGETS)}")
    found = TARGETS[name]
    return importlib.import_module(found).TARGET if isinstance(found, str) else found


def quantizing() -> list[str]:
    """The targets that take a precision map with int8 rules."""
    return [name for name in TARGETS if getattr(get(name), "quantizes", False)]


def register(target) -> None:
    """Add a target under `target.name`; config.target.name accepts it from now on."""
    if target.name in TARGETS:
        raise ValueError(f"a target named {target.name!r} exists already")
    TARGETS[target.name] = target


def unregister(name: str) -> None:
    TARGETS.pop(name)
