"""target=xla as the plan reads it: static shapes, probed in XLA; the compile is bertc/targets/xla.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bertc.ir.graph import Graph
from bertc.targets.base import SavedModelTarget, TargetOptions

if TYPE_CHECKING:  # TensorFlow loads when a compile starts, not when the plan reads the target
    from bertc.targets.serving import SavedModelArtifact


class XlaTarget(SavedModelTarget):
    name = "xla"
    probe_runtime = "xla"
    # one compiled function per shape: length=buckets compiles one per bucket, length=pack one per (L, T) bucket pair
    # (bertc/passes/length/dispatch.py)
    static_shapes = True

    def lower(self, graph: Graph, options: TargetOptions) -> SavedModelArtifact:
        from bertc.targets.serving import SavedModelArtifact
        from bertc.targets.xla import xla_module

        return SavedModelArtifact(xla_module(graph, options), options)


TARGET = XlaTarget()
