"""target=xla: the device part compiled by XLA (jit_compile=True); a host part stays plain TF on the CPU.

XLA compiles one function for one device, so a partitioned model's serving function calls two:
the host function pinned to the CPU, then the jit-compiled device function. The jit attribute is
saved with the function, so TensorFlow Serving uses XLA without bertc.
"""

from __future__ import annotations

from bertc.ir.graph import Graph
from bertc.targets.base import SavedModelTarget, TargetOptions
from bertc.targets.devices import resolve_device
from bertc.targets.serving import CompiledBert, Placement, SavedModelArtifact


def xla_module(graph: Graph, options: TargetOptions) -> CompiledBert:
    placement = Placement(
        options.host_device, resolve_device(options.device), jit_compile=True, input_limits=options.input_limits
    )
    return CompiledBert(graph, options.seq_len, placement)


class XlaTarget(SavedModelTarget):
    name = "xla"
    probe_runtime = "xla"

    def lower(self, graph: Graph, options: TargetOptions) -> SavedModelArtifact:
        return SavedModelArtifact(xla_module(graph, options), options)


TARGET = XlaTarget()
