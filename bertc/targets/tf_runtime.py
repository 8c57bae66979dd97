"""target=tf: the graph runs on TensorFlow's own runtime (grappler, oneDNN or cuDNN kernels)."""
from __future__ import annotations

from bertc.graph import Graph
from bertc.targets.devices import resolve_device
from bertc.targets.serving import CompiledBert, Placement


def check_available(params) -> None:
    resolve_device(params.device)


def compile(graph: Graph, params, seq_len: int, *, host_device: str = "/device:CPU:0", precision: str = "fp32", input_limits=None) -> CompiledBert:
    device = resolve_device(params.device) if params.device != "auto" else None
    return CompiledBert(graph, seq_len, Placement(host_device=host_device, device=device, jit_compile=False, input_limits=input_limits))
