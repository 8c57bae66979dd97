"""bertc against the model as exported, ONNX Runtime and OpenVINO, measured in one process.

    python bench/compare.py                        # BERT-Base: export, compile, convert, measure (~12 min, 2 cores)
    python bench/compare.py --size tiny --quick    # the smoke test (~1.5 min)
    python bench/compare.py --candidates fp32,bf16_tf \\
        --candidate "bf16_fold=precision=mixed_bf16 mask.fold_scale=true"
    python bench/compare.py --reuse --rounds 5     # measure again; keep the models already built

Steps (each build step in its own process, so the measuring process holds only the models):
1. export `--size` with bertc.export.export_model (random weights from seed 0, seq 128, 2 labels);
2. compile each candidate with
   `python -m bertc model.path=<export> <overrides> verify=off bench=off hydra.run.dir=...`;
3. convert the export with tf2onnx (signature serving_default, tag serve; label_ids and
   is_real_example stay inputs that nothing reads) and optimize it with
   onnxruntime.transformers.optimizer.optimize_model (model_type bert_tf); the fused-operator
   counts are reported, so whether attention got fused is on record;
4. load everything into this process; parity against the original (max |probability difference|
   and argmax agreement on seeded synthetic batches from bertc.verify); warm-up; then interleaved
   rounds: every model in turn (the order rotates each round) for `--seconds` at `--batch`, then
   every model for `--latency-seconds` at batch 1.

Workloads (issue 15): real lengths from `--tsv` (a GLUE TSV, tokenized with `--vocab`) or seeded
MRPC-like synthetic lengths, at `--batch` in file order and at batch 1, and full-length batches.
OpenVINO (`pip install '.[bench]'`) converts the original SavedModel itself. The useful-FLOP bound
(matmul FLOPs at each batch's longest real row over TensorFlow's measured matmul rate) is printed
with each system's fraction of it.

Throughput is sequences per second over all rounds; latency the p50 of the batch-1 calls; the
ratios divide by the original's and ONNX Runtime's throughput in this same run. The table goes to
stdout and, with the machine (CPU flags, whether TensorFlow uses oneDNN, load average), the goals
of issue 7 and the per-round figures, to `<workdir>/results.md` and `results.json`.

Needs the README's install plus `pip install '.[onnx]'` (tf2onnx, onnxruntime, onnx); without
them the ONNX Runtime row is skipped and the report says so (`--no-onnx` skips it on purpose).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> bertc overrides. removal=training and mask=reimpl are bertc's defaults, spelled out so that
# a change of default does not silently change what a row means.
_REWRITES = "removal=training mask=reimpl partition=none"
PRESETS: dict[str, str] = {
    "fp32_none": "precision=fp32 removal=none mask=original partition=none target=tf",
    "fp32": f"precision=fp32 {_REWRITES} target=tf",
    "fp32_fold": f"precision=fp32 {_REWRITES} mask.fold_scale=true target=tf",
    "fp32_xla": f"precision=fp32 {_REWRITES} mask.fold_scale=true target=xla",
    "bf16_tf": f"precision=mixed_bf16 {_REWRITES} target=tf",
    "bf16_xla": f"precision=mixed_bf16 {_REWRITES} target=xla",
    "bf16_fold_tf": f"precision=mixed_bf16 {_REWRITES} mask.fold_scale=true target=tf",
    "bf16_fold_xla": f"precision=mixed_bf16 {_REWRITES} mask.fold_scale=true target=xla",
    # issue 15: compute only the real tokens
    "fp32_trim": f"precision=fp32 {_REWRITES} mask.fold_scale=true target=tf length=trim",
    "fp32_xla_buckets": f"precision=fp32 {_REWRITES} mask.fold_scale=true target=xla length=buckets",
    "fp32_xla_buckets16": (
        f"precision=fp32 {_REWRITES} mask.fold_scale=true target=xla length=buckets "
        "length.sizes=[16,32,48,64,80,96,112,128]"
    ),
}
DEFAULT_CANDIDATES = ("fp32", "fp32_xla", "fp32_trim", "fp32_xla_buckets", "fp32_xla_buckets16")
GOALS = {"bf16_vs_original": 2.0, "bf16_vs_ort": 1.7, "fp32_vs_original": 1.15, "bf16_parity": 3e-2}
# issue 15, on MRPC lengths at fp32
LENGTH_GOALS = {
    "vs_original": 1.6,
    "vs_peer": 1.5,
    "latency_vs_original": 0.55,
    "bound_fraction": 0.85,
    "parity": 1e-5,
    "full_vs_best": 0.97,
}
ORIGINAL, ORT, OPENVINO = "original", "onnxruntime", "openvino"
PEERS = (ORT, OPENVINO)
DEFAULT_WORDS = set(_REWRITES.split()) | {"target=tf"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- build steps (subprocesses) -----------------------------------------------------------------


def run_logged(command: list[str], log_file: Path, timeout: float) -> tuple[int, float, str]:
    """Run `command` with its output in `log_file`; (exit code, seconds, the log's last lines)."""
    start = time.perf_counter()
    with open(log_file, "w") as stream:
        stream.write("$ " + shlex.join(command) + "\n")
        stream.flush()
        try:
            code = subprocess.run(
                command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO, timeout=timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            code = 124
    lines = log_file.read_text(errors="replace").strip().splitlines()
    tail = [line for line in lines if "HYDRA_FULL_ERROR" not in line][-6:]
    return code, time.perf_counter() - start, "\n".join(tail)


EXPORT_SNIPPET = (
    "import json, sys\n"
    "from bertc.export import export_model\n"
    "summary = export_model('size', sys.argv[1], sys.argv[2], seq_len=int(sys.argv[3]), num_labels=2, seed=0)\n"
    "print(json.dumps(summary))\n"
)


def export(size: str, out: Path, seq_len: int, reuse: bool, timeout: float) -> float:
    if reuse and (out / "saved_model.pb").is_file():
        log(f"export: reusing {out}")
        return 0.0
    shutil.rmtree(out, ignore_errors=True)
    log(f"export: {size}, seq {seq_len}, seed 0 -> {out}")
    command = [sys.executable, "-c", EXPORT_SNIPPET, size, str(out), str(seq_len)]
    code, seconds, tail = run_logged(command, out.parent / "export.log", timeout)
    if code != 0:
        raise SystemExit(f"export failed (exit {code}); see {out.parent / 'export.log'}:\n{tail}")
    log(f"export: done in {seconds:.0f}s")
    return seconds


def compile_candidate(name: str, overrides: str, model: Path, runs: Path, reuse: bool, timeout: float) -> dict:
    run_dir = runs / name
    artifact = run_dir / "model"
    entry = {"name": name, "overrides": overrides, "run_dir": str(run_dir)}
    if reuse and (artifact / "saved_model.pb").is_file():
        log(f"compile {name}: reusing {artifact}")
        return {**entry, "path": str(artifact), "compile_s": None, "status": "reused"}
    shutil.rmtree(run_dir, ignore_errors=True)
    runs.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "bertc",
        f"model.path={model}",
        *shlex.split(overrides),
        "verify=off",
        "bench=off",
        f"hydra.run.dir={run_dir}",
    ]
    log(f"compile {name}: {overrides}")
    code, seconds, tail = run_logged(command, runs / f"{name}.log", timeout)
    if code != 0 or not (artifact / "saved_model.pb").is_file():
        log(f"compile {name}: FAILED (exit {code}); see {runs / f'{name}.log'}")
        return {**entry, "status": "failed", "error": f"bertc exit {code}: {tail[-400:]}"}
    log(f"compile {name}: done in {seconds:.0f}s")
    return {**entry, "path": str(artifact), "compile_s": round(seconds, 1), "status": "compiled"}


def onnx_missing() -> str | None:
    """None when tf2onnx, onnxruntime and onnx can be imported; else what is missing."""
    missing = [name for name in ("tf2onnx", "onnxruntime", "onnx") if importlib.util.find_spec(name) is None]
    return f"not installed: {', '.join(missing)} (pip install '.[onnx]')" if missing else None


def build_onnx(model: Path, work: Path, args, heads: int, hidden: int) -> dict:
    raw, optimized = work / "model.onnx", work / f"model.opt-{args.ort_model_type}.onnx"
    stats_file = work / "ort_fusion.json"
    info = {"model_type": args.ort_model_type, "opset": args.opset, "path": str(optimized)}
    if args.reuse and optimized.is_file() and stats_file.is_file():
        log(f"onnx: reusing {optimized}")
        return {**info, **json.loads(stats_file.read_text()), "status": "reused"}
    for stale in (raw, optimized, stats_file):
        stale.unlink(missing_ok=True)
    log("onnx: tf2onnx.convert (the original SavedModel, signature serving_default)")
    convert = [
        sys.executable,
        "-m",
        "tf2onnx.convert",
        "--saved-model",
        str(model),
        "--output",
        str(raw),
        "--signature_def",
        "serving_default",
        "--tag",
        "serve",
        "--opset",
        str(args.opset),
    ]
    code, seconds, tail = run_logged(convert, work / "tf2onnx.log", args.timeout)
    if code != 0 or not raw.is_file():
        return {**info, "status": "failed", "error": f"tf2onnx exit {code}: {tail[-400:]}"}
    info["convert_s"] = round(seconds, 1)
    log(f"onnx: converted in {seconds:.0f}s; optimizing (onnxruntime.transformers.optimizer, {args.ort_model_type})")
    optimize = [
        sys.executable,
        __file__,
        "_ort_optimize",
        str(raw),
        str(optimized),
        args.ort_model_type,
        str(heads),
        str(hidden),
        str(stats_file),
    ]
    code, seconds, tail = run_logged(optimize, work / "ort_optimize.log", args.timeout)
    if code != 0 or not optimized.is_file():
        return {**info, "status": "failed", "error": f"optimizer exit {code}: {tail[-400:]}"}
    info["optimize_s"] = round(seconds, 1)
    fusion = json.loads(stats_file.read_text())
    fused = ", ".join(f"{key} {value}" for key, value in fusion["fused"].items() if value) or "nothing"
    log(f"onnx: fused {fused}; attention fused: {fusion['attention_fused']}")
    return {**info, **fusion, "status": "converted"}


def _ort_optimize_worker(src: str, dst: str, model_type: str, heads: str, hidden: str, stats: str) -> int:
    from onnxruntime.transformers.optimizer import optimize_model

    # opt_level 0: the transformer fusions alone (a level above 0 runs onnxruntime offline and, for
    # 'bert', wants torch); the session applies onnxruntime's own graph optimizations when it loads.
    model = optimize_model(src, model_type=model_type, num_heads=int(heads), hidden_size=int(hidden), opt_level=0)
    fused = {key: int(value) for key, value in model.get_fused_operator_statistics().items()}
    model.save_model_to_file(dst)
    attention = sum(fused.get(key, 0) for key in ("Attention", "MultiHeadAttention", "QOrderedAttention"))
    Path(stats).write_text(json.dumps({"fused": fused, "attention_fused": attention > 0}))
    return 0


# ---- the models, in this process ----------------------------------------------------------------


class TFOriginal:
    """The exported TF1 SavedModel through its own signature; label_ids and is_real_example fed neutral values."""

    def __init__(self, path: str):
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(path, tags=["serve"])
        self._function = self._loaded.signatures["serving_default"]
        self._keys = list(self._function.structured_input_signature[1])

    def __call__(self, feeds):
        tf, batch = self._tf, len(feeds["input_ids"])
        extra = {"label_ids": tf.zeros([batch], tf.int32), "is_real_example": tf.ones([batch], tf.int32)}
        arguments = {key: tf.constant(feeds[key]) if key in feeds else extra[key] for key in self._keys}
        return self._function(**arguments)["probabilities"].numpy()


class TFCompiled:
    """A bertc artifact through its serving signature, as it serves without bertc."""

    def __init__(self, path: str):
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(path)
        self._function = self._loaded.signatures["serving_default"]

    def __call__(self, feeds):
        arguments = {key: self._tf.constant(value) for key, value in feeds.items()}
        return self._function(**arguments)["probabilities"].numpy()


class OrtModel:
    def __init__(self, path: str, threads: int, spinning: str):
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if spinning != "default":
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning == "on" else "0")
        self._np = np
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._inputs = [item.name for item in self._session.get_inputs()]

    def __call__(self, feeds):
        np, batch = self._np, len(feeds["input_ids"])
        extra = {"label_ids": np.zeros([batch], np.int32), "is_real_example": np.ones([batch], np.int32)}
        arguments = {key: feeds[key] if key in feeds else extra[key] for key in self._inputs}
        return self._session.run(["probabilities"], arguments)[0]


