"""What the tests of a compiled model's serving share (the engine targets', TensorFlow Serving's): the original
model's probabilities, the saved artifact served by its engine alone in a fresh process, and a compile the target
refuses before any work."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping

import numpy as np

# Around a serving body: the feeds (int32 arrays) read as JSON from stdin; the body's `answer` written back as JSON,
# with the bertc and TensorFlow modules the process loaded.
SERVE_START = """
import json, sys
import numpy as np
feeds = {key: np.array(value, np.int32) for key, value in json.loads(sys.stdin.read()).items()}
"""
SERVE_END = """
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("bertc", "tensorflow"))
print(json.dumps({"answer": answer, "loaded": loaded}))
"""


def original_probabilities(model_dir, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """What the input SavedModel computes for `feeds`, run as verify runs it."""
    from bertc.evaluate.verify import OriginalModel
    from bertc.frontends.load import load_saved_model

    loaded = load_saved_model(model_dir)
    outputs = {key: loaded.graph.outputs[key] for key in ("probabilities", "logits")}
    return OriginalModel(model_dir, loaded.signature_inputs, outputs)(feeds)["probabilities"]


def serve_alone(body: str, feeds: Mapping[str, np.ndarray], *args: str):
    """`body` (Python that reads `feeds` and `sys.argv`, and sets `answer`) run by a fresh interpreter with `args`:
    its answer, checked to come from a process that loaded neither bertc nor TensorFlow."""
    script = SERVE_START + textwrap.dedent(body) + SERVE_END
    text = json.dumps({key: value.tolist() for key, value in feeds.items()})
    done = subprocess.run(
        [sys.executable, "-c", script, *args], input=text, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    served = json.loads(done.stdout)
    assert served["loaded"] == [], "served without bertc or TensorFlow"
    return served["answer"]


def without_module(monkeypatch, missing: str) -> None:
    """importlib finds no `missing` (an extra that is not installed); every other module as before."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == missing else real(name))


def assert_refused_before_work(code: int, report: dict, run_dir, *words: str) -> None:
    """The target refused the compile before anything was loaded: exit 2, the words in its error, no model."""
    assert code == 2 and report["failed_step"] == "target", report
    for word in words:
        assert word in report["error"], report["error"]
    assert "steps" not in report or not report["steps"], "nothing was loaded or rewritten"
    assert not (run_dir / "model").exists()
