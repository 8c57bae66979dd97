"""Targets: (rewritten Graph, TargetOptions) -> an Artifact that saves itself, opens itself with its engine's
runtime for verify and bench, and says how it serves (bertc/targets/base.py).

Each target module defines `TARGET`, an object with the `Target` interface, and imports no TensorFlow: the plan
reads its declarations (its own config keys, the length modes it takes) before anything compiles, and its
`lower` imports the compile (xla_target.py -> xla.py). This file only lists them, without importing them;
`register` adds one at run time (a plugin, or a test's throwaway target), with a conf/target/<name>.yaml on
Hydra's search path.
"""

from __future__ import annotations

import importlib

from bertc.targets.base import Target

TARGETS: dict[str, str | Target] = {  # name -> its module's import path, or a registered Target object
    "tf": "bertc.targets.tf_runtime",
    "xla": "bertc.targets.xla_target",
    "neuron": "bertc.targets.neuron_target",
    "stablehlo": "bertc.targets.stablehlo_target",
    "onnxruntime": "bertc.targets.onnxruntime",
    "openvino": "bertc.targets.openvino",
}
DEVICES = ("auto", "cpu", "gpu")


def get(name: str) -> Target:
    if name not in TARGETS:
        raise KeyError(f"unknown target {name!r}; targets: {', '.join(TARGETS)}")
    found = TARGETS[name]
    return importlib.import_module(found).TARGET if isinstance(found, str) else found


def quantizing() -> list[str]:
    """The targets that take a precision map with int8 rules."""
    return [name for name in TARGETS if get(name).quantizes]


def register(target: Target) -> None:
    """Add a target under `target.name`; config.target.name accepts it from now on."""
    if target.name in TARGETS:
        raise ValueError(f"a target named {target.name!r} exists already")
    TARGETS[target.name] = target


def unregister(name: str) -> None:
    TARGETS.pop(name)