def openvino_missing() -> str | None:
    return None if importlib.util.find_spec("openvino") else "not installed: openvino (pip install '.[bench]')"


class OpenVinoModel:
    """The original SavedModel through openvino.convert_model, compiled for the CPU in f32 (latency hint)."""

    def __init__(self, path: str, threads: int):
        import numpy as np
        import openvino as ov

        self._np = np
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = ov.Core().compile_model(ov.convert_model(path), "CPU", config)
        self._inputs = {next(iter(item.get_names())): item for item in self._compiled.inputs}
        self._output = next(
            item
            for item in self._compiled.outputs
            if any("probabilities" in name or "Softmax" in name for name in item.get_names())
        )
        self._request = self._compiled.create_infer_request()

    def __call__(self, feeds):
        np, batch = self._np, len(feeds["input_ids"])
        extra = {"label_ids": np.zeros([batch], np.int32), "is_real_example": np.ones([batch], np.int32)}
        arguments = {}
        for name, port in self._inputs.items():
            key = next((key for key in (*feeds, *extra) if name == key or name.startswith(key + ":")), None)
            arguments[port] = feeds[key] if key in feeds else extra[key]
        return self._request.infer(arguments)[self._output].copy()


def parity(models: dict, batches) -> dict:
    import numpy as np

    batches = [batch if isinstance(batch, dict) else batch.feeds() for batch in batches]
    reference = np.concatenate([models[ORIGINAL](batch) for batch in batches])
    result = {}
    for name, model in models.items():
        outputs = np.concatenate([model(batch) for batch in batches])
        result[name] = {
            "max_abs_diff": float(np.abs(reference - outputs).max()),
            "argmax_agreement": float((reference.argmax(-1) == outputs.argmax(-1)).mean()),
            "finite": bool(np.isfinite(outputs).all()),
            "examples": len(reference),
        }
    return result


