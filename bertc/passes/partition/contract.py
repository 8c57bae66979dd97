"""A partitioned Graph -> its crossings, its host part and its device part: what the partition step writes and
the targets cut.

The partition step marks each crossing with an Identity named BOUNDARY_PREFIX + key; the targets cut there with
`split_partition`, and the driver reports `boundaries_of`. This module is no pass and imports none: the targets
read it without importing the step that writes it.
"""

from __future__ import annotations

import dataclasses

from bertc.ir.graph import (
    Graph,
    ancestors,
    keep_nodes,
    make_placeholder,
    new_graph_def,
    split_input,
    static_shapes,
    tensor_name,
)
from bertc.ir.lazy import tf

BOUNDARY_PREFIX = "bertc/boundary/"


@dataclasses.dataclass(frozen=True)
class Boundary:
    """One crossing: its key (the node's name after BOUNDARY_PREFIX), the tensor it carries, shape (None: the
    batch) and dtype, as the report lists it."""

    key: str
    tensor: str
    shape: tuple[int | None, ...]
    dtype: str

    def describe(self) -> str:
        dims = ",".join("B" if dim is None else str(dim) for dim in self.shape)
        return f"{self.key}: {self.tensor} [{dims}] {self.dtype}"


def boundary_nodes(graph: Graph) -> list[str]:
    """The crossing nodes' names, in the graph's order."""
    return [node.name for node in graph.graph_def.node if node.name.startswith(BOUNDARY_PREFIX)]


def boundaries_of(graph: Graph) -> list[Boundary]:
    """The crossings a partitioned graph has, with the shapes and dtypes TensorFlow infers for them."""
    names = set(boundary_nodes(graph))
    if not names:
        return []
    shapes = static_shapes(graph)
    result = []
    for node in graph.graph_def.node:
        if node.name in names:
            shape = shapes[tensor_name(node.name)]
            source, index, _ = split_input(node.input[0])
            dims = tuple(shape.as_list()) if shape.rank is not None else ()
            dtype = tf.as_dtype(node.attr["T"].type).name
            result.append(Boundary(node.name[len(BOUNDARY_PREFIX) :], tensor_name(source, index), dims, dtype))
    return result


def split_partition(graph: Graph) -> tuple[Graph | None, Graph]:
    """(host part, device part); host is None when the graph has no boundaries."""
    names = boundary_nodes(graph)
    if not names:
        return None, graph
    shapes = static_shapes(graph)
    host = keep_nodes(graph, ancestors(graph.graph_def, names))
    host = host.replace(outputs={name[len(BOUNDARY_PREFIX) :]: tensor_name(name) for name in names})

    device_def = new_graph_def()
    device_def.versions.CopyFrom(graph.graph_def.versions)
    needed = ancestors(graph.graph_def, graph.outputs.values(), stops=names)
    for node in graph.graph_def.node:
        if node.name in names and node.name in needed:
            shape = shapes[tensor_name(node.name)]
            device_def.node.append(make_placeholder(node.name, tf.as_dtype(node.attr["T"].type), shape.as_list()))
        elif node.name in needed:
            device_def.node.add().CopyFrom(node)
    device = Graph(
        device_def,
        {name: value for name, value in graph.weights.items() if name in needed},
        {name[len(BOUNDARY_PREFIX) :]: tensor_name(name) for name in names if name in needed},
        dict(graph.outputs),
    )
    return host, device
