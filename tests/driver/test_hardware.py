"""The precision probe (rates per dtype, cached, stalls caught), its warning, and the call-time guard before verify."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from rich.console import Console

import bertc
from bertc.driver import hardware
from bertc.driver.hardware import Probe, precision_advice
from bertc.driver.limits import SlowModel, check_call_speed


def quiet() -> Console:
    return Console(file=io.StringIO())


def made_up(rates: dict, notes: dict | None = None, onednn: bool | None = True) -> Probe:
    return Probe("tf", "Test CPU", ("avx512f", "avx512_fp16"), "2.21.0", onednn, rates, notes or {}, "/cache/p.json")


def test_a_narrow_dtype_slower_than_fp32_is_announced_with_the_figures():
    advice = precision_advice("float16", made_up({"float32": 200.0, "float16": 12.0}), "mixed")
    assert advice is not None
    assert "12 GFLOP/s in fp16 against 200 GFLOP/s in fp32" in advice
    assert "oneDNN on" in advice and "avx512_fp16" in advice and "/cache/p.json" in advice
    assert "meant for accelerators" in advice and "precision=fp32" in advice


def test_the_advice_names_the_narrow_precision_the_probe_measured_paying():
    advice = precision_advice("float16", made_up({"float32": 64.0, "float16": 59.0, "bfloat16": 100.0}), "mixed")
    assert advice is not None and "bf16 measured 100 GFLOP/s: use precision=mixed_bf16 instead" in advice
    assert "precision=fp32" not in advice and "precision=int8" in advice
    slow_both = precision_advice("float16", made_up({"float32": 64.0, "float16": 59.0, "bfloat16": 66.0}), "mixed")
    assert slow_both is not None and "use precision=fp32" in slow_both and "mixed_bf16" not in slow_both


def test_a_stalled_dtype_is_announced_as_stalled():
    probe = made_up({"float32": 200.0, "float16": None}, {"float16": "stalled (no result in 45 s)"})
    advice = precision_advice("float16", probe, "mixed")
    assert advice is not None and "stalled (no result in 45 s) in fp16" in advice


def test_a_dtype_that_pays_gets_no_warning_and_bf16_is_not_called_an_accelerator_preset():
    assert precision_advice("bfloat16", made_up({"float32": 120.0, "bfloat16": 200.0}), "mixed_bf16") is None
    assert precision_advice("float32", made_up({"float32": 120.0}), "fp32") is None
    advice = precision_advice("bfloat16", made_up({"float32": 200.0, "bfloat16": 116.0}), "mixed_bf16")
    assert advice is not None and "116 GFLOP/s in bf16" in advice and "accelerators" not in advice


def test_the_probe_measures_every_dtype_once_and_reads_the_cache_after(monkeypatch, tmp_path):
    monkeypatch.setenv("BERTC_CACHE", str(tmp_path))
    first = hardware.probe("tf")
    assert set(first.rates) == set(hardware.DTYPES)
    assert all(rate is not None and rate > 0 for rate in first.rates.values()), first
    assert first.onednn in (True, False) and first.path.startswith(str(tmp_path))
    monkeypatch.setattr(hardware, "_measure", lambda runtime: pytest.fail("measured again instead of the cache"))
    again = hardware.probe("tf")
    assert again.rates == first.rates and again.path == first.path


def test_a_dtype_with_no_figure_in_time_is_stalled_and_the_child_killed(monkeypatch, tmp_path):
    monkeypatch.setenv("BERTC_CACHE", str(tmp_path))
    monkeypatch.setattr(hardware, "DTYPE_LIMIT_S", 0.05)  # the child cannot even import TensorFlow in time
    start = time.perf_counter()
    measured = hardware.probe("tf")
    assert time.perf_counter() - start < 20
    assert measured.rates == {dtype: None for dtype in hardware.DTYPES}
    assert all(note.startswith("stalled") for note in measured.notes.values())
    cached = json.loads(open(measured.path).read())
    assert cached["notes"] == measured.notes


def test_a_compiled_call_many_times_slower_is_refused_with_figures():
    original = lambda feeds: time.sleep(0.001)  # noqa: E731
    slow = lambda feeds: time.sleep(0.7)  # noqa: E731
    with pytest.raises(SlowModel, match="verify.max_slowdown=10") as caught:
        check_call_speed(original, slow, {}, 10.0)
    figures = caught.value.figures
    assert figures["compiled_s"] >= 0.7 and figures["original_s"] < 0.1 and figures["slowdown"] > 10


def test_a_compiled_call_that_does_not_return_is_abandoned(monkeypatch):
    import bertc.driver.limits as limits

    monkeypatch.setattr(limits, "FIRST_CALL_FLOOR_S", 0.3)
    start = time.perf_counter()
    with pytest.raises(SlowModel, match="first call did not return within 0.3 s") as caught:
        check_call_speed(lambda feeds: None, lambda feeds: time.sleep(3), {}, 10.0)
    assert time.perf_counter() - start < 2.5
    assert caught.value.figures["compiled_first_s"] is None


def test_a_compiled_call_a_little_slower_passes():
    figures = check_call_speed(lambda feeds: time.sleep(0.01), lambda feeds: time.sleep(0.03), {}, 10.0)
    assert 2 < figures["slowdown"] < 10 and figures["compiled_first_s"] is not None


def test_a_crawling_compiled_model_is_rejected_before_verify_with_its_report(tiny_model_dir, tmp_path, monkeypatch):
    import bertc.targets.serving as serving

    class Crawling(serving.ServedSavedModel):
        def __call__(self, feeds):
            time.sleep(1.0)
            return super().__call__(feeds)

    monkeypatch.setattr(serving, "ServedSavedModel", Crawling)
    report = bertc.compile(tiny_model_dir, overrides=["bench=quick"], run_dir=tmp_path / "run", console=quiet())
    assert report["status"] == "rejected" and report["failed_step"] == "speed"
    assert "verify.max_slowdown=10" in report["error"] and report["model_path"] is None
    assert report["speed_check"]["passed"] is False and report["speed_check"]["compiled_s"] >= 1.0
    assert "parity" not in report and "bench" not in report  # neither ran
    assert (tmp_path / "run" / "rejected" / "saved_model.pb").is_file() and not (tmp_path / "run" / "model").exists()
    assert "## Call time" in (tmp_path / "run" / "report.md").read_text()


def test_max_slowdown_below_one_is_refused(tiny_model_dir, tmp_path):
    from bertc.errors import ConfigError

    with pytest.raises(ConfigError, match=r"verify.max_slowdown=0.5 is out of range.* from 1 to 1000000"):
        bertc.compile(tiny_model_dir, overrides=["verify.max_slowdown=0.5"], run_dir=tmp_path, console=quiet())
    assert not (tmp_path / "model").exists() and not (tmp_path / "rejected").exists()


# The demo's shape (4 layers, hidden 256): the smallest of the sizes tried where a float16 build crawled on
# the Intel host under oneDNN (195 s a call); the tests' tiny model (hidden 32) did not show it there.
SERVE_BOTH = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import tensorflow as tf
    feeds = dict(input_ids=tf.constant(np.full((8, 128), 1000), tf.int32),
                 input_mask=tf.ones((8, 128), tf.int32), segment_ids=tf.zeros((8, 128), tf.int32))
    best = {}
    for path in sys.argv[1:]:
        function = tf.saved_model.load(path).signatures["serving_default"]
        function(**feeds)
        times = []
        for _ in range(3):
            start = time.perf_counter(); function(**feeds); times.append(time.perf_counter() - start)
        best[path] = min(times)
    print(" ".join(f"{best[path]:.4f}" for path in sys.argv[1:]))
    """
)


def test_a_float16_build_served_under_onednn_stays_near_the_fp32_build(tmp_path):
    """A guard against the oneDNN float16 crawl (not a benchmark): the mixed build of a demo-sized model, served
    by plain TensorFlow with oneDNN on in a fresh process, within a generous multiple of the fp32 build's time."""
    from bertc.model.export import export_model

    model = tmp_path / "demo"
    export_model("size", "mini", model, seq_len=128, num_labels=2, seed=0)
    for precision in ("fp32", "mixed"):
        report = bertc.compile(
            model,
            overrides=[f"precision={precision}", "verify=off", "bench=off"],
            run_dir=tmp_path / precision,
            console=quiet(),
        )
        assert report["status"] == "passed", report.get("error")
    environment = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-c", SERVE_BOTH, str(tmp_path / "fp32" / "model"), str(tmp_path / "mixed" / "model")]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    fp32, mixed = (float(value) for value in done.stdout.split())
    assert mixed < 5 * fp32 + 0.05, f"mixed {mixed:.3f} s a call against fp32 {fp32:.3f} s under oneDNN"