def _timed(model, feeds: list, seconds: float, minimum: int, cursor: list[int]) -> list[float]:
    """Call `model` on the feeds in turn (from `cursor[0]`, kept across rounds: file order) for `seconds`."""
    durations, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(durations) < minimum:
        batch = feeds[cursor[0] % len(feeds)]
        cursor[0] += 1
        start = time.perf_counter()
        model(batch)
        durations.append(time.perf_counter() - start)
    return durations


def workloads_for(args, vocab: int, vocab_file: Path | None) -> tuple[dict, str]:
    """name -> (batch size, [feeds]): MRPC lengths (file order) at --batch and 1, and full-length batches."""
    import numpy as np

    from bertc.lengths import length_mix

    mixed, source = length_mix(
        args.seq_len, vocab, args.batch, tsv=args.tsv, vocab_file=vocab_file, batches=args.length_batches, seed=0
    )
    singles = [
        {key: value[row : row + 1] for key, value in batch.items()}
        for batch in mixed
        for row in range(len(batch["input_ids"]))
    ]
    rng = np.random.default_rng(1234)
    ids = (
        rng.integers(1000, vocab, (args.batch, args.seq_len)).astype(np.int32)
        if vocab > 1000
        else rng.integers(1, vocab, (args.batch, args.seq_len)).astype(np.int32)
    )
    full = {"input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": np.zeros_like(ids)}
    full["segment_ids"][:, args.seq_len // 2 :] = 1
    one = {key: value[:1] for key, value in full.items()}
    return {
        f"mrpc_b{args.batch}": (args.batch, mixed),
        "mrpc_b1": (1, singles),
        f"full_b{args.batch}": (args.batch, [full]),
        "full_b1": (1, [one]),
    }, source


def matmul_rate() -> float:
    """TensorFlow's fp32 matmul rate on this machine, GFLOP/s: [1024,768] x [768,3072], as a BERT-Base FFN."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((1024, 768), np.float32))
    b = tf.constant(rng.standard_normal((768, 3072), np.float32))
    product = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    for _ in range(3):
        product().numpy()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        product().numpy()
        calls += 1
    return 2 * 1024 * 768 * 3072 * calls / (time.perf_counter() - start) / 1e9


def useful_flops(config: dict, length: int) -> float:
    """Matmul FLOPs of one sequence at `length` tokens: projections, FFN, scores and context, pooler."""
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    per_layer = 8 * length * hidden * hidden + 4 * length * hidden * inner + 4 * length * length * hidden
    return layers * per_layer + 2 * hidden * hidden + 2 * hidden * 2


def bound(config: dict, workloads: dict, rate_gflops: float) -> dict:
    """Per workload: sequences/s if every batch ran at its longest real row at the matmul rate."""
    result = {}
    for name, (_, feeds) in workloads.items():
        seconds = [
            len(batch["input_ids"]) * useful_flops(config, int(batch["input_mask"].sum(1).max())) / (rate_gflops * 1e9)
            for batch in feeds
        ]
        sequences = sum(len(batch["input_ids"]) for batch in feeds)
        lengths = [int(batch["input_mask"].sum(1).max()) for batch in feeds]
        result[name] = {"seq_per_s": sequences / sum(seconds), "mean_length_run": sum(lengths) / len(lengths)}
    return result


def warmup_batches(feeds: list, calls: int) -> list:
    """`calls` batches, then one per distinct longest row rounded up to 16: an XLA build with length
    buckets (multiples of 16) compiles each (batch, bucket) shape on its first call in a new process,
    and that compile must not land in a timed round."""
    first: dict[int, dict] = {}
    for batch in feeds:
        first.setdefault(-(-int(batch["input_mask"].sum(1).max()) // 16), batch)
    return [feeds[index % len(feeds)] for index in range(calls)] + list(first.values())


def measure(models: dict, workloads: dict, args) -> dict:
    """Interleaved rounds: per workload, each model in turn (the order rotates each round)."""
    import numpy as np

    names = list(models)
    for name in names:
        for _, feeds in workloads.values():
            for batch in warmup_batches(feeds, args.warmup):
                models[name](batch)
    times = {name: {load: [] for load in workloads} for name in names}
    per_round = {name: {load: [] for load in workloads} for name in names}
    cursors = {name: {load: [0] for load in workloads} for name in names}
    for number in range(args.rounds):
        shift = number % len(names)
        order = names[shift:] + names[:shift]
        for load, (size, feeds) in workloads.items():
            seconds = args.seconds if size > 1 else args.latency_seconds
            for name in order:
                durations = _timed(models[name], feeds, seconds, 3, cursors[name][load])
                times[name][load] += durations
                per_round[name][load].append(size * len(durations) / sum(durations))
        figures = ", ".join(f"{name} {per_round[name][next(iter(workloads))][-1]:.2f}" for name in names)
        log(f"round {number + 1}/{args.rounds} (seq/s, {next(iter(workloads))}): {figures}")
    result = {}
    for name in names:
        entry = {"workloads": {}}
        for load, (size, _) in workloads.items():
            ms = np.array(times[name][load]) * 1000
            entry["workloads"][load] = {
                "throughput": size * len(ms) / (ms.sum() / 1000),
                "calls": len(ms),
                "round_throughput": [round(value, 3) for value in per_round[name][load]],
                "p50_ms": float(np.percentile(ms, 50)),
                "p90_ms": float(np.percentile(ms, 90)),
            }
        full_batch, full_one = entry["workloads"][f"full_b{args.batch}"], entry["workloads"]["full_b1"]
        # The keys issue 7's goals read: full-length batches, as before.
        entry["throughput"] = full_batch["throughput"]
        entry["round_throughput"] = full_batch["round_throughput"]
        entry["latency_ms"] = {"p50": full_one["p50_ms"], "p90": full_one["p90_ms"], "calls": full_one["calls"]}
        result[name] = entry
    for name in names:
        for base in (ORIGINAL, *PEERS):
            if base in result:
                result[name][f"vs_{base}"] = result[name]["throughput"] / result[base]["throughput"]
                pairs = zip(result[name]["round_throughput"], result[base]["round_throughput"], strict=True)
                result[name][f"vs_{base}_rounds"] = [round(mine / theirs, 3) for mine, theirs in pairs]
        if ORIGINAL in result:
            result[name]["latency_vs_original"] = (
                result[name]["latency_ms"]["p50"] / result[ORIGINAL]["latency_ms"]["p50"]
            )
            for load, figures in result[name]["workloads"].items():
                base = result[ORIGINAL]["workloads"][load]
                figures["vs_original"] = figures["throughput"] / base["throughput"]
                figures["p50_vs_original"] = figures["p50_ms"] / base["p50_ms"]
                peers = [result[peer]["workloads"][load]["throughput"] for peer in PEERS if peer in result]
                if peers:
                    figures["vs_best_peer"] = figures["throughput"] / max(peers)
    return result


# ---- report -------------------------------------------------------------------------------------


def machine_info() -> dict:
    flags, cpu = set(), platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == platform.machine():
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    interesting = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "flags": [flag for flag in interesting if flag in flags],
        "bf16_hardware": bool({"avx512_bf16", "amx_bf16"} & flags),
        "python": platform.python_version(),
    }


def versions() -> dict:
    from importlib import metadata

    result = {}
    for package in ("tensorflow", "bertc", "onnxruntime", "tf2onnx", "onnx", "numpy"):
        try:
            result[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if commit.returncode == 0:
            result["bertc_commit"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return result


def onednn_enabled() -> bool | None:
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a private module: absent in some builds
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def kind_of(overrides: str) -> str:
    words = set(overrides.split())
    if "precision=mixed_bf16" in words or "precision.dtype=bfloat16" in words:
        return "bf16"
    if "precision=mixed" in words:
        return "fp16"
    if "removal=none" in words or "mask=original" in words:
        return "fp32-plain"
    return "fp32"


def describe(overrides: str) -> str:
    """The overrides without bertc's defaults: what makes the row different."""
    return " ".join(word for word in overrides.split() if word not in DEFAULT_WORDS) or "bertc defaults"


def goals(bench: dict, candidates: list[dict], parities: dict) -> list[str]:
    def best(kind):
        rows = [c["name"] for c in candidates if c["name"] in bench and kind_of(c["overrides"]) == kind]
        return max(rows, key=lambda name: bench[name]["throughput"]) if rows else None

    def mark(ok):
        return "met" if ok else "NOT met"

    lines = []
    bf16 = best("bf16")
    if bf16:
        ratio = bench[bf16]["vs_original"]
        lines.append(
            f"bf16 >= {GOALS['bf16_vs_original']}x original: {mark(ratio >= GOALS['bf16_vs_original'])} "
            f"(fastest bf16 row, {bf16}: {ratio:.2f}x)"
        )
        if ORT in bench:
            ratio = bench[bf16][f"vs_{ORT}"]
            lines.append(
                f"bf16 >= {GOALS['bf16_vs_ort']}x ONNX Runtime: {mark(ratio >= GOALS['bf16_vs_ort'])} "
                f"({bf16}: {ratio:.2f}x)"
            )
        diff = parities[bf16]["max_abs_diff"]
        lines.append(
            f"bf16 parity within {GOALS['bf16_parity']} on the synthetic batches: "
            f"{mark(diff <= GOALS['bf16_parity'])} ({bf16}: {diff:.2g}; the MRPC/minilm check is "
            "bertc's verify step)"
        )
    fp32 = best("fp32")
    if fp32:
        ratio = bench[fp32]["vs_original"]
        lines.append(
            f"fp32 with removal+mask >= {GOALS['fp32_vs_original']}x original: "
            f"{mark(ratio >= GOALS['fp32_vs_original'])} (fastest fp32 row, {fp32}: {ratio:.2f}x)"
        )
    for name in filter(None, (bf16, fp32)):
        ratio = bench[name]["latency_vs_original"]
        lines.append(
            f"batch-1 p50 of {name} not worse than the original's: {mark(ratio <= 1.0)} ({ratio:.2f}x the original's)"
        )
    return lines


def _ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}x" if key in row else "n/a"


