"""A Graph keyed by the user's signature names -> one keyed by bertc's, and the names to serve it under.

Exporters name the three BERT inputs differently (google-research `input_ids`/`input_mask`/
`segment_ids`, keras-hub `token_ids`/`padding_mask`/`segment_ids`, Model Garden `input_word_ids`/
`input_mask`/`input_type_ids`, Hugging Face `input_ids`/`attention_mask`/`token_type_ids`) and
output probabilities, logits only, or one unnamed tensor. Inputs are matched by these common names,
or by `model.inputs` (bertc name -> the signature's); the output is `model.output`, else
`probabilities`, else `logits`, else the only one. An output made by a Softmax is the probabilities
(its input the logits); any other is taken as logits and a Softmax is added after it, so the
compiled model always has both. Nothing here reads weights or runs anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import tensorflow as tf

from bertc.errors import ModelError
from bertc.ir.graph import (
    Graph,
    input_ref,
    make_node,
    node_of,
    nodes_by_name,
    split_input,
    tensor_name,
    through_identity,
)
from bertc.ir.signature import SERVING_INPUTS as BERT_INPUTS
from bertc.ir.signature import SERVING_OUTPUTS, TRAINING_INPUTS

INPUT_ALIASES = {
    "input_ids": ("input_ids", "token_ids", "input_word_ids", "word_ids"),
    "input_mask": ("input_mask", "attention_mask", "padding_mask"),
    "segment_ids": ("segment_ids", "token_type_ids", "input_type_ids", "type_ids"),
}
ADDED_SOFTMAX = "bertc/probabilities"


@dataclasses.dataclass(frozen=True)
class ServedSignature:
    """How the user's signature maps onto bertc's: what the compiled model and the verify step use."""

    input_names: Mapping[str, str]  # bertc input name -> the signature's key (served under that key)
    output_key: str  # the signature output the model is compiled from
    output_kind: str  # "probabilities" | "logits"
    signature_outputs: tuple[str, ...] = ()  # every output key of the user's signature


def canonical(
    graph: Graph, path: Path | str, inputs: Mapping[str, str] | None = None, output: str | None = None
) -> tuple[Graph, ServedSignature]:
    """The graph with inputs keyed input_ids/input_mask/segment_ids and outputs probabilities/logits."""
    names = _input_names(graph, path, dict(inputs or {}))
    key = _output_key(graph, path, output)
    user_outputs = list(graph.outputs)
    nodes = nodes_by_name(graph.graph_def)
    tensor = graph.outputs[key]
    producer = through_identity(nodes, node_of(tensor))
    if producer.op == "Softmax":
        source, index, _ = split_input(producer.input[0])
        outputs, kind = {"probabilities": tensor, "logits": tensor_name(source, index)}, "probabilities"
    else:
        graph_def = type(graph.graph_def)()
        graph_def.CopyFrom(graph.graph_def)
        graph_def.node.append(make_node("Softmax", ADDED_SOFTMAX, [input_ref(tensor)], T=tf.float32))
        graph = graph.replace(graph_def=graph_def)
        outputs, kind = {"probabilities": tensor_name(ADDED_SOFTMAX), "logits": tensor}, "logits"
    served = ServedSignature(names, key, kind, tuple(sorted(user_outputs)))
    graph = graph.replace(
        inputs={name: graph.inputs[names[name]] for name in BERT_INPUTS},
        outputs=outputs,
        serving_names=names,
        serving_outputs=output_names(served),
    )
    return graph, served


def output_names(served: ServedSignature) -> dict[str, str]:
    """probabilities / logits -> the key the compiled model returns each under: the user's output keeps its key,
    the one bertc adds (the softmax of logits-only models, the logits of probabilities-only ones) its own name."""
    other = "logits" if served.output_kind == "probabilities" else "probabilities"
    added = other if other != served.output_key else f"bertc_{other}"
    return {served.output_kind: served.output_key, other: added}


def _input_names(graph: Graph, path, given: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(given) - set(BERT_INPUTS))
    if unknown:
        raise ModelError(
            f"model.inputs names {unknown}, which are not bertc inputs; give "
            f"model.inputs.<name>=<signature key> for <name> in {', '.join(BERT_INPUTS)}."
        )
    available = list(graph.inputs)
    names = {}
    for name in BERT_INPUTS:
        if name in given:
            if given[name] not in graph.inputs:
                raise ModelError(
                    f"model.inputs.{name}={given[name]}: {path}'s serving signature has no such input; "
                    f"it has {', '.join(sorted(available))}."
                )
            names[name] = given[name]
            continue
        taken = set(given.values())
        found = [alias for alias in INPUT_ALIASES[name] if alias in graph.inputs and alias not in taken]
        if not found:
            raise ModelError(
                f"{path}: no serving input for {name}: the signature takes {', '.join(sorted(available))} "
                f"and none is one of {', '.join(INPUT_ALIASES[name])}. Name it: "
                f"model.inputs.{name}=<signature key>."
            )
        names[name] = found[0]
    extra = sorted(set(available) - set(names.values()) - set(TRAINING_INPUTS))
    if extra:
        raise ModelError(
            f"{path}: the serving signature also takes {extra}, which bertc does not know how to feed; it "
            f"compiles BERT classifiers on {', '.join(BERT_INPUTS)} (mapped here to "
            f"{', '.join(names[name] for name in BERT_INPUTS)}). Export a signature with only those inputs."
        )
    return names


def _output_key(graph: Graph, path, output: str | None) -> str:
    outputs = sorted(graph.outputs)
    if output is not None:
        if output not in graph.outputs:
            raise ModelError(f"model.output={output}: {path}'s serving signature has outputs {outputs}; choose one.")
        return output
    for key in SERVING_OUTPUTS:  # in order of preference
        if key in graph.outputs:
            return key
    if len(outputs) == 1:
        return outputs[0]
    raise ModelError(
        f"{path}: the serving signature has outputs {outputs}, none named probabilities or logits; "
        "choose the classifier's output with model.output=<key>."
    )
