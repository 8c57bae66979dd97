"""A SavedModel's serving meta graph -> the compiler's Graph, by dialect: TF1 flat graphs or TF2 functions.

`read_graph` picks the dialect from the file's structure, never by running it: a signature whose
outputs come from calls of library functions is TF2 (`tf2.py`), one whose outputs are ordinary
nodes of a graph with variables is TF1 (`tf1.py`). Either way the Graph has weights as Placeholders
and inputs/outputs keyed by the signature's own keys; `signature.py` maps those to bertc's names. Each
weight read is checked by `weights.py` (dtype, NaN, Inf) before any work.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bertc.errors import ModelError
from bertc.ir.graph import Graph, node_of, prune_to_outputs


def dialect(path: Path, meta_graph, signature) -> str:
    """'tf1' or 'tf2'; a ModelError naming what was found when the file is neither."""
    from bertc.frontends.tf1 import is_tf1
    from bertc.frontends.tf2 import is_tf2

    if is_tf2(meta_graph, signature):
        return "tf2"
    if is_tf1(meta_graph, signature):
        return "tf1"
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    producers = sorted(
        {nodes[node_of(t.name)].op if node_of(t.name) in nodes else "nothing" for t in signature.outputs.values()}
    )
    histogram = Counter(node.op for node in meta_graph.graph_def.node).most_common(6)
    ops = ", ".join(f"{op} {count}" for op, count in histogram)
    raise ModelError(
        f"{path} is neither a TF1 graph nor a TF2 object-based SavedModel that bertc can read: the serving "
        f"outputs are made by {', '.join(producers) or 'no nodes'}, the graph holds {ops or 'no nodes'}, "
        f"the function library {len(meta_graph.graph_def.library.function)} function(s) and the object graph "
        f"{len(meta_graph.object_graph_def.nodes)} object(s). bertc reads a TF1 serving graph with variables "
        "(google-research run_classifier) or a SavedModel written by tf.saved_model.save / Keras export."
    )


def read_graph(path: Path, meta_graph, signature, allow_ops: Iterable[str] = ()) -> tuple[str, Graph]:
    """(dialect, Graph keyed by the signature's own input and output keys).

    A TF2 graph is checked against the op allowlist as inlined, every node of every function the
    signature calls, before it is cut to what the outputs need: a call is no way around the check.
    """
    kind = dialect(path, meta_graph, signature)
    if kind == "tf2":
        from bertc.frontends.security import refuse_unsafe_ops
        from bertc.frontends.tf2 import read_tf2

        graph = read_tf2(path, meta_graph, signature)
        refuse_unsafe_ops(graph, allow_ops)
        graph = prune_to_outputs(graph)
    else:
        from bertc.frontends.tf1 import read_tf1

        graph = read_tf1(path, meta_graph, signature)
    _refuse_unsafe_functions(graph, meta_graph.graph_def.library, allow_ops)
    return kind, graph


def _refuse_unsafe_functions(graph: Graph, library, allow_ops: Iterable[str]) -> None:
    """Every body behind a function-valued attribute (an allowed If's branches, a call left in a TF1
    graph) meets the allowlist too, with its nodes named `<function>/<node>`."""
    from bertc.frontends.security import refuse_unsafe_ops
    from bertc.ir.graph import GraphDef

    functions = {function.signature.name: function for function in library.function}
    pending = [name for node in graph.graph_def.node for name in _function_attrs(node)]
    seen: set[str] = set()
    bodies = GraphDef()
    while pending:
        name = pending.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        for node in functions[name].node_def:
            bodies.node.add(name=f"{name}/{node.name}", op=node.op)
            pending.extend(_function_attrs(node))
            if node.op in functions:
                pending.append(node.op)
    if bodies.node:
        refuse_unsafe_ops(Graph(bodies, {}, {}, {}), allow_ops)


def _function_attrs(node) -> list[str]:
    names = []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        elif value.HasField("list"):
            names.extend(function.name for function in value.list.func)
    return names
