"""target=neuron as the plan reads it: whether it serves any batch, static shapes, no length=pack; the compile is
bertc/targets/neuron.py (tensorflow-neuron or tensorflow-neuronx, when installed)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from bertc.ir.graph import Graph
from bertc.targets.base import SavedModelTarget, TargetOptions

if TYPE_CHECKING:  # TensorFlow loads when a compile starts, not when the plan reads the target
    from bertc.targets.serving import SavedModelArtifact


@dataclasses.dataclass(frozen=True)
class NeuronParams:
    # serve any batch from the static-batch compile (Inf1: the compiler's --dynamic-batch-size; Inf2: bertc splits
    # and pads the batch into compiled-size chunks)
    dynamic_batch: bool = True


class NeuronTarget(SavedModelTarget):
    name = "neuron"
    params = NeuronParams
    probe_runtime = None  # the math runs on Inferentia: the CPU precision probe does not apply
    static_shapes = True  # one trace per bucket (Inf2/Trn only)
    pack_refused = "a Neuron trace per (width, row count) is untested (no Inf2/Trn machine here)."

    def check_available(self, options: TargetOptions) -> None:
        from bertc.targets.neuron import NeuronCompiler

        NeuronCompiler().check_available(options)

    def lower(self, graph: Graph, options: TargetOptions) -> SavedModelArtifact:
        from bertc.targets.neuron import NeuronCompiler

        return NeuronCompiler().lower(graph, options)


TARGET = NeuronTarget()
