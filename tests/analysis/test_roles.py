"""Roles found by structure: every node of the BERT graph gets the role it plays, and the shipped precision
presets, written with roles, convert exactly what the seed's name-scoped map converted on google's graph."""

from __future__ import annotations

import collections

import pytest
from support.compile import compose_config

from bertc.analysis.structure import find_layer_norms, node_roles, role_matches
from bertc.frontends.load import load_saved_model
from bertc.passes.apply_precision_map import PrecisionRule, assign_dtypes
from bertc.passes.remove_training_ops import RemovalParams, remove_training_ops
from bertc.passes.rewrite_attention_mask import MaskParams, rewrite_attention_mask

SEED_SCOPES = (  # the seed's map as name scopes on google-research's graph (bertc's presets before roles)
    ("*/LayerNorm/*", (), "float32"),
    ("bert/encoder/layer_*/attention/self/*", (), "D"),
    ("bert/encoder/layer_*/attention/output/dense/*", (), "D"),
    ("bert/encoder/layer_*/intermediate/*", (), "D"),
    ("bert/encoder/layer_*/output/dense/*", (), "D"),
    ("bert/pooler/*", (), "D"),
    ("loss/*", ("MatMul", "BiasAdd"), "D"),
)


@pytest.fixture(scope="module")
def google_graph(tiny_model_dir):
    graph = remove_training_ops(load_saved_model(tiny_model_dir).graph, RemovalParams()).graph
    return rewrite_attention_mask(graph, MaskParams()).graph


def test_every_layer_gets_each_role(google_graph):
    roles = node_roles(google_graph)
    counts = collections.Counter(roles.values())
    layers = 2
    assert counts["attention_softmax"] == layers and counts["residual"] == 2 * layers
    assert counts["final_softmax"] == 1 and len(find_layer_norms(google_graph)) == 2 * layers + 1
    by_role = collections.defaultdict(set)
    for name, role in roles.items():
        by_role[role].add(name)
    assert "bert/encoder/layer_1/attention/self/query/MatMul" in by_role["attention_projection"]
    assert "bert/encoder/layer_1/attention/self/Softmax" in by_role["attention_softmax"]
    assert "bert/encoder/layer_0/attention/output/dense/kernel" in by_role["attention_output"]
    assert "bert/encoder/layer_0/intermediate/dense/Tanh" in by_role["gelu"]
    assert "bert/encoder/layer_0/intermediate/dense/BiasAdd" in by_role["ffn_in"]
    assert "bert/encoder/layer_0/output/dense/MatMul" in by_role["ffn_out"]
    assert "bert/pooler/dense/Tanh" in by_role["pooler"] and "loss/MatMul" in by_role["classifier"]
    assert "bert/embeddings/GatherV2" in by_role["embedding"] and "bertc/attention_bias/bias" in by_role["mask_bias"]
    assert all(
        roles.get(node.name) == "layer_norm" for node in google_graph.graph_def.node if "/LayerNorm/" in node.name
    )
    assert role_matches("attention_scores", "attention") and not role_matches("gelu", "attention")


@pytest.mark.parametrize("preset, dtype", [("mixed", "float16"), ("mixed_bf16", "bfloat16")])
def test_role_presets_convert_what_the_seeds_scoped_map_did(google_graph, preset, dtype):
    from bertc.driver.plan import build_plan

    rules = build_plan(compose_config([f"precision={preset}"])).step_params("precision").rules
    assert all(rule.role for rule in rules), "the shipped presets select by role"
    scoped = tuple(PrecisionRule(scope, ops, dtype if want == "D" else want) for scope, ops, want in SEED_SCOPES)
    by_role, _ = assign_dtypes(google_graph, rules)
    by_scope, _ = assign_dtypes(google_graph, scoped)
    differ = {
        name
        for name in set(by_role) | set(by_scope)
        if (by_role.get(name) or "float32") != (by_scope.get(name) or "float32")
    }
    floats = {
        node.name
        for node in google_graph.graph_def.node
        if any(value.WhichOneof("value") == "type" and value.type in (1, 14, 19) for value in node.attr.values())
    }
    # the classifier's weights are converted once now, where the scoped map cast them at every call
    assert differ & floats == {"output_weights", "output_bias"}