def table(rows: list[dict], batch: int) -> str:
    lines = [
        f"| model | how | seq/s b{batch} | x original | x ORT | p50 ms b1 | p50 vs original | max abs dp | argmax |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "throughput" not in row:
            lines.append(f"| {row['name']} | {row['how']} | failed | | | | | | |")
            continue
        lines.append(
            f"| {row['name']} | {row['how']} | {row['throughput']:.2f} | {_ratio(row, 'vs_original')} | "
            f"{_ratio(row, f'vs_{ORT}')} | {row['latency_ms']['p50']:.1f} | {_ratio(row, 'latency_vs_original')} | "
            f"{row['max_abs_diff']:.2g} | {row['argmax_agreement']:.3f} |"
        )
    return "\n".join(lines)


def length_table(rows: list[dict], batch: int, bounds: dict) -> str:
    """Issue 15's table: MRPC lengths at batch `batch` and 1, full length, and the fraction of the bound."""
    mixed, full = f"mrpc_b{batch}", f"full_b{batch}"
    lines = [
        (
            f"| model | how | MRPC b{batch} seq/s | x original | x best peer | of bound | MRPC b1 p50 ms | x original "
            f"| full b{batch} seq/s | x original | full b1 p50 ms | max abs dp (MRPC) |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        (
            f"| bound | useful matmul FLOPs at the batch's longest real row / measured matmul rate | "
            f"{bounds[mixed]['seq_per_s']:.2f} | | | 1.00 | {1000 / bounds['mrpc_b1']['seq_per_s']:.1f} | | "
            f"{bounds[full]['seq_per_s']:.2f} | | {1000 / bounds['full_b1']['seq_per_s']:.1f} | |"
        ),
    ]
    for row in rows:
        if "workloads" not in row:
            lines.append(f"| {row['name']} | {row['how']} | failed | | | | | | | | | |")
            continue
        loads = row["workloads"]

        def ratio(load, key, loads=loads):
            return f"{loads[load][key]:.2f}x" if key in loads[load] else "n/a"

        fraction = loads[mixed]["throughput"] / bounds[mixed]["seq_per_s"]
        lines.append(
            f"| {row['name']} | {row['how']} | {loads[mixed]['throughput']:.2f} | {ratio(mixed, 'vs_original')} | "
            f"{ratio(mixed, 'vs_best_peer')} | {fraction:.2f} | {loads['mrpc_b1']['p50_ms']:.1f} | "
            f"{ratio('mrpc_b1', 'p50_vs_original')} | {loads[full]['throughput']:.2f} | {ratio(full, 'vs_original')} | "
            f"{loads['full_b1']['p50_ms']:.1f} | {row.get('length_max_abs_diff', float('nan')):.2g} |"
        )
    return "\n".join(lines)


def length_goals(bench: dict, candidates: list[dict], parities: dict, bounds: dict, batch: int) -> list[str]:
    """Issue 15's goals, for the fastest fp32 candidate with a length step on MRPC lengths at batch `batch`."""
    mixed, full = f"mrpc_b{batch}", f"full_b{batch}"
    fp32 = [c for c in candidates if c["name"] in bench and kind_of(c["overrides"]) == "fp32"]
    cut = [c["name"] for c in fp32 if "length=trim" in c["overrides"] or "length=buckets" in c["overrides"]]
    if not cut:
        return ["no fp32 candidate with length=trim or length=buckets: issue 15's goals not checked"]
    best = max(cut, key=lambda name: bench[name]["workloads"][mixed]["throughput"])
    loads = bench[best]["workloads"]

    def mark(ok):
        return "met" if ok else "NOT met"

    lines = [f"fastest fp32 length candidate on MRPC b{batch}: {best}"]
    ratio = loads[mixed]["vs_original"]
    lines.append(
        f"MRPC b{batch} >= {LENGTH_GOALS['vs_original']}x original: "
        f"{mark(ratio >= LENGTH_GOALS['vs_original'])} ({ratio:.2f}x)"
    )
    if "vs_best_peer" in loads[mixed]:
        ratio = loads[mixed]["vs_best_peer"]
        lines.append(
            f"MRPC b{batch} >= {LENGTH_GOALS['vs_peer']}x the faster of ONNX Runtime and OpenVINO: "
            f"{mark(ratio >= LENGTH_GOALS['vs_peer'])} ({ratio:.2f}x)"
        )
    ratio = loads["mrpc_b1"]["p50_vs_original"]
    lines.append(
        f"MRPC b1 p50 <= {LENGTH_GOALS['latency_vs_original']}x original: "
        f"{mark(ratio <= LENGTH_GOALS['latency_vs_original'])} ({ratio:.2f}x)"
    )
    diff = parities[best].get("length_max_abs_diff", float("nan"))
    lines.append(
        f"fp32 parity on MRPC lengths within {LENGTH_GOALS['parity']}: "
        f"{mark(diff <= LENGTH_GOALS['parity'])} ({diff:.2g})"
    )
    full_rows = [c["name"] for c in fp32 if c["name"] not in cut]
    if full_rows:
        today = max(full_rows, key=lambda name: bench[name]["workloads"][full]["throughput"])
        ratio = loads[full]["throughput"] / bench[today]["workloads"][full]["throughput"]
        lines.append(
            f"full-length b{batch} no slower than today's best fp32 build ({today}), within noise "
            f"(>= {LENGTH_GOALS['full_vs_best']}): {mark(ratio >= LENGTH_GOALS['full_vs_best'])} ({ratio:.2f}x)"
        )
    fraction = loads[mixed]["throughput"] / bounds[mixed]["seq_per_s"]
    lines.append(
        f"within {LENGTH_GOALS['bound_fraction']:.0%} of the useful-FLOP bound on MRPC b{batch}: "
        f"{mark(fraction >= LENGTH_GOALS['bound_fraction'])} ({fraction:.2f})"
    )
    return lines


def notes_for(payload: dict) -> list[str]:
    info, setup, found = payload["machine"], payload["settings"], payload["versions"]
    bf16 = "yes" if info["bf16_hardware"] else "NO (bf16 matmuls run emulated here: no bf16 speedup is possible)"
    notes = [
        (
            f"Machine: {info['cpu']}, {info['cores']} cores; flags: {' '.join(info['flags']) or 'none of interest'}; "
            f"bf16 instructions: {bf16}."
        ),
        (
            f"TensorFlow {found.get('tensorflow', '?')} with oneDNN {payload['onednn']} "
            f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}); onnxruntime "
            f"{found.get('onnxruntime', 'n/a')}, tf2onnx {found.get('tf2onnx', 'n/a')}; bertc "
            f"{found.get('bertc_commit', found.get('bertc', '?'))}."
        ),
        (
            f"Model: {setup['size']}, seq {setup['seq_len']}, random weights from seed 0. "
            f"{setup['rounds']} interleaved "
            f"rounds of {setup['seconds']} s per model at batch {setup['batch']} and {setup['latency_seconds']} s at "
            f"batch 1, after {setup['warmup']} warm-up calls; threads: {setup['threads'] or 'library defaults'}."
        ),
        (
            f"Load average at start / end: {payload['load_start']} / {payload['load_end']}: above the core count, "
            "other work shared the CPU (interleaving spreads it over every row; the per-round ratios in "
            "results.json show the spread)."
        ),
    ]
    onnx = payload.get("onnx") or {}
    if onnx.get("status") in ("converted", "reused"):
        fused = ", ".join(f"{key} {value}" for key, value in onnx["fused"].items() if value) or "nothing"
        notes.append(
            f"ONNX Runtime: tf2onnx (opset {onnx['opset']}), then optimize_model(model_type="
            f"{onnx['model_type']}): fused {fused}; attention fused: "
            f"{'yes' if onnx['attention_fused'] else 'no'}."
        )
    elif onnx:
        notes.append(f"ONNX Runtime: skipped ({onnx.get('error') or onnx.get('status')}).")
    if payload.get("openvino"):
        notes.append(f"OpenVINO: {payload['openvino']}.")
    if payload.get("lengths"):
        lengths = payload["lengths"]
        notes.append(
            f"Lengths: {lengths['source']}; batches of {setup['batch']} run at their longest real row "
            f"(mean {lengths['mean_length_run']:.1f} of {setup['seq_len']}); matmul rate "
            f"{lengths['matmul_gflops']:.1f} GFLOP/s (TensorFlow fp32, 1024x768x3072, best of start/end)."
        )
    for row in payload["rows"]:
        if row.get("error"):
            notes.append(f"{row['name']} failed: {row['error'].splitlines()[-1][:300]}")
    return notes


