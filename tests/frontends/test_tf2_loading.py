"""What TensorFlow's TF2 loader runs of a model that serving never uses, checked before anything loads it:
every tracked resource's creator, initializer and destroyer, every initializer the init op reaches
through control edges, every tracked object's restore function, and the asset files a table is filled
from. Each hostile model is shown to do its harm (write its canary, read the outside file) when TensorFlow
loads it, and a bertc run on it is refused with exit 2 before anything of it runs."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from support.hostile_models import edit_proto
from support.refusals import assert_refused, folder_state, run_model

from bertc.frontends.load import load_saved_model
from bertc.frontends.security import UnsafeGraphError


class _Writer(tf.saved_model.experimental.TrackableResource):
    """A resource serving never reads; the loader still creates, initializes and (later) destroys it."""

    def __init__(self, canary: str, where: str):
        self.canary, self.where = canary, where
        super().__init__()

    def _create_resource(self):
        if self.where == "_create_resource":
            tf.io.write_file(self.canary, "created")
        return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

    def _initialize(self):
        if self.where == "_initialize":
            tf.io.write_file(self.canary, "initialized")
        if self.where == "_create_resource":  # a real initializer uses the handle: the loader creates it for that
            tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)

    def _destroy_resource(self):
        if self.where == "_destroy_resource":
            tf.io.write_file(self.canary, "destroyed")


class _Served(tf.Module):
    def __init__(self, resource=None):
        super().__init__()
        self.kernel = tf.Variable(np.ones((4, 3), np.float32))
        if resource is not None:
            self.unused = resource

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.int32, name="input_ids")], autograph=False)
    def serve(self, input_ids):
        return {"logits": tf.matmul(tf.cast(input_ids, tf.float32), self.kernel)}


def _save(module: tf.Module, path) -> None:
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@pytest.mark.parametrize("where", ["_create_resource", "_initialize"])
def test_a_resource_function_that_writes_is_refused_before_tensorflow_loads_it(tmp_path, where):
    canary = tmp_path / "canary.txt"
    model = tmp_path / "model"
    _save(_Served(_Writer(str(canary), where)), model)
    canary.unlink(missing_ok=True)  # tracing may have run the function once
    with pytest.raises(UnsafeGraphError, match="WriteFile") as refused:
        load_saved_model(model)
    assert "resource functions" in str(refused.value) or "init op" in str(refused.value)
    assert not canary.exists()
    tf.saved_model.load(str(model))  # the control: TensorFlow's loader does run it
    assert canary.exists()


def test_a_destroyer_that_writes_is_refused(tmp_path):
    canary = tmp_path / "canary.txt"
    model = tmp_path / "model"
    _save(_Served(_Writer(str(canary), "_destroy_resource")), model)
    canary.unlink(missing_ok=True)  # the saved module's own resource was destroyed while saving
    with pytest.raises(UnsafeGraphError, match="WriteFile .* in the resource functions"):
        load_saved_model(model)
    assert not canary.exists()
    loaded = tf.saved_model.load(str(model))  # the control: what TensorFlow loads, it destroys when freed
    del loaded
    gc.collect()
    assert canary.exists()


class _Restorer(tf.Module):
    """An object that saves and restores its own state (as tf.train.Checkpoint's saveables do): the loader
    calls its restore function while restoring the model's checkpoint."""

    def __init__(self, canary: str):
        super().__init__()
        self.canary = canary

    def _serialize_to_tensors(self):
        return {"state": tf.constant(1.0)}

    def _restore_from_tensors(self, restored_tensors):
        tf.io.write_file(self.canary, "restored")
        return tf.no_op()


def test_a_restore_function_that_writes_is_refused_before_tensorflow_loads_it(tmp_path):
    canary = tmp_path / "canary.txt"
    model = tmp_path / "input" / "model"
    _save(_Served(_Restorer(str(canary))), model)
    before = folder_state(model)
    code, report, output = run_model(model, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", "WriteFile", "restore functions", "security.allow_ops")
    assert report["failed_step"] == "load"
    assert not canary.exists(), "bertc ran the model's restore function"
    assert folder_state(model) == before
    tf.saved_model.load(str(model))  # the control: TensorFlow's loader runs it while restoring
    assert canary.exists()


class _Table(_Served):
    """A vocabulary table filled from an asset file when the model is loaded (StaticHashTable,
    TextFileInitializer); `lookup` shows what it was filled with."""

    def __init__(self, vocabulary: Path):
        super().__init__()
        initializer = tf.lookup.TextFileInitializer(
            str(vocabulary),
            tf.string,
            tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER,
        )
        self.table = tf.lookup.StaticHashTable(initializer, default_value=-1)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def lookup(self, word):
        return self.table.lookup(word)


TABLE_OPS = "security.allow_ops=[HashTableV2,InitializeTableFromTextFileV2,LookupTableFindV2]"


def test_a_table_asset_leaving_the_folder_is_refused_before_tensorflow_reads_it(tmp_path):
    """The asset's saved path rewritten to assets/../../..: TensorFlow fills the table from the outside file.
    bertc refuses it by its path even where the user allowed the table's ops."""
    vocabulary, outside = tmp_path / "vocab.txt", tmp_path / "outside.txt"
    vocabulary.write_text("a\nb\n")
    outside.write_text("secret\n")
    model = tmp_path / "input" / "model"
    _save(_Table(vocabulary), model)
    edit_proto(model, lambda proto: setattr(proto.meta_graphs[0].asset_file_def[0], "filename", "../../../outside.txt"))
    before = folder_state(model)
    code, report, output = run_model(model, tmp_path / "run", TABLE_OPS)
    assert_refused(code, report, output, tmp_path / "run", "assets/../../../outside.txt", str(outside))
    assert "outside the model folder" in report["error"] and report["failed_step"] == "load"
    assert folder_state(model) == before
    loaded = tf.saved_model.load(str(model))  # the control: TensorFlow's loader reads the outside file
    assert loaded.lookup(tf.constant("secret")).numpy() == 0 and loaded.lookup(tf.constant("a")).numpy() == -1


def test_a_pure_resource_is_not_refused_by_the_loader_check(tmp_path):
    """A harmless tracked resource passes the loader-path check (the model is then read as any other)."""
    from bertc.frontends.security import refuse_unsafe_tf2_loading

    model = tmp_path / "model"
    _save(_Served(_Writer(str(tmp_path / "never"), "nowhere")), model)
    from bertc.frontends.load import _read_meta_graph

    run = refuse_unsafe_tf2_loading(_read_meta_graph(model))
    assert len(run["resource functions"]) == 3 and run["init op"]
