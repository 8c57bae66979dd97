"""Bad input, unsafe graphs and faults: each gets a clear error, a non-zero exit, and no model/ folder."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.refusals import copy_model, edit_saved_model
from support.refusals import run_model as run
from tensorflow.core.framework import node_def_pb2, types_pb2


def assert_clean_failure(code, report, output, run_dir, *words):
    assert code == 2, output
    assert report["status"] == "failed"
    for word in words:
        assert word in report["error"], report["error"]
    assert not (run_dir / "model").exists() and not (run_dir / "rejected").exists()
    assert not list(run_dir.glob(".model.partial-*")), "a staging folder was left behind"


def _no_signature(meta):
    signature = meta.signature_def["serving_default"]
    meta.signature_def["predict"].CopyFrom(signature)
    del meta.signature_def["serving_default"]


def _no_input_ids(meta):
    signature = meta.signature_def["serving_default"]
    signature.inputs["word_pieces"].CopyFrom(signature.inputs["input_ids"])  # a name no exporter uses
    del signature.inputs["input_ids"]


BROKEN_MODELS = {
    "not a SavedModel": (lambda p: (p / "saved_model.pb").unlink(), ["no saved_model.pb"]),
    "corrupted protobuf": (
        lambda p: (p / "saved_model.pb").write_bytes(b"\x0a\xff\xff\xff\x0f garbage"),
        ["not a valid SavedModel protobuf"],
    ),
    "truncated protobuf": (
        lambda p: (p / "saved_model.pb").write_bytes((p / "saved_model.pb").read_bytes()[:5000]),
        ["truncated or corrupted"],
    ),
    "missing variable shard": (lambda p: (p / "variables" / "variables.data-00000-of-00001").unlink(), ["variables"]),
    "short variable shard": (
        lambda p: (p / "variables" / "variables.data-00000-of-00001").write_bytes(
            (p / "variables" / "variables.data-00000-of-00001").read_bytes()[:1000]
        ),
        ["short", "export the model again"],
    ),
    "no serving signature": (
        lambda p: edit_saved_model(p, _no_signature),
        ["no 'serving_default' signature", "predict"],
    ),
    "lacks input_ids": (
        lambda p: edit_saved_model(p, _no_input_ids),
        ["no serving input for input_ids", "model.inputs.input_ids="],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_MODELS))
def test_broken_model_is_refused_clearly(tiny_model_dir, tmp_path, case):
    breaker, words = BROKEN_MODELS[case]
    model = copy_model(tiny_model_dir, tmp_path)
    breaker(model)
    code, report, output = run(
        model,
        tmp_path / "run",
    )
    assert_clean_failure(code, report, output, tmp_path / "run", *words)


def test_not_a_bert_is_refused_with_what_was_looked_for(tmp_path):
    import tensorflow as tf

    v1 = tf.compat.v1
    path = tmp_path / "linear"
    with tf.Graph().as_default(), v1.Session() as session:
        inputs = {
            name: v1.placeholder(tf.int32, [None, 16], name=name) for name in ("input_ids", "input_mask", "segment_ids")
        }
        weights = v1.get_variable("w", [16, 2], use_resource=False)
        logits = tf.matmul(tf.cast(inputs["input_ids"], tf.float32), weights)
        probabilities = tf.nn.softmax(logits)
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(str(path))
        signature = v1.saved_model.predict_signature_def(inputs, {"probabilities": probabilities})
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()
    code, report, output = run(path, tmp_path / "run")
    assert_clean_failure(code, report, output, tmp_path / "run", "is not a BERT", "looked for")


def test_sequence_length_above_max_positions(tiny_model_dir, tmp_path):
    code, report, output = run(tiny_model_dir, tmp_path / "run", "shape.seq_len=600")
    assert_clean_failure(code, report, output, tmp_path / "run", "max_position_embeddings=512")
    command = ["-m", "bertc.model.export", "--size", "tiny", "--seq-len", "600", "--out", str(tmp_path / "x")]
    result = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "max_position_embeddings" in result.stderr and "Traceback" not in result.stderr


def _unsafe_edit(op: str):
    def edit(meta):
        node = meta.graph_def.node.add()
        node.CopyFrom(node_def_pb2.NodeDef(name="sneaky", op=op))
        if op == "ReadFile":
            filename = meta.graph_def.node.add()
            filename.name, filename.op = "sneaky/filename", "Const"
            filename.attr["dtype"].type = types_pb2.DT_STRING
            filename.attr["value"].tensor.dtype = types_pb2.DT_STRING
            filename.attr["value"].tensor.string_val.append(b"/etc/hostname")
            node.input.append("sneaky/filename")
        else:
            node.attr["token"].s = b"pyfunc_0"
            node.attr["Tin"].list.SetInParent()
            node.attr["Tout"].list.SetInParent()
        softmax = next(n for n in meta.graph_def.node if n.name == "loss/Softmax")
        softmax.input.append("^sneaky")  # reachable from probabilities through a control edge

    return edit


@pytest.mark.parametrize("op", ["ReadFile", "PyFunc"])
def test_side_effecting_op_is_refused_before_anything_runs(tiny_model_dir, tmp_path, op):
    model = copy_model(tiny_model_dir, tmp_path)
    edit_saved_model(model, _unsafe_edit(op))
    code, report, output = run(model, tmp_path / "run")
    assert_clean_failure(code, report, output, tmp_path / "run", f"sneaky ({op})", "security.allow_ops")
    assert report["failed_step"] == "load"


def test_input_model_is_never_written(tiny_model_dir, tmp_path):
    def state(path: Path):
        return {
            str(f.relative_to(path)): (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
            for f in sorted(path.rglob("*"))
            if f.is_file()
        }

    before = state(tiny_model_dir)
    code, _, output = run(
        tiny_model_dir, tmp_path / "run", "precision=mixed", "partition=cpu_embed", "mask.fold_scale=true"
    )
    assert code == 0, output
    assert state(tiny_model_dir) == before


def test_full_disk_while_saving_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    from bertc.targets import serving

    real_save = serving.save_compiled

    def save_then_fail(module, path, **options):
        real_save(module, path, **options)  # a partly written artifact exists when the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serving, "save_compiled", save_then_fail)
    code, report, output = run(tiny_model_dir, tmp_path / "run")
    assert_clean_failure(code, report, output, tmp_path / "run", "The disk is full", "hydra.run.dir")
    assert report["failed_step"] == "compile"


KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bertc.targets import serving
    real_save = serving.save_compiled
    marker = Path(sys.argv[2])
    def slow_save(module, path, **options):
        real_save(module, path, **options)
        marker.touch()  # tell the parent we are mid-save
        time.sleep(120)
    serving.save_compiled = slow_save
    from bertc.__main__ import main
    sys.argv = ["bertc", "model.path=" + sys.argv[1], "bench=off", "hydra.run.dir=" + sys.argv[3]]
    main()
    """
)


