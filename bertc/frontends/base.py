"""The frontend interface: one dialect of SavedModel (how an exporter lays out the serving computation) -> the
compiler's Graph, nothing executed. A frontend says from the file's structure whether a serving signature is its
dialect (`detect`), reads it (`read`), checks what TensorFlow's loader would run of it (`check_loading`), and
declares what later stages ask of the original model by the frontend's name (LoadedModel.dialect): how verify
calls it and what the static bound covers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from bertc.ir.graph import Graph


class Frontend(Protocol):
    """One dialect. The registry (bertc/frontends/__init__.py) asks each in turn to detect; the first that does
    reads the model, and its name is the model's dialect in LoadedModel, Original and report.json."""

    name: str  # the dialect: LoadedModel.dialect, report.json's input.signature.dialect
    # verify calls the original's serving signature as it is (True), or its graph pruned to the tensors bertc
    # compiled as, probabilities and logits (False: a TF1 signature also takes training inputs)
    calls_signature: bool
    # the Graph is the serving function with every called body inlined (True): the Graph itself is what serving
    # runs, so the static bound covers it and the library and the calls' leftovers go; False: the Graph is nodes
    # of the meta graph, bounded there together with the nodes `check_loading` named
    inlines_functions: bool

    def detect(self, meta_graph, signature) -> bool:
        """Whether the serving `signature` of `meta_graph` is this dialect, from the file's structure alone."""

    def read(self, path: Path, meta_graph, signature, allow_ops: Iterable[str]) -> Graph:
        """The signature's computation: weights as Placeholders (checked by bertc.frontends.weights), inputs and
        outputs keyed by the signature's own keys; what it reads beyond the Graph checked against `allow_ops`
        (the registry checks the Graph's function bodies, load the Graph)."""

    def check_loading(self, path: Path, meta_graph, signature, allow_ops: Iterable[str]) -> dict[str, set[str]]:
        """What TensorFlow's loader would run loading this dialect (purpose -> node or function names), refused
        (bertc.frontends.security.UnsafeGraphError, ModelError) when it is not pure."""
