"""target=tf: the graph runs on TensorFlow's own runtime (grappler, oneDNN or cuDNN kernels)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bertc.ir.graph import Graph
from bertc.targets.base import SavedModelTarget, TargetOptions

if TYPE_CHECKING:  # TensorFlow loads when a compile starts, not when the plan reads the target
    from bertc.targets.serving import SavedModelArtifact


class TensorFlowTarget(SavedModelTarget):
    name = "tf"

    def lower(self, graph: Graph, options: TargetOptions) -> SavedModelArtifact:
        from bertc.targets.devices import resolve_device
        from bertc.targets.serving import CompiledBert, Placement, SavedModelArtifact

        device = resolve_device(options.device) if options.device != "auto" else None
        placement = Placement(options.host_device, device, jit_compile=False, input_limits=options.input_limits)
        return SavedModelArtifact(CompiledBert(graph, options.seq_len, placement), options)


TARGET = TensorFlowTarget()
