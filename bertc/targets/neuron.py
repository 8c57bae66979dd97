"""target=neuron: the device part compiled for AWS Inferentia/Trainium by tensorflow-neuron(x), when installed."""
from __future__ import annotations

import importlib

from bertc.errors import ConfigError

NOT_INSTALLED = (
    "target=neuron needs tensorflow-neuron (Inferentia 1: import tensorflow.neuron) or tensorflow-neuronx "
    "(Inferentia 2, Trainium: import tensorflow_neuronx), and neither can be imported here. Install it from "
    "the Neuron package repository on a Neuron instance (the PyPI package named tensorflow-neuron is a "
    "placeholder that raises 'WRONG PACKAGE'). The same plan runs elsewhere with target=xla or target=tf."
)


def find_compiler():
    """The importable Neuron tracer module, or None."""
    for name in ("tensorflow_neuronx", "tensorflow.neuron"):
        try:
            return importlib.import_module(name)
        except Exception:  # the PyPI placeholder raises on import; a broken install is no compiler either
            continue
    return None


def check_available(params) -> None:
    if find_compiler() is None:
        raise ConfigError(NOT_INSTALLED)


def compile(graph, params, seq_len: int, host_device: str = "/device:CPU:0"):
    check_available(params)
    raise ConfigError("target=neuron: compiling with tensorflow-neuron is not implemented yet in this bertc build.")
