"""target=stablehlo as the plan reads it: its batch sizes (one module each), static shapes, no length=pack; the
compile is bertc/targets/stablehlo.py."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from bertc.ir.graph import Graph
from bertc.schema import bounded
from bertc.targets.base import SavedModelTarget, TargetOptions

if TYPE_CHECKING:  # TensorFlow loads when a compile starts, not when the plan reads the target
    from bertc.targets.stablehlo import PortableArtifact

BATCH = 1 << 20  # the largest batch size a key takes: bertc/driver/config.py's BATCH (the memory check refuses more)


@dataclasses.dataclass(frozen=True)
class StableHloParams:
    # a StableHLO module per static batch size (bertc.runtime.stablehlo pads a batch up to the next one); kept
    # ascending, each once
    batch_sizes: tuple[int, ...] = bounded((1, 8), 1, BATCH, filled=True, item="size")

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_sizes", tuple(sorted(set(self.batch_sizes))))


class StableHloTarget(SavedModelTarget):
    name = "stablehlo"
    params = StableHloParams
    probe_runtime = "xla"
    static_shapes = True  # one module per batch size and length bucket; bertc.runtime.stablehlo computes the length
    pack_refused = (
        "its modules are exported per (batch size, width) and bertc.runtime.stablehlo computes the width in NumPy; "
        "it does not yet compute the packed row count and the pack indices outside the modules."
    )

    def describe(self, params: Any) -> str:
        return f"StableHLO modules for batch sizes {list(params.batch_sizes)}"

    def batches(self, params: Any) -> list[tuple[int, str]]:
        return [(size, "target.batch_sizes") for size in params.batch_sizes]

    def check_available(self, options: TargetOptions) -> None:
        from bertc.targets.stablehlo import StableHloCompiler

        super().check_available(options)
        StableHloCompiler().check_available(options)

    def lower(self, graph: Graph, options: TargetOptions) -> PortableArtifact:
        from bertc.targets.stablehlo import StableHloCompiler

        return StableHloCompiler().lower(graph, options)


TARGET = StableHloTarget()
