"""A dialect is one module: a throwaway frontend, registered at run time, detects a made-up SavedModel form (the
tiny run_classifier model whose serving signature carries a method name of its own), reads it through the TF1
reader, and the model compiles and verifies through it end to end under the dialect's name."""

from __future__ import annotations

import shutil

import pytest
from support.compile import compile_tiny
from tensorflow.core.protobuf import saved_model_pb2

from bertc import frontends
from bertc.frontends.load import load_saved_model

MARK = "bertc.test/marked_classify"  # the signature's method_name that says "this is the marked dialect"


class MarkedFrontend:
    """A run_classifier graph whose signature is marked by MARK: read, checked and called as TF1 is."""

    name = "marked"
    calls_signature = False  # verify prunes its graph to probabilities and logits, as TF1's
    inlines_functions = False  # the static bound covers the meta graph's nodes, as TF1's

    def detect(self, meta_graph, signature) -> bool:
        return signature.method_name == MARK

    def read(self, path, meta_graph, signature, allow_ops):
        return frontends.get("tf1").read(path, meta_graph, signature, allow_ops)

    def check_loading(self, path, meta_graph, signature, allow_ops):
        return frontends.get("tf1").check_loading(path, meta_graph, signature, allow_ops)


@pytest.fixture(scope="module")
def marked_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its serving signature's method_name set to MARK (nothing else changed)."""
    path = tmp_path_factory.mktemp("marked") / "model"
    shutil.copytree(tiny_model_dir, path)
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.signature_def["serving_default"].method_name = MARK
    (path / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    return path


@pytest.fixture
def marked_dialect():
    frontends.register(MarkedFrontend(), before="tf1")  # NOTE: TF1 would detect the marked graph too
    yield
    frontends.unregister("marked")


def test_a_registered_dialect_detects_reads_and_compiles_end_to_end(marked_dialect, marked_model_dir, tmp_path):
    assert list(frontends.FRONTENDS) == ["tf2", "marked", "tf1"]  # detection order
    report = compile_tiny(marked_model_dir, tmp_path / "run", [])
    assert report["input"]["signature"]["dialect"] == "marked"
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] < 1e-5  # the original called as TF1


def test_without_it_the_marked_model_is_plain_tf1(marked_model_dir):
    assert load_saved_model(marked_model_dir).dialect == "tf1"


def test_an_unknown_or_taken_dialect_names_the_registered_ones(marked_dialect):
    with pytest.raises(KeyError, match="dialects: tf2, marked, tf1"):
        frontends.get("tf3")
    with pytest.raises(ValueError, match="'marked' exists already"):
        frontends.register(MarkedFrontend())
