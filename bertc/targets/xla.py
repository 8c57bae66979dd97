"""target=xla: the device part compiled by XLA (jit_compile=True); a host part stays plain TF on the CPU.

XLA compiles one function for one device, so a partitioned model's serving function calls two:
the host function pinned to the CPU, then the jit-compiled device function. The jit attribute is
saved with the function, so TensorFlow Serving uses XLA without bertc.
"""
from __future__ import annotations

from bertc.graph import Graph
from bertc.targets.devices import resolve_device
from bertc.targets.serving import CompiledBert, Placement


def check_available(params) -> None:
    resolve_device(params.device)


def compile(graph: Graph, params, seq_len: int, *, host_device: str = "/device:CPU:0", precision: str = "fp32", input_limits=None) -> CompiledBert:
    return CompiledBert(graph, seq_len, Placement(host_device=host_device, device=resolve_device(params.device), jit_compile=True, input_limits=input_limits))