def write_report(work: Path, payload: dict, markdown: str) -> None:
    text = ["# bertc vs the original, ONNX Runtime and OpenVINO", "", "    " + payload["command"], "", markdown, ""]
    text += ["Goals (issue 7, full length):", ""] + [f"- {line}" for line in payload["goals"]] + [""]
    if payload.get("length_table"):
        text += ["## Real lengths (issue 15)", "", payload["length_table"], ""]
        text += ["Goals (issue 15):", ""] + [f"- {line}" for line in payload["length_goals"]] + [""]
    text += [f"- {line}" for line in payload["notes"]]
    (work / "results.md").write_text("\n".join(text) + "\n")
    (work / "results.json").write_text(json.dumps(payload, indent=2) + "\n")


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    presets = "\n".join(f"  {name:14s} {overrides}" for name, overrides in PRESETS.items())
    parser = argparse.ArgumentParser(
        prog="python bench/compare.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"candidate presets:\n{presets}",
    )
    parser.add_argument("--size", default="base", help="bertc.export preset: tiny, mini, base, large (default base)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--workdir", type=Path, help="models, logs and results (default bench/out/<size>)")
    parser.add_argument(
        "--candidates",
        default=",".join(DEFAULT_CANDIDATES),
        help=f"preset names, comma-separated, or 'all' (default {','.join(DEFAULT_CANDIDATES)})",
    )
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help="one more candidate: a name and bertc overrides (repeatable)",
    )
    parser.add_argument("--no-onnx", action="store_true", help="leave out the ONNX Runtime row")
    parser.add_argument("--no-openvino", action="store_true", help="leave out the OpenVINO row")
    parser.add_argument(
        "--tsv",
        type=Path,
        help="a GLUE TSV (MRPC layout) whose pairs give the real lengths "
        "(default: seeded synthetic lengths with MRPC's distribution)",
    )
    parser.add_argument("--vocab", type=Path, help="WordPiece vocab for --tsv (default: the export's vocab.txt)")
    parser.add_argument(
        "--length-batches",
        type=int,
        default=51,
        help="batches of --batch from the length mix, in file order (51: all 408 MRPC dev pairs)",
    )
    parser.add_argument("--ort-model-type", default="bert_tf", choices=("bert_tf", "bert"))
    parser.add_argument(
        "--ort-spinning",
        default="default",
        choices=("default", "on", "off"),
        help="onnxruntime's session.intra_op.allow_spinning (default: onnxruntime's own)",
    )
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per model and round at --batch (default 8)")
    parser.add_argument("--latency-seconds", type=float, default=3.0, help="per model and round at batch 1 (3)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up calls per model and batch size (2)")
    parser.add_argument(
        "--parity-batches",
        type=int,
        default=4,
        help="seeded synthetic batches of --batch, and as many from the length mix (4)",
    )
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads, TensorFlow and onnxruntime")
    parser.add_argument("--inter-op-threads", type=int, default=0, help="TensorFlow's inter-op threads")
    parser.add_argument(
        "--onednn",
        default="default",
        choices=("default", "on", "off"),
        help="set TF_ENABLE_ONEDNN_OPTS for every step (default: leave it as it is)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 3 s (+1 s at batch 1), 1 warm-up call, 1 parity batch"
    )
    parser.add_argument("--reuse", action="store_true", help="keep the models already in --workdir")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed to each build step")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.latency_seconds, args.warmup, args.parity_batches = 1, 3.0, 1.0, 1, 1
    names = list(PRESETS) if args.candidates == "all" else [name for name in args.candidates.split(",") if name]
    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        parser.error(f"unknown candidate(s) {unknown}; presets: {', '.join(PRESETS)}; or --candidate NAME=OVERRIDES")
    args.candidate_list = [(name, PRESETS[name]) for name in names]
    for spec in args.candidate:
        name, sep, overrides = spec.partition("=")
        taken = {ORIGINAL, ORT} | {existing for existing, _ in args.candidate_list}
        if not sep or not name or name in taken or not overrides.strip():
            parser.error(f"--candidate {spec!r}: expected NAME=OVERRIDES with a new name")
        args.candidate_list.append((name, overrides))
    args.workdir = (args.workdir or REPO / "bench" / "out" / args.size).resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_ort_optimize":
        return _ort_optimize_worker(*argv[1:])
    args = parse_args(argv)
    if args.onednn != "default":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if args.onednn == "on" else "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    load_start = " ".join(f"{value:.1f}" for value in os.getloadavg())
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"

    export_s = export(args.size, model_dir, args.seq_len, args.reuse, args.timeout)
    config = json.loads((model_dir / "bert_config.json").read_text())
    candidates = [
        compile_candidate(name, overrides, model_dir, work / "runs", args.reuse, args.timeout)
        for name, overrides in args.candidate_list
    ]
    onnx: dict = {}
    if not args.no_onnx:
        missing = onnx_missing()
        onnx = (
            {"status": "skipped", "error": missing}
            if missing
            else build_onnx(model_dir, work, args, config["num_attention_heads"], config["hidden_size"])
        )
    build_s = time.perf_counter() - started

    log("loading the models into this process")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # loading a TF1 SavedModel warns once per reference variable
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    from bertc.verify import synthetic_batches

    models = {ORIGINAL: TFOriginal(str(model_dir))}
    how = {ORIGINAL: "as exported (TF1 SavedModel, its own signature)"}
    if onnx.get("status") in ("converted", "reused"):
        models[ORT] = OrtModel(onnx["path"], args.threads, args.ort_spinning)
        how[ORT] = f"tf2onnx + optimizer ({onnx['model_type']}), fp32"
    openvino_status = None
    if not args.no_openvino:
        openvino_status = openvino_missing()
        if openvino_status is None:
            log("openvino: convert_model on the original SavedModel, compile for CPU (f32, latency hint)")
            start = time.perf_counter()
            models[OPENVINO] = OpenVinoModel(str(model_dir), args.threads)
            how[OPENVINO] = "openvino.convert_model(SavedModel), CPU f32"
            openvino_status = (
                f"convert + compile {time.perf_counter() - start:.0f} s, "
                f"openvino {importlib.metadata.version('openvino')}"
            )
        else:
            openvino_status = f"skipped ({openvino_status})"
    for candidate in candidates:
        if candidate.get("path"):
            models[candidate["name"]] = TFCompiled(candidate["path"])
            how[candidate["name"]] = describe(candidate["overrides"])
    vocab = config["vocab_size"]
    vocab_file = args.vocab or (model_dir / "vocab.txt" if (model_dir / "vocab.txt").is_file() else None)
    workloads, length_source = workloads_for(args, vocab, vocab_file)
    log(f"parity on {args.parity_batches} x {args.batch} synthetic sequences and the length mix ({length_source})")
    parities = parity(models, synthetic_batches(args.parity_batches, args.batch, args.seq_len, vocab, seed=0))
    for name, figures in parity(models, workloads[f"mrpc_b{args.batch}"][1][: args.parity_batches]).items():
        parities[name]["length_max_abs_diff"] = figures["max_abs_diff"]
        parities[name]["length_argmax_agreement"] = figures["argmax_agreement"]
    rates = [matmul_rate()]
    log(
        f"matmul rate {rates[0]:.1f} GFLOP/s; measuring {len(models)} models: {args.rounds} rounds of "
        f"{args.seconds} s each at batch {args.batch} and {args.latency_seconds} s at batch 1, per workload "
        f"({', '.join(workloads)})"
    )
    bench = measure(models, workloads, args)
    rates.append(matmul_rate())
    bounds = bound(config, workloads, max(rates))

    rows = [{"name": name, "how": how[name], **bench[name], **parities[name]} for name in models]
    rows += [
        {"name": c["name"], "how": describe(c["overrides"]), "error": c.get("error")}
        for c in candidates
        if not c.get("path")
    ]
    payload = {
        "command": "python bench/compare.py " + shlex.join(argv),
        "machine": machine_info(),
        "versions": versions(),
        "onednn": onednn_enabled(),
        "settings": {
            key: getattr(args, key)
            for key in (
                "size",
                "seq_len",
                "batch",
                "rounds",
                "seconds",
                "latency_seconds",
                "warmup",
                "parity_batches",
                "threads",
                "inter_op_threads",
                "ort_spinning",
            )
        },
        "model": {"path": str(model_dir), "config": config, "export_s": round(export_s, 1)},
        "candidates": candidates,
        "onnx": onnx,
        "rows": rows,
        "goals": goals(bench, candidates, parities),
        "openvino": openvino_status,
        "lengths": {
            "source": length_source,
            "matmul_gflops": max(rates),
            "matmul_gflops_start_end": rates,
            "bounds": bounds,
            "mean_length_run": bounds[f"mrpc_b{args.batch}"]["mean_length_run"],
        },
        "length_table": length_table(rows, args.batch, bounds),
        "length_goals": length_goals(bench, candidates, parities, bounds, args.batch),
        "load_start": load_start,
        "load_end": " ".join(f"{value:.1f}" for value in os.getloadavg()),
        "build_s": round(build_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
    }
    payload["notes"] = notes_for(payload)
    markdown = table(rows, args.batch)
    write_report(work, payload, markdown)
    print("\n" + markdown + "\n")
    print(payload["length_table"] + "\n")
    for line in payload["goals"] + [""] + payload["length_goals"] + [""] + payload["notes"]:
        print(f"- {line}" if line else "")
    print(
        f"\nresults: {work / 'results.md'} and results.json (total {payload['total_s']:.0f} s, builds {build_s:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
