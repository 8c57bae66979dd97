"""A SavedModel's serving meta graph -> the compiler's Graph, by dialect: TF1 flat graphs or TF2 functions.

Each dialect is a `Frontend` (bertc/frontends/base.py) in a module of its own that defines `FRONTEND`: `tf2.py`
(a signature whose outputs come from calls of library functions), `tf1.py` (one whose outputs are ordinary nodes
of a graph with variables). `read_graph` asks them in the registry's order, never running the file, and the
first that detects its dialect reads it. Either way the Graph has weights as Placeholders and inputs/outputs keyed
by the signature's own keys; `signature.py` maps those to bertc's names. Each weight read is checked by
`weights.py` (dtype, NaN, Inf) before any work. `register` adds a dialect at run time (a plugin, or a test's).
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bertc.errors import ModelError
from bertc.frontends.base import Frontend
from bertc.ir.graph import Graph, node_of

# name -> its module's import path, or a registered Frontend object; in detection order
FRONTENDS: dict[str, str | Frontend] = {"tf2": "bertc.frontends.tf2", "tf1": "bertc.frontends.tf1"}


def get(name: str) -> Frontend:
    if name not in FRONTENDS:
        raise KeyError(f"unknown dialect {name!r}; dialects: {', '.join(FRONTENDS)}")
    found = FRONTENDS[name]
    return importlib.import_module(found).FRONTEND if isinstance(found, str) else found


def register(frontend: Frontend, before: str | None = None) -> None:
    """Add a dialect under `frontend.name`, asked to detect before the dialect `before` (None: after all)."""
    if frontend.name in FRONTENDS:
        raise ValueError(f"a dialect named {frontend.name!r} exists already")
    order = list(FRONTENDS.items())
    at = len(order) if before is None else list(FRONTENDS).index(before)
    order.insert(at, (frontend.name, frontend))
    FRONTENDS.clear()
    FRONTENDS.update(order)


def unregister(name: str) -> None:
    FRONTENDS.pop(name)


def detect(path: Path, meta_graph, signature) -> Frontend:
    """The first frontend whose dialect the file is; a ModelError naming what was found when it is none."""
    for name in FRONTENDS:
        if get(name).detect(meta_graph, signature):
            return get(name)
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
    """(dialect, Graph keyed by the signature's own input and output keys), read by the dialect's frontend.

    Every body behind a function-valued attribute of the Graph meets the allowlist here, whichever the dialect.
    """
    frontend = detect(path, meta_graph, signature)
    graph = frontend.read(path, meta_graph, signature, allow_ops)
    _refuse_unsafe_functions(graph, meta_graph.graph_def.library, allow_ops)
    return frontend.name, graph


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
