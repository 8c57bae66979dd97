"""Hostile and broken inputs (issue 14): what TensorFlow's loader would run is checked, work is bounded,
bad values are refused where they enter, links stay inside the model. Each case: the exit code, the
message's key words, no model/ or staging folder, the input unchanged, and no canary file written."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from support.hostile_models import HOSTILE, edit_proto
from support.refusals import assert_refused, compose_cfg, folder_state, run_model
from tensorflow.core.framework import types_pb2

from bertc.driver.cli import run_job


def run_config(run_dir: Path, *overrides: str) -> tuple[int, dict, str]:
    """The CLI's job function in-process: a config fault exits 2 before anything is loaded."""
    stream = io.StringIO()
    try:
        code = run_job(compose_cfg(*overrides), run_dir, Console(file=stream, width=200, soft_wrap=True))
    except SystemExit as stop:
        code = stop.code
    return code, json.loads((run_dir / "report.json").read_text()), stream.getvalue()


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    target = tmp_path / "input" / "model"
    shutil.copytree(tiny_model_dir, target)
    return target


# ---- 1. what TensorFlow's loader runs is what was checked ------------------------------------------


@pytest.mark.parametrize("case", list(HOSTILE))
def test_model_that_writes_when_loaded_is_refused(model_copy, tmp_path, case):
    build, _, words = HOSTILE[case]
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    build(model_copy, canaries / "canary")
    before = folder_state(model_copy)
    code, report, output = run_model(model_copy, tmp_path / "run", "bench=quick")
    assert_refused(code, report, output, tmp_path / "run", *words, "security.allow_ops")
    assert all(word in output for word in words), output  # the terminal shows where it would run, too
    assert report["failed_step"] == "load"
    assert not list(canaries.iterdir()), "the model wrote its canary: bertc executed it"
    assert folder_state(model_copy) == before


LOAD_ALL = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    for path in sys.argv[1:]:
        tf.saved_model.load(path, tags=["serve"])
    """
)


@pytest.mark.parametrize(
    "cases",
    [
        ["restore op"],
        pytest.param(list(HOSTILE), marks=pytest.mark.slow),  # ~30 s: a TensorFlow load per model
    ],
)
def test_hostile_models_do_write_when_tensorflow_loads_them(tiny_model_dir, tmp_path, cases):
    """The cases above are real: TensorFlow's own loader (what verify would call) writes the canaries."""
    expected, models = [], []
    for number, (build, canary_name, _) in enumerate(HOSTILE[case] for case in cases):
        model, canaries = tmp_path / f"m{number}", tmp_path / f"c{number}"
        shutil.copytree(tiny_model_dir, model)
        canaries.mkdir()
        build(model, canaries / "canary")
        models.append(str(model))
        expected.append(canaries / canary_name)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_ALL, *models],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [path.exists() for path in expected] == [True] * len(expected), dict(zip(cases, expected))


def _retag(tag_sets):
    def edit(proto):
        while len(proto.meta_graphs) < len(tag_sets):
            proto.meta_graphs.add().CopyFrom(proto.meta_graphs[0])
        for meta, tags in zip(proto.meta_graphs, tag_sets):
            del meta.meta_info_def.tags[:]
            meta.meta_info_def.tags.extend(tags)

    return edit


