"""Frontends on small hand-built models: TF2 functions inlined (nested calls, captures, gathers), the
allowlist over every function body, dialect detection, and signature names mapped to bertc's."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from bertc.errors import ModelError
from bertc.frontends import read_graph
from bertc.frontends.load import _read_meta_graph, _serving_signature
from bertc.frontends.security import UnsafeGraphError
from bertc.frontends.signature import ADDED_SOFTMAX, BERT_INPUTS, canonical
from bertc.ir.graph import Graph, GraphDef, make_node, make_placeholder, run_graph

SEQ = 6


class _Nested(tf.Module):
    """ids -> gather (ResourceGather) -> a nested call with captured kernel -> PartitionedCall -> logits."""

    def __init__(self, effect=None):
        super().__init__()
        rng = np.random.default_rng(1)
        self.table = tf.Variable(rng.normal(size=(10, 4)).astype(np.float32), name="table")
        self.kernel = tf.Variable(rng.normal(size=(4, 3)).astype(np.float32), name="kernel")
        self.bias = tf.Variable(rng.normal(size=(3,)).astype(np.float32), name="bias")
        self.effect = effect

    @tf.function(autograph=False)
    def _project(self, x):
        if self.effect is not None:
            self.effect(self)
        return tf.matmul(x, self.kernel) + self.bias

    @tf.function(autograph=False)
    def _pool(self, x, mask):
        return tf.reduce_sum(x * tf.cast(mask, tf.float32)[:, :, None], axis=1)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, SEQ], tf.int32, name="token_ids"),
            tf.TensorSpec([None, SEQ], tf.int32, name="padding_mask"),
        ],
        autograph=False,
    )
    def serve(self, token_ids, padding_mask):
        embedded = tf.gather(self.table, token_ids)
        return {"logits": self._project(self._pool(embedded, padding_mask))}


def _save(module: tf.Module, path) -> None:
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def _read(path, allow_ops=()):
    meta_graph = _read_meta_graph(path)
    return read_graph(path, meta_graph, _serving_signature(meta_graph, path), allow_ops)


@pytest.fixture(scope="module")
def nested_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("nested") / "model"
    _save(_Nested(), path)
    return path


def test_tf2_function_is_inlined_with_captures_as_weights(nested_dir):
    dialect, graph = _read(nested_dir)
    assert dialect == "tf2"
    ops = {node.op for node in graph.graph_def.node}
    gone = {"StatefulPartitionedCall", "PartitionedCall", "ReadVariableOp", "ResourceGather", "VarHandleOp"}
    assert not ops & gone
    assert "GatherV2" in ops
    assert sorted(graph.weights) == ["bias", "kernel", "table"]
    assert set(graph.inputs) == {"token_ids", "padding_mask"}
    module = _Nested()
    ids = np.array([[1, 2, 3, 0, 0, 0], [9, 8, 7, 6, 5, 4]], np.int32)
    mask = (ids > 0).astype(np.int32)
    expected = module.serve(ids, mask)["logits"].numpy()
    np.testing.assert_allclose(
        run_graph(graph, {"token_ids": ids, "padding_mask": mask})["logits"], expected, rtol=1e-6, atol=1e-6
    )
    # the values come from the object-keyed checkpoint, not from re-running the module
    np.testing.assert_array_equal(graph.weights["table"], module.table.numpy())


def test_side_effect_in_a_nested_function_body_is_refused(tmp_path):
    # The print is reachable only through the nested call's control outputs: inlining must still see it.
    module = _Nested(effect=lambda self: tf.print("side effect"))
    _save(module, tmp_path / "model")
    with pytest.raises(UnsafeGraphError, match=r"PrintV2"):
        _read(tmp_path / "model")


class _Branching(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, SEQ], tf.int32, name="token_ids")], autograph=False)
    def serve(self, token_ids):
        def loud():
            tf.print("side effect")
            return tf.reduce_sum(token_ids)

        return {"logits": tf.cond(tf.reduce_any(token_ids > 0), loud, lambda: tf.reduce_sum(token_ids * 2))}


def test_allowing_a_control_flow_op_does_not_let_its_branches_past_the_allowlist(tmp_path):
    _save(_Branching(), tmp_path / "model")
    with pytest.raises(UnsafeGraphError, match=r"\(If\)"):
        _read(tmp_path / "model")
    with pytest.raises(UnsafeGraphError, match=r"PrintV2 \(PrintV2\) in function cond_true_\d+"):
        _read(tmp_path / "model", allow_ops=["If", "StatelessIf"])


def test_variable_written_by_the_function_is_refused_with_the_node(tmp_path):
    module = _Nested(effect=lambda self: self.bias.assign_add(tf.ones([3])))
    _save(module, tmp_path / "model")
    with pytest.raises(ModelError, match=r"AssignAddVariableOp\) uses variable bias"):
        _read(tmp_path / "model", allow_ops=["AssignAddVariableOp"])


def test_folder_that_is_neither_dialect_names_what_it_found(nested_dir, tmp_path):
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((nested_dir / "saved_model.pb").read_bytes())
    meta_graph = saved_model.meta_graphs[0]
    del meta_graph.graph_def.library.function[:]  # the call now names a function that is not there
    meta_graph.ClearField("object_graph_def")
    signature = meta_graph.signature_def["serving_default"]
    found = r"neither a TF1 graph nor a TF2.*StatefulPartitionedCall.*0 function"
    with pytest.raises(ModelError, match=found):
        read_graph(tmp_path, meta_graph, signature)


def _graph(inputs: list[str], outputs: dict[str, str], softmax: bool) -> Graph:
    graph_def = GraphDef()
    for name in inputs:
        graph_def.node.append(make_placeholder(name, tf.int32, [None, SEQ]))
    cast = make_node("Cast", "as_float", [inputs[0]], SrcT=tf.int32, DstT=tf.float32, Truncate=False)
    graph_def.node.append(cast)
    graph_def.node.append(make_node("Softmax", "probs", ["as_float"], T=tf.float32))
    return Graph(
        graph_def,
        {},
        {name: f"{name}:0" for name in inputs},
        {key: ("probs:0" if softmax else "as_float:0") for key in outputs} if outputs else {},
    )


@pytest.mark.parametrize(
    "names",
    [
        ["input_ids", "input_mask", "segment_ids", "label_ids", "is_real_example"],
        ["token_ids", "padding_mask", "segment_ids"],
        ["input_word_ids", "input_mask", "input_type_ids"],
        ["input_ids", "attention_mask", "token_type_ids"],
    ],
)
def test_common_input_names_map_by_themselves(names):
    graph, served = canonical(_graph(names, {"logits": ""}, softmax=False), "m")
    assert list(served.input_names.values()) == names[:3]
    assert graph.inputs == {bert: f"{user}:0" for bert, user in zip(BERT_INPUTS, names)}
    assert graph.serving_names == served.input_names


def test_logits_only_output_gets_a_softmax_and_probabilities_keep_theirs():
    bert_names = ["input_ids", "input_mask", "segment_ids"]
    graph, served = canonical(_graph(bert_names, {"output_0": ""}, False), "m")
    assert served.output_kind == "logits" and served.output_key == "output_0"
    assert graph.outputs == {"probabilities": f"{ADDED_SOFTMAX}:0", "logits": "as_float:0"}
    feeds = {"input_ids": np.array([[1, 2, 0, 0, 0, 3]], np.int32)}
    values = run_graph(graph, feeds)
    np.testing.assert_allclose(values["probabilities"], tf.nn.softmax(values["logits"]).numpy(), rtol=1e-6)
    graph, served = canonical(_graph(bert_names, {"probabilities": ""}, True), "m")
    assert served.output_kind == "probabilities"
    assert graph.outputs == {"probabilities": "probs:0", "logits": "as_float:0"}


def test_names_given_by_config_win_and_wrong_ones_are_named():
    names = ["ids", "mask", "types"]
    with pytest.raises(ModelError, match=r"no serving input for input_ids.*model.inputs.input_ids="):
        canonical(_graph(names, {"logits": ""}, False), "m")
    given = {"input_ids": "ids", "input_mask": "mask", "segment_ids": "types"}
    graph, served = canonical(_graph(names, {"logits": ""}, False), "m", given)
    assert dict(served.input_names) == given
    with pytest.raises(ModelError, match=r"model.inputs.input_mask=nope.*has no such input"):
        canonical(_graph(names, {"logits": ""}, False), "m", {**given, "input_mask": "nope"})
    with pytest.raises(ModelError, match=r"outputs \['a', 'b'\].*model.output=<key>"):
        canonical(_graph(names, {"a": "", "b": ""}, False), "m", given)
    graph, served = canonical(_graph(names, {"a": "", "b": ""}, False), "m", given, output="b")
    assert served.output_key == "b"
    with pytest.raises(ModelError, match=r"also takes \['extra'\]"):
        canonical(_graph([*names, "extra"], {"logits": ""}, False), "m", given)


@pytest.mark.parametrize("length", ["full", "trim"])  # trim: the served body is split from the length part
def test_signature_names_from_config_compile_and_are_served(tiny_model_dir, tmp_path, length):
    from support.refusals import copy_model, edit_saved_model
    from support.refusals import run_model as run

    def rename(meta):
        signature = meta.signature_def["serving_default"]
        signature.inputs["word_pieces"].CopyFrom(signature.inputs["input_ids"])
        del signature.inputs["input_ids"]

    model = copy_model(tiny_model_dir, tmp_path)
    edit_saved_model(model, rename)
    code, report, output = run(model, tmp_path / "run", "model.inputs.input_ids=word_pieces", f"length={length}")
    assert code == 0, output
    assert report["parity"]["passed"]
    assert report["input"]["signature"]["input_names"]["input_ids"] == "word_pieces"
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((tmp_path / "run" / "model" / "saved_model.pb").read_bytes())
    assert sorted(saved.meta_graphs[0].signature_def["serving_default"].inputs) == [
        "input_mask",
        "segment_ids",
        "word_pieces",
    ]
