"""Compiled SavedModels -> per-call times as a user's serving process sees them (plain tf.saved_model.load).

Each model is loaded in this one process with TensorFlow's default environment (run it under
TF_ENABLE_ONEDNN_OPTS=0 or 1 to compare), its first call timed apart (graph optimisation, oneDNN
primitive creation), then the models are called interleaved, round after round, on the same batch of
full-length rows. Prints the CPU's flags, whether oneDNN is on, and each model's median call time and its
ratio to the first model's. A call still running after --call-limit seconds is reported as stalled and
the script exits at once (a TensorFlow call cannot be cancelled).

    python bench/precision_calls.py RUN/fp32/model RUN/mixed/model RUN/mixed_bf16/model --batch 8 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bertc.ir.lazy import import_tensorflow  # noqa: E402
from bertc.runtime.machine import cpu_name, simd_flags  # noqa: E402


def timed_call(function, feeds: dict, limit: float) -> float:
    """Seconds of one call; exits the process when it is still running after `limit`."""
    done = threading.Event()
    start = time.perf_counter()

    def work() -> None:
        function(**feeds)
        done.set()

    threading.Thread(target=work, daemon=True).start()
    if not done.wait(limit):
        print(f"stalled: a call still running after {limit:g} s", flush=True)
        os._exit(1)
    return time.perf_counter() - start


def feeds_for(function, tf, batch: int) -> dict:
    specs = function.structured_input_signature[1]
    length = next(spec.shape[1] for spec in specs.values() if spec.shape.rank == 2) or 128
    rng = np.random.default_rng(0)
    values = {}
    for name, spec in specs.items():
        if spec.shape.rank == 1:
            values[name] = tf.zeros([batch], spec.dtype)
        elif "mask" in name:
            values[name] = tf.ones([batch, length], spec.dtype)
        elif "segment" in name or "type" in name:
            values[name] = tf.zeros([batch, length], spec.dtype)
        else:
            values[name] = tf.constant(rng.integers(1000, 2000, (batch, length)), spec.dtype)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--call-limit", type=float, default=300.0)
    args = parser.parse_args()
    tf = import_tensorflow()
    from tensorflow.python.util import _pywrap_util_port

    onednn = _pywrap_util_port.IsMklEnabled()
    print(f"cpu: {cpu_name()}; flags: {' '.join(simd_flags())}; TensorFlow {tf.__version__}; oneDNN {onednn}")
    print(f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(unset)')}; batch {args.batch}")
    functions, feeds, times = {}, {}, {}
    for path in args.models:
        functions[path] = tf.saved_model.load(str(path)).signatures["serving_default"]
        feeds[path] = feeds_for(functions[path], tf, args.batch)
        first = timed_call(functions[path], feeds[path], args.call_limit)
        print(f"{path}: first call {first:.3f} s", flush=True)
        times[path] = []
    for _ in range(args.rounds):
        for path in args.models:
            times[path].append(timed_call(functions[path], feeds[path], args.call_limit))
    base = statistics.median(times[args.models[0]])
    for path in args.models:
        median = statistics.median(times[path])
        print(
            f"{path}: median {median * 1000:.1f} ms a call (min {min(times[path]) * 1000:.1f}, "
            f"max {max(times[path]) * 1000:.1f}); {base / median:.2f}x the first model; "
            f"{args.batch / median:.2f} seq/s"
        )


if __name__ == "__main__":
    main()
