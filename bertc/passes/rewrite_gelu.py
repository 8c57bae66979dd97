"""Graph -> the graph with every GELU activation computed in the requested form (tanh, exact, sigmoid).

The activations are found by shape (bertc/analysis/structure.py: find_gelus), in any exporter's spelling. Each is
rebuilt from its input x beside the old one, under the same name scope (so precision rules by scope still
cover it), and the old nodes are pruned:
    tanh     0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))   google-research's form
    exact    0.5 * x * (1 + erf(x / sqrt(2)))                            the erf form (Hugging Face's gelu)
    sigmoid  x * sigmoid(1.702 * x)                                      the seed's aggressive approximation
An activation already in the requested form is left as it is. Changing the form changes the function
(tanh vs exact: up to 5e-4 per activation; sigmoid: up to 2e-2): verify measures it like any step.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bertc.analysis.structure import GeluSite, find_gelus
from bertc.ir.graph import (
    Graph,
    copy_graph_def,
    input_ref,
    make_const,
    make_node,
    nodes_by_name,
    output_dtype,
    prune_to_outputs,
    split_input,
    tensor_name,
)
from bertc.ir.lazy import tf
from bertc.passes import Condition, Pass, PassResult
from bertc.schema import choice

FORMS = ("keep", "tanh", "exact", "sigmoid")


@dataclasses.dataclass(frozen=True)
class GeluParams:
    form: str = choice("keep", FORMS)  # keep: the step does not run


def rewrite_gelu(graph: Graph, params: GeluParams) -> PassResult:
    sites = find_gelus(graph)
    graph_def = copy_graph_def(graph.graph_def)
    nodes = nodes_by_name(graph_def)
    outputs = dict(graph.outputs)
    for site in sites:
        if site.form == params.form:
            continue
        new_output = _build(graph_def, nodes, site, params.form)
        old_ref = input_ref(tensor_name(site.output))
        for node in graph_def.node:
            for slot, name in enumerate(node.input):
                if name == old_ref and node.name not in site.nodes:
                    node.input[slot] = new_output
        outputs = {
            key: tensor_name(new_output) if split_input(value)[0] == site.output else value
            for key, value in outputs.items()
        }
    result = prune_to_outputs(graph.replace(graph_def=graph_def, outputs=outputs))
    return PassResult(result, {"gelu activations": len(sites)})


def _build(graph_def, nodes, site: GeluSite, form: str) -> str:
    scope = f"{site.output.rsplit('/', 1)[0]}/bertc_gelu_{form}" if "/" in site.output else f"bertc_gelu_{form}"
    index = 0
    while f"{scope}/output" in nodes:
        index += 1
        scope = f"{scope.split('_v')[0]}_v{index}"
    x_node, x_index, _ = split_input(site.x)
    dtype = tf.as_dtype(output_dtype(nodes[x_node], x_index))
    x = input_ref(site.x)
    added = []

    def const(name: str, value: float) -> str:
        added.append(make_const(f"{scope}/{name}", np.array(value, dtype.as_numpy_dtype)))
        return f"{scope}/{name}"

    def op(kind: str, name: str, *inputs: str) -> str:
        added.append(make_node(kind, f"{scope}/{name}", inputs, T=dtype))
        return f"{scope}/{name}"

    if form == "sigmoid":
        op("Mul", "output", x, op("Sigmoid", "sigmoid", op("Mul", "scaled", x, const("k", 1.702))))
    elif form == "exact":
        erf = op("Erf", "erf", op("Mul", "scaled", x, const("rsqrt2", 1 / math.sqrt(2.0))))
        op("Mul", "output", op("Mul", "half_x", x, const("half", 0.5)), op("AddV2", "one_plus", erf, const("one", 1.0)))
    else:
        cube = op("Pow", "cube", x, const("three", 3.0))
        inner = op("AddV2", "inner", x, op("Mul", "cubic", cube, const("c", 0.044715)))
        tanh = op("Tanh", "tanh", op("Mul", "scaled", inner, const("k", math.sqrt(2.0 / math.pi))))
        op(
            "Mul",
            "output",
            op("Mul", "half_x", x, const("half", 0.5)),
            op("AddV2", "one_plus", tanh, const("one", 1.0)),
        )
    graph_def.node.extend(added)
    nodes.update({node.name: node for node in added})
    return f"{scope}/output"


def _all_in_form(graph: Graph, params: GeluParams) -> str | None:
    other = [site.output for site in find_gelus(graph) if site.form != params.form]
    return f"activations not in the {params.form} form: {other[:3]}" if other else None


PASS = Pass(
    rewrite_gelu,
    "gelu",
    GeluParams,
    help="GELU in the form asked for: keep (default), tanh, exact (erf) or sigmoid (x*sigmoid(1.702x))",
    enabled=lambda node: node.form != "keep",
    # NOTE: after the mask rewrite and before precision: the new nodes are float32, in the scope the
    # precision rules convert.
    after=("rewrite_attention_mask",),
    before=("apply_precision_map",),
    ensures=(Condition("every GELU activation is in the requested form", _all_in_form),),
)
