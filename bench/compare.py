"""bertc against the model as exported and against ONNX Runtime, measured in one process.

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

Throughput is sequences per second over all rounds; latency the p50 of the batch-1 calls; the
ratios divide by the original's and ONNX Runtime's throughput in this same run. The table goes to
stdout and, with the machine (CPU flags, whether TensorFlow uses oneDNN, load average), the goals
of issue 7 and the per-round figures, to `<workdir>/results.md` and `results.json`.

Needs the README's install plus `pip install '.[onnx]'` (tf2onnx, onnxruntime, onnx); without
them the ONNX Runtime row is skipped and the report says so (`--no-onnx` skips it on purpose).
"""
from __future__ import annotations

import argparse
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
}
DEFAULT_CANDIDATES = ("fp32", "fp32_fold", "fp32_xla", "bf16_tf", "bf16_xla")
GOALS = {"bf16_vs_original": 2.0, "bf16_vs_ort": 1.7, "fp32_vs_original": 1.15, "bf16_parity": 3e-2}
ORIGINAL, ORT = "original", "onnxruntime"
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
            code = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO,
                                  timeout=timeout, check=False).returncode
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
    command = [sys.executable, "-m", "bertc", f"model.path={model}", *shlex.split(overrides),
               "verify=off", "bench=off", f"hydra.run.dir={run_dir}"]
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
    convert = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(model), "--output", str(raw),
               "--signature_def", "serving_default", "--tag", "serve", "--opset", str(args.opset)]
    code, seconds, tail = run_logged(convert, work / "tf2onnx.log", args.timeout)
    if code != 0 or not raw.is_file():
        return {**info, "status": "failed", "error": f"tf2onnx exit {code}: {tail[-400:]}"}
    info["convert_s"] = round(seconds, 1)
    log(f"onnx: converted in {seconds:.0f}s; optimizing (onnxruntime.transformers.optimizer, {args.ort_model_type})")
    optimize = [sys.executable, __file__, "_ort_optimize", str(raw), str(optimized), args.ort_model_type,
                str(heads), str(hidden), str(stats_file)]
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


def parity(models: dict, batches) -> dict:
    import numpy as np

    reference = np.concatenate([models[ORIGINAL](batch.feeds()) for batch in batches])
    result = {}
    for name, model in models.items():
        outputs = np.concatenate([model(batch.feeds()) for batch in batches])
        result[name] = {
            "max_abs_diff": float(np.abs(reference - outputs).max()),
            "argmax_agreement": float((reference.argmax(-1) == outputs.argmax(-1)).mean()),
            "finite": bool(np.isfinite(outputs).all()),
            "examples": len(reference),
        }
    return result


def _timed(model, feeds, seconds: float, minimum: int) -> list[float]:
    durations, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(durations) < minimum:
        start = time.perf_counter()
        model(feeds)
        durations.append(time.perf_counter() - start)
    return durations