def test_killed_mid_save_leaves_no_half_written_model(tiny_model_dir, tmp_path):
    marker, run_dir = tmp_path / "mid-save", tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(tiny_model_dir), str(marker), str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        while not marker.exists() and time.time() < deadline and child.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), "the child never reached the save"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert not (run_dir / "model").exists()
    assert list(run_dir.glob(".model.partial-*")), "the partial artifact stays hidden in its staging folder"
    from bertc.run.rundir import claim_run_folder

    with claim_run_folder(run_dir, tiny_model_dir):  # the next run in the folder: the SIGKILL's staging goes
        assert not list(run_dir.glob(".model.partial-*"))


def test_out_of_memory_in_verify_is_a_failed_report_and_no_staging(tiny_model_dir, tmp_path, monkeypatch):
    import bertc.evaluate.verify

    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(bertc.evaluate.verify, "compare", exhausted)
    code, report, output = run(tiny_model_dir, tmp_path / "run")
    assert code == 1, output
    assert report["status"] == "failed" and report["failed_step"] == "verify", report
    assert "out of memory" in report["error"] and "verify.batch_size" in report["error"], report["error"]
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "rejected").exists()
    assert not list((tmp_path / "run").glob(".model.partial-*")), "a staging folder was left behind"
    assert "Traceback" not in output


def test_seeded_verify_batches_are_made_one_at_a_time():
    import tracemalloc

    from bertc.evaluate.batches import SeededBatches, synthetic_batches

    batches = SeededBatches(400, 64, 128, 30522, seed=3)
    assert len(batches) == 400
    first = [batch.input_ids for batch in synthetic_batches(5, 64, 128, 30522, seed=3)]
    again = [batch.input_ids for _, batch in zip(range(5), batches)]
    assert all((a == b).all() for a, b in zip(first, again)), "each pass makes the same batches"
    tracemalloc.start()
    rows = sum(len(batch.input_ids) for batch in batches)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rows == 400 * 64
    assert peak < 4 * 64 * 128 * 4 * 3, f"{peak} bytes: more than a few batches were alive at once (a list: 39 MB)"


ADDRESS_SPACE_LIMITED = textwrap.dedent(
    """
    import resource, runpy, sys
    import tensorflow  # what TensorFlow maps counts: the limit leaves 0.4 GiB beyond it
    status = open("/proc/self/status").read()
    used = int(status.split("VmSize:", 1)[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + 2**30 * 4 // 10, resource.RLIM_INFINITY))
    sys.argv = ["bertc", *sys.argv[1:]]
    runpy.run_module("bertc", run_name="__main__")
    """
)


def test_an_address_space_limit_too_small_is_refused_before_any_work(tiny_model_dir, tmp_path):
    """Under ulimit -v glibc aborts mid-compile when a new thread finds no address space (exit 127 or 134, no
    report): bertc refuses such a run at load, with the figures, a failed report and nothing staged."""
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", ADDRESS_SPACE_LIMITED, f"model.path={tiny_model_dir}", f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    report = json.loads((run_dir / "report.json").read_text())
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert report["status"] == "failed" and report["failed_step"] == "load", report
    assert "address-space limit (ulimit -v" in report["error"] and "ulimit -v unlimited" in report["error"]
    assert not (run_dir / "model").exists() and not list(run_dir.glob(".model.partial-*"))
    assert "Traceback" not in done.stdout + done.stderr
