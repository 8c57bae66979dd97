"""Targets: the neuron target's contract with tensorflow-neuron(x), checked with stand-in modules that record
calls (not Neuron itself); sequence-length errors; GPU runs (marked, skipped without a GPU)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from bertc.errors import ConfigError
from bertc.evaluate.batches import synthetic_batches
from bertc.frontends.load import load_saved_model
from bertc.ir.graph import run_graph
from bertc.passes.partition.partition_graph import PartitionParams, partition_graph
from bertc.passes.remove_training_ops import RemovalParams, remove_training_ops
from bertc.passes.rewrite_attention_mask import MaskParams, rewrite_attention_mask
from bertc.targets import neuron
from bertc.targets.base import TargetOptions
from bertc.targets.neuron_target import TARGET as NEURON
from bertc.targets.neuron_target import NeuronParams


@pytest.fixture(scope="module")
def partitioned(tiny_model_dir):
    graph = load_saved_model(tiny_model_dir).graph
    graph = remove_training_ops(graph, RemovalParams()).graph
    graph = rewrite_attention_mask(graph, MaskParams()).graph
    return partition_graph(graph, PartitionParams()).graph


def _all_node_defs(concrete):
    graph_def = concrete.graph.as_graph_def()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return nodes


class RecordingTracer(types.ModuleType):
    """Stands in for tensorflow.neuron / tensorflow_neuronx: records what bertc hands the compiler."""

    def __init__(self, name: str):
        super().__init__(name)
        self.calls = []

    def trace(self, func, example_inputs, subgraph_builder_function=None):
        import os

        call = {"flags": os.environ.get("NEURON_CC_FLAGS"), "shapes": [tuple(t.shape) for t in example_inputs]}
        if subgraph_builder_function is not None:
            nodes = _all_node_defs(func.get_concrete_function(*example_inputs))
            call["to_neuron"] = {node.op for node in nodes if subgraph_builder_function(node)}
            call["to_host"] = {node.op for node in nodes if not subgraph_builder_function(node)}
        self.calls.append(call)
        return func  # a stand-in compiles nothing: the traced function is the function


def test_neuron_missing_is_a_clear_error_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_neuronx", None)
    monkeypatch.setitem(sys.modules, "tensorflow.neuron", None)
    with pytest.raises(ConfigError, match="Neuron package repository") as error:
        NEURON.check_available(TargetOptions("neuron", "auto", 8, 128))
    assert "placeholder" in str(error.value) and "target=xla" in str(error.value)


def test_neuron_inf1_contract_partition_decides_what_goes_to_neuron(partitioned, monkeypatch):
    tracer = RecordingTracer("tensorflow.neuron")
    monkeypatch.setitem(sys.modules, "tensorflow_neuronx", None)
    monkeypatch.setitem(sys.modules, "tensorflow.neuron", tracer)
    options = TargetOptions("neuron", "auto", 4, 128, compute_dtype="bfloat16", params=NeuronParams())
    module = NEURON.lower(partitioned, options).module
    (call,) = tracer.calls
    assert call["flags"] == "--fp32-cast=matmult-bf16 --dynamic-batch-size"
    assert call["shapes"] == [(4, 128)] * 3
    assert {"GatherV2", "OneHot"} <= call["to_host"], "the embedding lookups must stay on the CPU"
    assert {"BatchMatMulV2", "Softmax", "Tanh"} <= call["to_neuron"], "the encoder must go to Neuron"
    assert "GatherV2" not in call["to_neuron"]
    outputs = module.serve(*[tf.zeros([3, 128], tf.int32)] * 3)
    assert outputs["probabilities"].shape == (3, 2)


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_neuronx_contract_traces_device_part_at_static_shape(partitioned, monkeypatch, dynamic_batch, tmp_path):
    tracer = RecordingTracer("tensorflow_neuronx")
    monkeypatch.setitem(sys.modules, "tensorflow_neuronx", tracer)
    options = TargetOptions("neuron", "auto", 4, 128, compute_dtype="float16", params=NeuronParams(dynamic_batch))
    module = NEURON.lower(partitioned, options).module
    (call,) = tracer.calls
    assert call["flags"] == "--auto-cast=matmult --auto-cast-type=fp16"
    assert sorted(call["shapes"]) == sorted([(4, 1, 1, 128), (4, 128, 32)]), "the boundary tensors, at the static batch"
    feeds = synthetic_batches(1, 6 if dynamic_batch else 4, 128, 30522, seed=5)[0].feeds()
    expected = run_graph(partitioned, feeds)["probabilities"]
    served = module.serve(**{key: tf.constant(value) for key, value in feeds.items()})["probabilities"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert_saves_and_serves(module, tmp_path, feeds, expected)


def assert_saves_and_serves(module, tmp_path, feeds, expected):
    """The traced module as the target saves it, loaded back: the same probabilities."""
    from bertc.targets.serving import save_compiled

    save_compiled(module, tmp_path / "model")
    serving = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"]
    loaded = serving(**{key: tf.constant(value) for key, value in feeds.items()})["probabilities"].numpy()
    np.testing.assert_allclose(loaded, expected, atol=1e-5)


@pytest.fixture(scope="module")
def bucketed(tiny_model_dir):
    """The partitioned graph of `partitioned`, made length-polymorphic with buckets 32, 64 (and 128)."""
    from bertc.passes.length.trim_sequence_length import LengthParams, trim_sequence_length

    graph = load_saved_model(tiny_model_dir).graph
    graph = remove_training_ops(graph, RemovalParams()).graph
    graph = rewrite_attention_mask(graph, MaskParams()).graph
    graph = trim_sequence_length(graph, LengthParams("buckets", (32, 64))).graph
    return partition_graph(graph, PartitionParams()).graph


class StaticShapeTracer(RecordingTracer):
    """Like a Neuron trace, the traced function takes only the shapes it was traced at."""

    def trace(self, func, example_inputs, subgraph_builder_function=None):
        super().trace(func, example_inputs, subgraph_builder_function)
        specs = [tf.TensorSpec(tensor.shape, tensor.dtype) for tensor in example_inputs]
        return tf.function(func, input_signature=specs, autograph=False)


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_neuronx_buckets_trace_once_per_bucket_and_each_length_runs_its_own(
    bucketed, monkeypatch, dynamic_batch, tmp_path
):
    tracer = StaticShapeTracer("tensorflow_neuronx")
    monkeypatch.setitem(sys.modules, "tensorflow_neuronx", tracer)
    options = TargetOptions("neuron", "auto", 4, 128, length_mode="buckets", params=NeuronParams(dynamic_batch))
    NEURON.check_available(options)
    module = NEURON.lower(bucketed, options).module
    assert [sorted(call["shapes"]) for call in tracer.calls] == [
        sorted([(4, 1, 1, width), (4, width, 32)]) for width in (32, 64, 128)
    ], "one trace per bucket, the boundary tensors at the bucket's width and the static batch"
    assert sorted(module.device_by_width) == [32, 64, 128]
    # A call at a width other than its trace's would fail, as on Neuron: each bucket's branch runs its own trace.
    for longest, width in ((20, 32), (50, 64), (100, 128)):
        batch = synthetic_batches(1, 6 if dynamic_batch else 4, 128, 30522, seed=longest)[0]
        feeds = batch.feeds()
        feeds["input_mask"][:, longest:] = 0
        feeds["input_mask"][0, :longest] = 1
        assert int(module.length.lengths(tf.constant(feeds["input_mask"]))["length"]) == width
        expected = run_graph(bucketed, feeds)["probabilities"]
        served = module.serve(**{key: tf.constant(value) for key, value in feeds.items()})["probabilities"].numpy()
        np.testing.assert_allclose(served, expected, atol=1e-5)
    assert_saves_and_serves(module, tmp_path, feeds, expected)  # the last batch: the 128 bucket


def test_inf1_refuses_buckets_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_neuronx", None)
    monkeypatch.setitem(sys.modules, "tensorflow.neuron", RecordingTracer("tensorflow.neuron"))
    with pytest.raises(ConfigError, match="needs tensorflow-neuronx") as error:
        NEURON.check_available(TargetOptions("neuron", "auto", 8, 128, length_mode="buckets"))
    assert "length=full" in str(error.value)
    NEURON.check_available(TargetOptions("neuron", "auto", 8, 128, length_mode="full"))


@pytest.mark.parametrize(
    "overrides, kind, flags",
    [
        (["precision=mixed", "precision.dtype=bfloat16"], "neuronx", "--auto-cast=matmult --auto-cast-type=bf16"),
        (["precision=mixed", "precision.dtype=bfloat16"], "neuron", "--fp32-cast=matmult-bf16 --dynamic-batch-size"),
        (["precision=mixed"], "neuronx", "--auto-cast=matmult --auto-cast-type=fp16"),
        (["precision=fp32"], "neuron", "--fp32-cast=none --dynamic-batch-size"),
    ],
)
def test_neuron_cast_flags_follow_the_precision_rules_not_the_preset_name(overrides, kind, flags):
    from support.compile import compose_config

    from bertc.driver.pipeline import target_options
    from bertc.driver.plan import build_plan
    from bertc.frontends.load import BertShape

    plan = build_plan(compose_config(["target=neuron", *overrides]))
    shape = BertShape(2, 32, 4, 8, 64, 30522, 2, 512, 128, 2, 1e-12)
    options = target_options(plan, shape, "sha256:x")
    assert " ".join(neuron.compiler_flags(kind, options.compute_dtype, options.params.dynamic_batch)) == flags


def test_wrong_sequence_length_names_the_expected_length(partitioned, tmp_path):
    from bertc.targets.serving import CompiledBert, Placement, save_compiled

    module = CompiledBert(partitioned, 128, Placement())
    zeros = tf.zeros([2, 64], tf.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="compiled for sequence length 128"):
        module._serve(zeros, zeros, zeros)  # what a caller bypassing the signature meets
    save_compiled(module, tmp_path / "model")
    serving = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"]
    # TensorFlow checks the signature's shape on some call paths; bertc's own assert covers the others.
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match=r"None, 128|sequence length 128"):
        serving(input_ids=zeros, input_mask=zeros, segment_ids=zeros)
    assert serving(
        input_ids=tf.zeros([5, 128], tf.int32),
        input_mask=tf.ones([5, 128], tf.int32),
        segment_ids=tf.zeros([5, 128], tf.int32),
    )["probabilities"].shape == (5, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="TensorFlow sees no GPU")
@pytest.mark.parametrize("target", ["tf", "xla"])
def test_gpu_targets_match_original(tiny_model_dir, tmp_path, target):
    from support.compile import compile_tiny

    report = compile_tiny(
        tiny_model_dir, tmp_path, [f"target={target}", "target.device=gpu", "precision=mixed", "partition=cpu_embed"]
    )
    assert report["parity"]["passed"]


def test_input_guard_rejects_ids_outside_the_tables(partitioned, tmp_path):
    from bertc.targets.serving import CompiledBert, Placement, save_compiled

    module = CompiledBert(partitioned, 128, Placement(input_limits={"input_ids": 30522, "segment_ids": 2}))
    save_compiled(module, tmp_path / "model")
    serving = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"]
    ids, mask, segments = (np.zeros([2, 128], np.int32) for _ in range(3))
    mask[:, :4] = 1
    assert serving(input_ids=ids, input_mask=mask, segment_ids=segments)["probabilities"].shape == (2, 2)
    ids[1, 3] = 30522
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"input_ids holds an id outside \[0, 30522\)"):
        serving(input_ids=ids, input_mask=mask, segment_ids=segments)
    ids[1, 3], segments[0, 5] = 7, -1
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"segment_ids holds an id outside \[0, 2\)"):
        serving(input_ids=ids, input_mask=mask, segment_ids=segments)


@pytest.mark.parametrize(
    ("name", "why"),
    [("onnxruntime", "no fast float16 or bfloat16 path"), ("openvino", "bf16 is slower than f32 on this CPU kind")],
)
def test_an_engine_target_refuses_a_gpu_and_a_narrow_float_saying_what_to_use(name, why):
    from bertc import targets

    target = targets.get(name)
    pytest.importorskip(name)
    target.check_available(TargetOptions(name=name, device="cpu", batch_size=1, seq_len=8))
    with pytest.raises(ConfigError, match=f"target={name} runs on the CPU here; use target.device=cpu"):
        target.check_available(TargetOptions(name=name, device="gpu", batch_size=1, seq_len=8))
    for dtype in ("bfloat16", "float16"):
        options = TargetOptions(name=name, device="auto", batch_size=1, seq_len=8, compute_dtype=dtype)
        with pytest.raises(ConfigError, match=f"computes in {dtype}\\): .*{why}.* Use precision=fp32 or int8"):
            target.check_available(options)
