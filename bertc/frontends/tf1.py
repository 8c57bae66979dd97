"""A TF1 SavedModel's flat serving graph (google-research run_classifier) -> the compiler's Graph.

The reading itself is bertc.frontends.load's (variables by node name from a name-keyed checkpoint, their
reads as Identity, the graph cut to what the signature computes); this module is its frontend face.
"""

from __future__ import annotations

from pathlib import Path

from bertc.ir.graph import Graph, node_of

CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")


def is_tf1(meta_graph, signature) -> bool:
    """Outputs made by ordinary nodes of the meta graph itself (no function call between)."""
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    produced = [nodes.get(node_of(output.name)) for output in signature.outputs.values()]
    return bool(produced) and all(node is not None and node.op not in CALL_OPS for node in produced)


def read_tf1(path: Path, meta_graph, signature) -> Graph:
    from bertc.frontends.load import _read_weights, _to_weight_placeholders

    inputs = {key: value.name for key, value in signature.inputs.items()}
    outputs = {key: value.name for key, value in signature.outputs.items()}
    weights = _read_weights(path, meta_graph.graph_def)
    return _to_weight_placeholders(meta_graph.graph_def, weights, inputs, outputs)