def measure(models: dict, feeds_batch, feeds_one, args) -> dict:
    """Interleaved rounds: each model in turn at the batch size, then each at batch 1; the order rotates."""
    import numpy as np

    names = list(models)
    for name in names:
        for _ in range(args.warmup):
            models[name](feeds_batch)
            models[name](feeds_one)
    batch_times = {name: [] for name in names}
    per_round = {name: [] for name in names}
    latency = {name: [] for name in names}
    for number in range(args.rounds):
        shift = number % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            durations = _timed(models[name], feeds_batch, args.seconds, 2)
            batch_times[name] += durations
            per_round[name].append(args.batch * len(durations) / sum(durations))
        for name in order:
            latency[name] += _timed(models[name], feeds_one, args.latency_seconds, 5)
        figures = ", ".join(f"{name} {per_round[name][-1]:.2f}" for name in names)
        log(f"round {number + 1}/{args.rounds} (seq/s at batch {args.batch}): {figures}")
    result = {}
    for name in names:
        ms = np.array(latency[name]) * 1000
        result[name] = {
            "throughput": args.batch * len(batch_times[name]) / sum(batch_times[name]),
            "round_throughput": [round(value, 3) for value in per_round[name]],
            "calls": len(batch_times[name]),
            "latency_ms": {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                           "calls": len(ms)},
        }
    for name in names:
        for base in (ORIGINAL, ORT):
            if base in result:
                result[name][f"vs_{base}"] = result[name]["throughput"] / result[base]["throughput"]
                pairs = zip(result[name]["round_throughput"], result[base]["round_throughput"], strict=True)
                result[name][f"vs_{base}_rounds"] = [round(mine / theirs, 3) for mine, theirs in pairs]
        if ORIGINAL in result:
            p50, base_p50 = result[name]["latency_ms"]["p50"], result[ORIGINAL]["latency_ms"]["p50"]
            result[name]["latency_vs_original"] = p50 / base_p50
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
    return {"cpu": cpu, "cores": cores, "flags": [flag for flag in interesting if flag in flags],
            "bf16_hardware": bool({"avx512_bf16", "amx_bf16"} & flags), "python": platform.python_version()}


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
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=False)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, check=False)
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
        lines.append(f"bf16 >= {GOALS['bf16_vs_original']}x original: {mark(ratio >= GOALS['bf16_vs_original'])} "
                     f"(fastest bf16 row, {bf16}: {ratio:.2f}x)")
        if ORT in bench:
            ratio = bench[bf16][f"vs_{ORT}"]
            lines.append(f"bf16 >= {GOALS['bf16_vs_ort']}x ONNX Runtime: {mark(ratio >= GOALS['bf16_vs_ort'])} "
                         f"({bf16}: {ratio:.2f}x)")
        diff = parities[bf16]["max_abs_diff"]
        lines.append(f"bf16 parity within {GOALS['bf16_parity']} on the synthetic batches: "
                     f"{mark(diff <= GOALS['bf16_parity'])} ({bf16}: {diff:.2g}; the MRPC/minilm check is "
                     "bertc's verify step)")
    fp32 = best("fp32")
    if fp32:
        ratio = bench[fp32]["vs_original"]
        lines.append(f"fp32 with removal+mask >= {GOALS['fp32_vs_original']}x original: "
                     f"{mark(ratio >= GOALS['fp32_vs_original'])} (fastest fp32 row, {fp32}: {ratio:.2f}x)")
    for name in filter(None, (bf16, fp32)):
        ratio = bench[name]["latency_vs_original"]
        lines.append(f"batch-1 p50 of {name} not worse than the original's: {mark(ratio <= 1.0)} "
                     f"({ratio:.2f}x the original's)")
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


def notes_for(payload: dict) -> list[str]:
    info, setup, found = payload["machine"], payload["settings"], payload["versions"]
    bf16 = "yes" if info["bf16_hardware"] else "NO (bf16 matmuls run emulated here: no bf16 speedup is possible)"
    notes = [
        (f"Machine: {info['cpu']}, {info['cores']} cores; flags: {' '.join(info['flags']) or 'none of interest'}; "
         f"bf16 instructions: {bf16}."),
        (f"TensorFlow {found.get('tensorflow', '?')} with oneDNN {payload['onednn']} "
         f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}); onnxruntime "
         f"{found.get('onnxruntime', 'n/a')}, tf2onnx {found.get('tf2onnx', 'n/a')}; bertc "
         f"{found.get('bertc_commit', found.get('bertc', '?'))}."),
        (f"Model: {setup['size']}, seq {setup['seq_len']}, random weights from seed 0. {setup['rounds']} interleaved "
         f"rounds of {setup['seconds']} s per model at batch {setup['batch']} and {setup['latency_seconds']} s at "
         f"batch 1, after {setup['warmup']} warm-up calls; threads: {setup['threads'] or 'library defaults'}."),
        (f"Load average at start / end: {payload['load_start']} / {payload['load_end']}: above the core count, "
         "other work shared the CPU (interleaving spreads it over every row; the per-round ratios in "
         "results.json show the spread)."),
    ]
    onnx = payload.get("onnx") or {}
    if onnx.get("status") in ("converted", "reused"):
        fused = ", ".join(f"{key} {value}" for key, value in onnx["fused"].items() if value) or "nothing"
        notes.append(f"ONNX Runtime: tf2onnx (opset {onnx['opset']}), then optimize_model(model_type="
                     f"{onnx['model_type']}): fused {fused}; attention fused: "
                     f"{'yes' if onnx['attention_fused'] else 'no'}.")
    elif onnx:
        notes.append(f"ONNX Runtime: skipped ({onnx.get('error') or onnx.get('status')}).")
    for row in payload["rows"]:
        if row.get("error"):
            notes.append(f"{row['name']} failed: {row['error'].splitlines()[-1][:300]}")
    return notes


def write_report(work: Path, payload: dict, markdown: str) -> None:
    text = ["# bertc vs the original and ONNX Runtime", "", "    " + payload["command"], "", markdown, ""]
    text += ["Goals (issue 7):", ""] + [f"- {line}" for line in payload["goals"]] + [""]
    text += [f"- {line}" for line in payload["notes"]]
    (work / "results.md").write_text("\n".join(text) + "\n")
    (work / "results.json").write_text(json.dumps(payload, indent=2) + "\n")


