"""What TensorFlow's TF2 loader runs of a model that serving never uses, checked before anything loads it:
every tracked resource's creator, initializer and destroyer, and every initializer the init op reaches
through control edges. Each hostile model is shown to write its canary when TensorFlow loads it."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

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
    with pytest.raises(UnsafeGraphError, match="WriteFile .* in the resource functions"):
        load_saved_model(model)


def test_a_pure_resource_is_not_refused_by_the_loader_check(tmp_path):
    """A harmless tracked resource passes the loader-path check (the model is then read as any other)."""
    from bertc.frontends.security import refuse_unsafe_tf2_loading

    model = tmp_path / "model"
    _save(_Served(_Writer(str(tmp_path / "never"), "nowhere")), model)
    from bertc.frontends.load import _read_meta_graph

    run = refuse_unsafe_tf2_loading(_read_meta_graph(model))
    assert len(run["resource functions"]) == 3 and run["init op"]