@pytest.mark.parametrize(
    "tag_sets, words",
    [
        ([["serve", "gpu"]], ["no meta graph is tagged exactly 'serve'", "loads only the graph tagged exactly"]),
        ([["serve"], ["serve"]], ["2 meta graphs tagged exactly 'serve'", "Keep one serving graph"]),
        ([["train"]], ["no meta graph is tagged exactly 'serve'", "['train']"]),
    ],
)
def test_meta_graph_tags_must_pick_what_tensorflow_picks(model_copy, tmp_path, tag_sets, words):
    edit_proto(model_copy, _retag(tag_sets))
    code, report, output = run_model(model_copy, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", *words)


def test_tf2_object_graph_is_refused_before_tensorflow_loads_it(model_copy, tmp_path):
    """TensorFlow loads a SavedModel with an object graph by running its saved functions: refused."""
    edit_proto(model_copy, lambda proto: proto.meta_graphs[0].object_graph_def.nodes.add())
    code, report, output = run_model(model_copy, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", "TF2 object-based SavedModel", "does not check")


def test_dangling_input_is_a_clear_error(model_copy, tmp_path):
    def edit(proto):
        graph_def = proto.meta_graphs[0].graph_def
        restore = next(node for node in graph_def.node if node.name == "save/restore_all")
        restore.input.append("^nowhere/at_all")

    edit_proto(model_copy, edit)
    code, report, output = run_model(model_copy, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", "save/restore_all", "nowhere/at_all", "broken")


def test_restore_reading_another_checkpoint_is_refused(model_copy, tmp_path):
    """RestoreV2 is allowed only reading the filename TensorFlow feeds (the model's own variables)."""

    def edit(proto):
        meta = proto.meta_graphs[0]
        nodes = {node.name: node for node in meta.graph_def.node}
        restore = nodes["save/RestoreV2"]
        const = meta.graph_def.node.add()
        const.name, const.op = "hostile/elsewhere", "Const"
        const.attr["dtype"].type = types_pb2.DT_STRING
        const.attr["value"].tensor.dtype = types_pb2.DT_STRING
        const.attr["value"].tensor.string_val.append(str(tmp_path / "other" / "variables").encode())
        restore.input[0] = "hostile/elsewhere"

    edit_proto(model_copy, edit)
    code, report, output = run_model(model_copy, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", "save/RestoreV2 (RestoreV2), in the restore op")


def _call_in_restore_op(build_function):
    """A PartitionedCall of a traced function, needed by the restore op."""

    def edit(proto):
        function_def = build_function().function_def
        meta = proto.meta_graphs[0]
        meta.graph_def.library.function.add().CopyFrom(function_def)
        call = meta.graph_def.node.add()
        call.name, call.op = "called/call", "PartitionedCall"
        call.attr["f"].func.name = function_def.signature.name
        call.attr["Tin"].list.SetInParent()
        call.attr["Tout"].list.type.append(types_pb2.DT_FLOAT)
        restore = next(node for node in meta.graph_def.node if node.name == "save/restore_all")
        restore.input.append("^called/call")

    return edit


def test_pure_function_in_the_loader_path_compiles(model_copy, tmp_path):
    import tensorflow as tf

    @tf.function(autograph=False)
    def small_sum():
        return tf.reduce_sum(tf.fill([4, 4], 1.0))

    edit_proto(model_copy, _call_in_restore_op(small_sum.get_concrete_function))
    code, report, output = run_model(model_copy, tmp_path / "run")
    assert code == 0, output
    assert report["status"] == "passed"


def test_heavy_function_body_is_bounded_too(model_copy, tmp_path):
    import tensorflow as tf

    @tf.function(autograph=False)
    def heavy_sum():
        return tf.reduce_sum(tf.fill([12000, 12000], 1.0))

    edit_proto(model_copy, _call_in_restore_op(heavy_sum.get_concrete_function))
    code, report, output = run_model(model_copy, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", "[12000, 12000]", "in function", "called/call")


def test_function_call_with_pure_body_is_allowed_by_the_op_check(tiny_model_dir):
    """A call node is judged by its body: a pure one passes (and keeps working when imported)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from bertc.frontends.security import refuse_unsafe_loading

    @tf.function(autograph=False)
    def double(x):
        return x * 2.0

    function_def = double.get_concrete_function(tf.TensorSpec([], tf.float32)).function_def
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((tiny_model_dir / "saved_model.pb").read_bytes())
    meta = proto.meta_graphs[0]
    meta.graph_def.library.function.add().CopyFrom(function_def)
    value = meta.graph_def.node.add()
    value.name, value.op = "pure/value", "Const"
    value.attr["dtype"].type = types_pb2.DT_FLOAT
    value.attr["value"].tensor.dtype = types_pb2.DT_FLOAT
    value.attr["value"].tensor.float_val.append(1.0)
    call = meta.graph_def.node.add()
    call.name, call.op = "pure/call", "PartitionedCall"
    call.input.append("pure/value")
    call.attr["f"].func.name = function_def.signature.name
    call.attr["Tin"].list.type.append(types_pb2.DT_FLOAT)
    call.attr["Tout"].list.type.append(types_pb2.DT_FLOAT)
    next(node for node in meta.graph_def.node if node.name == "save/restore_all").input.append("^pure/call")
    signature = meta.signature_def["serving_default"]
    executed = refuse_unsafe_loading(
        meta, [signature.outputs["probabilities"].name], [info.name for info in signature.inputs.values()]
    )
    assert "pure/call" in executed["restore op"]
    assert "hostile" not in str(executed)


# ---- 2. bounded work ---------------------------------------------------------------------------


def _const(graph_def, name: str, values, dtype=types_pb2.DT_INT32):
    node = graph_def.node.add()
    node.name, node.op = name, "Const"
    node.attr["dtype"].type = dtype
    tensor = node.attr["value"].tensor
    tensor.dtype = dtype
    values = np.asarray(values)
    for size in values.shape:
        tensor.tensor_shape.dim.add().size = size
    (tensor.int_val if dtype == types_pb2.DT_INT32 else tensor.float_val).extend(values.ravel().tolist())
    return name


def _op(graph_def, name: str, op: str, inputs, **types):
    node = graph_def.node.add()
    node.name, node.op = name, op
    node.input.extend(inputs)
    for key, value in types.items():
        node.attr[key].type = value
    return name


def _heavy_fill(size: int, matmuls: int):
    """Fill [size, size] -> `matmuls` chained MatMuls -> a Sum feeding the softmax through a control edge."""

    def edit(proto):
        graph_def = proto.meta_graphs[0].graph_def
        one = _const(graph_def, "heavy/one", 1.0, types_pb2.DT_FLOAT)
        tensor = _op(
            graph_def,
            "heavy/fill",
            "Fill",
            [_const(graph_def, "heavy/dims", [size, size]), one],
            T=types_pb2.DT_FLOAT,
            index_type=types_pb2.DT_INT32,
        )
        for number in range(matmuls):
            tensor = _op(graph_def, f"heavy/matmul_{number}", "MatMul", [tensor, tensor], T=types_pb2.DT_FLOAT)
        total = _op(
            graph_def,
            "heavy/sum",
            "Sum",
            [tensor, _const(graph_def, "heavy/axes", [0, 1])],
            T=types_pb2.DT_FLOAT,
            Tidx=types_pb2.DT_INT32,
        )
        next(node for node in graph_def.node if node.name == "loss/Softmax").input.append("^" + total)

    return edit


def _huge_tile(proto):
    """Tile of a [1, 1] constant to [2^20, 2^20] floats: 4 TiB, in the init op."""
    meta = proto.meta_graphs[0]
    graph_def = meta.graph_def
    tiled = _op(
        graph_def,
        "heavy/tile",
        "Tile",
        [
            _const(graph_def, "heavy/seed", [[1.0]], types_pb2.DT_FLOAT),
            _const(graph_def, "heavy/multiples", [2**20, 2**20]),
        ],
        T=types_pb2.DT_FLOAT,
        Tmultiples=types_pb2.DT_INT32,
    )
    group = graph_def.node.add()
    group.name, group.op = "heavy/init", "NoOp"
    group.input.append("^" + tiled)
    meta.collection_def["saved_model_main_op"].node_list.value.append("heavy/init")


def _huge_output(proto):
    """probabilities made [batch, 2 * 2^30]: a classifier output that cannot be allocated."""
    graph_def = proto.meta_graphs[0].graph_def
    softmax = next(node for node in graph_def.node if node.name == "loss/Softmax")
    softmax.input[0] = _op(
        graph_def,
        "heavy/wide_logits",
        "Tile",
        [softmax.input[0], _const(graph_def, "heavy/widen", [1, 2**30])],
        T=types_pb2.DT_FLOAT,
        Tmultiples=types_pb2.DT_INT32,
    )


HEAVY = {
    "Fill 12000x12000 into chained MatMuls": (_heavy_fill(12000, 3), ["heavy/fill:0", "larger than", "[12000, 12000]"]),
    "chained MatMuls of 3000x3000": (_heavy_fill(3000, 40), ["would cost", "heavy/matmul_"]),
    "Tile to 4 TiB in the main op": (_huge_tile, ["heavy/tile:0", "[1048576, 1048576]"]),
    "output that cannot be allocated": (_huge_output, ["heavy/wide_logits:0", "larger than"]),
}


@pytest.mark.parametrize("case", list(HEAVY))
def test_unbounded_work_is_refused_before_anything_runs(model_copy, tmp_path, case):
    edit, words = HEAVY[case]
    edit_proto(model_copy, edit)
    before = folder_state(model_copy)
    code, report, output = run_model(model_copy, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", *words)
    assert report["failed_step"] == "load" and "steps" not in report  # refused before any step ran
    assert folder_state(model_copy) == before


def test_a_matmul_outside_the_bert_structure_is_refused_unless_named(model_copy, tmp_path):
    # small enough for every size and work bound: only the structure says it is not part of the BERT
    edit_proto(model_copy, _heavy_fill(32, 2))
    before = folder_state(model_copy)
    code, report, output = run_model(model_copy, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", "outside the BERT structure", "heavy/matmul_0")
    assert "security.allow_unrecognised" in report["error"] and report["failed_step"] == "load"
    assert folder_state(model_copy) == before
    code, report, output = run_model(model_copy, tmp_path / "named", "security.allow_unrecognised=[heavy/*]")
    assert code == 0, output


def test_static_bound_of_a_real_model_is_recorded(tiny_model_dir, tmp_path):
    code, report, output = run_model(tiny_model_dir, tmp_path / "run", "verify.timeout_s=600")
    assert code == 0, output
    bounds = report["input"]["bounds"]
    assert bounds["batch"] == 8 and 0 < bounds["work"] < bounds["work_limit"]
    assert bounds["largest_tensor"] < bounds["tensor_limit"]


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["target.timeout_s=0.001"], "target.timeout_s"),
        (["verify.timeout_s=0.001"], "verify.timeout_s"),
        (["verify=off", "bench=quick", "bench.timeout_s=0.001"], "bench.timeout_s"),
    ],
)
def test_time_limit_ends_in_a_clean_error(tiny_model_dir, tmp_path, overrides, key):
    code, report, output = run_model(tiny_model_dir, tmp_path / "run", *overrides)
    assert_refused(code, report, output, tmp_path / "run", key, "abandoned")


HANGING_CHILD = textwrap.dedent(
    """
    import sys, threading, time
    import bertc.evaluate.verify
    def hang(*args, **kwargs):  # a call that never returns, like a TensorFlow op that cannot be cancelled
        # daemon=False: a normal interpreter exit would wait for it
        blocker = threading.Thread(target=time.sleep, args=(3600,), daemon=False)
        blocker.start()
        blocker.join()
    bertc.evaluate.verify.compare = hang
    from bertc.__main__ import main
    sys.argv = ["bertc", "model.path=" + sys.argv[1], "bench=off", "verify.batches=1", "verify.timeout_s=2",
                "hydra.run.dir=" + sys.argv[2]]
    main()
    """
)


@pytest.mark.slow  # ~30 s: a fresh process compiles the tiny model
def test_cli_exits_after_a_time_limit_without_waiting_for_the_call(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", HANGING_CHILD, str(tiny_model_dir), str(run_dir)],
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "failed" and "verify.timeout_s=2" in report["error"]
    assert not (run_dir / "model").exists() and not list(run_dir.glob(".model.partial-*"))


# ---- 5. bad values caught where they enter ---------------------------------------------------------


def _rewrite_checkpoint(model: Path, change) -> None:
    """Write the model's checkpoint again with `change(name, value) -> value` applied to every variable."""
    import tensorflow as tf

    prefix = str(model / "variables" / "variables")
    reader = tf.train.load_checkpoint(prefix)
    names = sorted(reader.get_variable_to_shape_map())
    values = [change(name, reader.get_tensor(name)) for name in names]
    for file in (model / "variables").iterdir():
        file.unlink()
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(value) for value in values],
    )


def _poison(name, value):
    if name == "bert/encoder/layer_1/output/dense/kernel":
        value = value.copy()
        value[3, 5] = np.inf
    return value


def _reshape_bias(name, value):
    return np.zeros([3], value.dtype) if name == "output_bias" else value


def _future_graph(proto):
    import tensorflow as tf

    proto.meta_graphs[0].graph_def.versions.min_consumer = tf.version.GRAPH_DEF_VERSION + 1


MODEL_FAULTS = {
    "Inf weight": (
        lambda m: _rewrite_checkpoint(m, _poison),
        ["bert/encoder/layer_1/output/dense/kernel", "NaN or Inf", "[3, 5]"],
    ),
    "checkpoint shape": (lambda m: _rewrite_checkpoint(m, _reshape_bias), ["output_bias", "[3]", "[2]"]),
    "graph version": (lambda m: edit_proto(m, _future_graph), ["cannot be read by this TensorFlow", "min_consumer"]),
}


@pytest.mark.parametrize("case", list(MODEL_FAULTS))
def test_bad_model_values_are_user_errors(model_copy, tmp_path, case):
    breaker, words = MODEL_FAULTS[case]
    breaker(model_copy)
    before = folder_state(model_copy)
    code, report, output = run_model(model_copy, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", *words)
    assert folder_state(model_copy) == before


def _tsv(path: Path) -> Path:
    path.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tthe cat sat\ta cat sat\n")
    return path


def _vocab(model: Path, rows: int) -> None:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{number}" for number in range(rows - len(specials))]
    (model / "vocab.txt").write_text("\n".join(specials + words) + "\n")


def test_vocab_longer_than_the_embedding_table(model_copy, tmp_path):
    _vocab(model_copy, 30522 + 7)
    dataset = _tsv(tmp_path / "dev.tsv")
    code, report, output = run_model(model_copy, tmp_path / "run", f"verify.dataset={dataset}")
    assert_refused(code, report, output, tmp_path / "run", "30529 tokens", "30522 rows")
    assert "steps" not in report  # refused before compiling


@pytest.mark.parametrize("case", ["missing", "folder", "unreadable"])
def test_dataset_is_checked_before_compiling(model_copy, tmp_path, case):
    _vocab(model_copy, 30522)
    dataset = tmp_path / "dev.tsv"
    if case == "folder":
        dataset.mkdir()
    elif case == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads a file whatever its mode")
        _tsv(dataset).chmod(0)
    words = {"missing": "does not exist", "folder": "is a folder", "unreadable": "cannot be read"}[case]
    code, report, output = run_model(model_copy, tmp_path / "run", f"verify.dataset={dataset}")
    assert_refused(code, report, output, tmp_path / "run", f"verify.dataset={dataset}", words)
    assert "steps" not in report


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["verify.tolerance=0"], ["verify.tolerance=0", "positive"]),
        (["verify.tolerance=-1e-3"], ["verify.tolerance=-0.001"]),
        (["verify.tolerance=nan"], ["verify.tolerance=nan"]),
        (["target.intra_op_threads=-1"], ["target.intra_op_threads=-1"]),
        (["target.inter_op_threads=-2"], ["target.inter_op_threads=-2"]),
        (
            ["partition=cpu_embed", "partition.boundaries=[@embedding_output,@attention_mask,@embedding_output]"],
            ["partition.boundaries", "@embedding_output", "more than once"],
        ),
        (["verify.timeout_s=0"], ["verify.timeout_s=0"]),
    ],
)
def test_bad_config_values_are_refused_at_the_plan(tmp_path, overrides, words):
    code, report, output = run_config(tmp_path / "run", "model=tiny", *overrides)
    assert_refused(code, report, output, tmp_path / "run", *words)
    assert report["failed_step"] == "plan"


@pytest.mark.parametrize(
    "overrides, words",
    [
        # within the declared range (at most 2**20), beyond this machine's memory for the tiny model's scores
        (["shape.batch_size=1000000"], ["shape.batch_size", "1000000", "GiB", "smaller batch"]),
        (["bench=quick", "bench.batch_sizes=[1,1048576]"], ["bench.batch_sizes", "1048576"]),
        (["security.allow_ops=[ReadFile,NotAnOp]"], ["NotAnOp", "does not know"]),
    ],
)
def test_batch_beyond_memory_and_unknown_allowed_op(tiny_model_dir, tmp_path, overrides, words):
    code, report, output = run_model(tiny_model_dir, tmp_path / "run", *overrides)
    assert_refused(code, report, output, tmp_path / "run", *words)


# ---- 6. symbolic links -------------------------------------------------------------------------


def test_link_out_of_the_model_folder_is_refused(model_copy, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's")
    (model_copy / "variables" / "zz").symlink_to(secret)
    before = folder_state(model_copy)
    code, report, output = run_model(model_copy, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", "variables/zz", "outside the model folder")
    assert report["failed_step"] == "input"  # before the digest could read it
    assert folder_state(model_copy) == before


def test_link_loop_says_loop(model_copy, tmp_path):
    (model_copy / "variables" / "loop").symlink_to(model_copy / "variables" / "loop")
    code, report, output = run_model(model_copy, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", "variables/loop", "symbolic link loop")


def test_model_path_that_is_a_loop_says_loop(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    code, report, output = run_model(loop, tmp_path / "run")
    assert_refused(code, report, output, tmp_path / "run", "symbolic link loop")
    assert "does not exist" not in report["error"]


def test_links_inside_the_model_folder_are_followed(model_copy):
    from bertc.frontends.load import model_digest, refuse_outside_links

    digest = model_digest(model_copy)
    (model_copy / "variables" / "alias.index").symlink_to(model_copy / "variables" / "variables.index")
    refuse_outside_links(model_copy)
    assert model_digest(model_copy) != digest  # the alias is part of the input, by its bytes