# ---- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    presets = "\n".join(f"  {name:14s} {overrides}" for name, overrides in PRESETS.items())
    parser = argparse.ArgumentParser(
        prog="python bench/compare.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=f"candidate presets:\n{presets}")
    parser.add_argument("--size", default="base", help="bertc.export preset: tiny, mini, base, large (default base)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--workdir", type=Path, help="models, logs and results (default bench/out/<size>)")
    parser.add_argument("--candidates", default=",".join(DEFAULT_CANDIDATES),
                        help=f"preset names, comma-separated, or 'all' (default {','.join(DEFAULT_CANDIDATES)})")
    parser.add_argument("--candidate", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="one more candidate: a name and bertc overrides (repeatable)")
    parser.add_argument("--no-onnx", action="store_true", help="leave out the ONNX Runtime row")
    parser.add_argument("--ort-model-type", default="bert_tf", choices=("bert_tf", "bert"))
    parser.add_argument("--ort-spinning", default="default", choices=("default", "on", "off"),
                        help="onnxruntime's session.intra_op.allow_spinning (default: onnxruntime's own)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per model and round at --batch (default 8)")
    parser.add_argument("--latency-seconds", type=float, default=3.0, help="per model and round at batch 1 (3)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up calls per model and batch size (2)")
    parser.add_argument("--parity-batches", type=int, default=4, help="seeded synthetic batches of --batch (4)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads, TensorFlow and onnxruntime")
    parser.add_argument("--inter-op-threads", type=int, default=0, help="TensorFlow's inter-op threads")
    parser.add_argument("--onednn", default="default", choices=("default", "on", "off"),
                        help="set TF_ENABLE_ONEDNN_OPTS for every step (default: leave it as it is)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 3 s (+1 s at batch 1), 1 warm-up call, 1 parity batch")
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
    candidates = [compile_candidate(name, overrides, model_dir, work / "runs", args.reuse, args.timeout)
                  for name, overrides in args.candidate_list]
    onnx: dict = {}
    if not args.no_onnx:
        missing = onnx_missing()
        onnx = {"status": "skipped", "error": missing} if missing else build_onnx(
            model_dir, work, args, config["num_attention_heads"], config["hidden_size"])
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
    for candidate in candidates:
        if candidate.get("path"):
            models[candidate["name"]] = TFCompiled(candidate["path"])
            how[candidate["name"]] = describe(candidate["overrides"])
    vocab = config["vocab_size"]
    log(f"parity on {args.parity_batches} x {args.batch} synthetic sequences")
    parities = parity(models, synthetic_batches(args.parity_batches, args.batch, args.seq_len, vocab, seed=0))
    feeds_batch = synthetic_batches(1, args.batch, args.seq_len, vocab, seed=1234)[0].feeds()
    feeds_one = {key: value[:1] for key, value in feeds_batch.items()}
    log(f"measuring {len(models)} models: {args.rounds} rounds of {args.seconds} s each at batch {args.batch} "
        f"and {args.latency_seconds} s at batch 1")
    bench = measure(models, feeds_batch, feeds_one, args)

    rows = [{"name": name, "how": how[name], **bench[name], **parities[name]} for name in models]
    rows += [{"name": c["name"], "how": describe(c["overrides"]), "error": c.get("error")}
             for c in candidates if not c.get("path")]
    payload = {
        "command": "python bench/compare.py " + shlex.join(argv),
        "machine": machine_info(),
        "versions": versions(),
        "onednn": onednn_enabled(),
        "settings": {key: getattr(args, key) for key in (
            "size", "seq_len", "batch", "rounds", "seconds", "latency_seconds", "warmup", "parity_batches",
            "threads", "inter_op_threads", "ort_spinning")},
        "model": {"path": str(model_dir), "config": config, "export_s": round(export_s, 1)},
        "candidates": candidates,
        "onnx": onnx,
        "rows": rows,
        "goals": goals(bench, candidates, parities),
        "load_start": load_start,
        "load_end": " ".join(f"{value:.1f}" for value in os.getloadavg()),
        "build_s": round(build_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
    }
    payload["notes"] = notes_for(payload)
    markdown = table(rows, args.batch)
    write_report(work, payload, markdown)
    print("\n" + markdown + "\n")
    for line in payload["goals"] + [""] + payload["notes"]:
        print(f"- {line}" if line else "")
    print(f"\nresults: {work / 'results.md'} and results.json (total {payload['total_s']:.0f} s, "
          f"builds {build_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
