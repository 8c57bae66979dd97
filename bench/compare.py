"""bertc against the user's own model and the runtimes a user would otherwise pick, measured in one process.

    python bench/compare.py                        # BERT-Base: build, compile, convert, measure (see bench/README.md)
    python bench/compare.py --size tiny --quick    # the smoke test (a few minutes)
    python bench/compare.py --candidates fp32,bf16_tf \\
        --candidate "bf16_fold=precision=mixed_bf16 mask.fold_scale=true"
    python bench/compare.py --reuse --rounds 5     # measure again; keep the models already built

Steps (each build step in its own process, so the measuring process holds only the models):
1. one set of weights (bertc's seeded initializer, seed 0) written as a Hugging Face folder, and from
   it the user's TF SavedModel (bertc.model.export, inputs [None, S]) and the same graph with a dynamic
   length (bench/peers.py);
2. compile each candidate from the user's SavedModel with
   `python -m bertc model.path=<export> <overrides> verify=off bench=off hydra.run.dir=...`;
3. each peer's own format of the same weights: ONNX (PyTorch's export with dynamic axes, or tf2onnx
   of the dynamic SavedModel, then onnxruntime's transformer optimizer, fusions recorded) and
   CTranslate2 (its converter on the HF folder); OpenVINO and PyTorch load theirs in this process;
4. load everything; parity of each system against the user's model (fp32, TensorFlow: max
   |probability difference| and argmax agreement); warm-up; interleaved rounds per workload.

Each peer is fed as its users feed it (bench/peers.py): each batch cut to its longest real row
(`[:, :L]`) where its model takes a variable length, padded to S where it cannot (the user's
SavedModel), one id list per row for CTranslate2; the table says which. bertc's builds are drop-in:
they take the batch padded to S and cut or pack inside.

Workloads: real lengths from `--tsv` (a GLUE TSV, tokenized with `--vocab`) or seeded MRPC-like
synthetic lengths, at `--batch` in file order and at batch 1, and full-length batches. Two bounds
from TensorFlow's fp32 matmul rate measured in the same run: the batch-max bound (the matmul FLOPs
of each batch at its longest real row) and the real-token bound (each sequence at its own length),
with each system's fraction of both.

A peer whose package is not installed, or whose build failed, is a row saying so; so is a
candidate that failed to compile. The table goes to stdout and, with the machine, the goals and the
per-round figures, to `<workdir>/results.md` and `results.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import peers  # bench/peers.py: the script's folder is on sys.path
from omegaconf import OmegaConf

from bertc.evaluate.bench import interleaved_rounds, warm_up
from bertc.evaluate.spread import throughput_per_round

REPO = Path(__file__).resolve().parents[1]

# The candidate presets (name -> bertc overrides), the default candidates and the goals: data, in compare.yaml.
SETUP = OmegaConf.to_container(OmegaConf.load(Path(__file__).with_name("compare.yaml")), resolve=True)
PRESETS: dict[str, str] = SETUP["presets"]
DEFAULT_CANDIDATES: list[str] = SETUP["default_candidates"]
GOALS: dict[str, dict[str, float]] = SETUP["goals"]  # full_length, real_lengths, int8: goal -> its ratio
DEFAULT_WORDS = set(SETUP["rewrites"].split()) | {"target=tf"}  # bertc's defaults, left out of a row's `how`
CUT_MODES = ("length=trim", "length=buckets", "length=pack")
ORIGINAL, ORT = "original", "onnxruntime"


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


def build_weights(size: str, work: Path, seq_len: int, reuse: bool, timeout: float) -> float:
    """WORK/hf (the weights, drawn once), WORK/model (the user's SavedModel) and WORK/model_dynamic."""
    built = [work / "hf" / "model.safetensors", work / "model" / "saved_model.pb", work / "model_dynamic"]
    if reuse and all(path.exists() for path in built):
        log(f"weights: reusing {work / 'hf'}, {work / 'model'}, {work / 'model_dynamic'}")
        return 0.0
    # NOTE: everything built from the weights goes with them, or --reuse would keep builds of other weights.
    for folder in ("hf", "model", "model_dynamic", "onnx", "ct2", "runs"):
        shutil.rmtree(work / folder, ignore_errors=True)
    log(f"weights: {size}, seed 0 -> HF folder, the user's SavedModel (seq {seq_len}) and a dynamic-length one")
    command = [sys.executable, str(Path(peers.__file__)), "weights", size, str(work), str(seq_len)]
    code, seconds, tail = run_logged(command, work / "weights.log", timeout)
    if code != 0:
        raise SystemExit(f"building the weights failed (exit {code}); see {work / 'weights.log'}:\n{tail}")
    log(f"weights: done in {seconds:.0f}s")
    return seconds


def compile_candidate(name: str, overrides: str, model: Path, runs: Path, reuse: bool, timeout: float) -> dict:
    run_dir = runs / name
    artifact = run_dir / "model"
    entry = {"name": name, "overrides": overrides, "run_dir": str(run_dir)}
    served = [artifact / "saved_model.pb", artifact / "model.onnx"]  # target=onnxruntime's artifact is model.onnx
    if reuse and any(file.is_file() for file in served):
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
    if code != 0 or not any(file.is_file() for file in served):
        log(f"compile {name}: FAILED (exit {code}); see {runs / f'{name}.log'}")
        return {**entry, "status": "failed", "error": f"bertc exit {code}: {tail[-400:]}"}
    log(f"compile {name}: done in {seconds:.0f}s")
    return {**entry, "path": str(artifact), "compile_s": round(seconds, 1), "status": "compiled"}


def build_peer_formats(work: Path, args, heads: int, hidden: int) -> dict:
    """The peers' own formats of the weights (bench/peers.py build_steps), each in its own process; step -> status."""
    steps = peers.build_steps(work, heads, hidden, args.opset, peers.ORT_EXPORTERS[args.ort_model_type])
    status = {}
    for step, spec in steps.items():
        if not spec["installed"] or set(spec["peers"]) <= set(args.skip_peers):
            status[step] = "skipped (left out, or its packages are not installed)"
        elif args.reuse and spec["product"].is_file():
            status[step] = "reused"
        else:
            shutil.rmtree(spec["product"].parent, ignore_errors=True)
            log(f"{step}: converting the HF weights")
            command = [sys.executable, str(Path(peers.__file__)), *spec["arguments"]]
            code, seconds, tail = run_logged(command, work / f"{step}.log", args.timeout)
            status[step] = f"built in {seconds:.0f}s" if code == 0 else f"failed (exit {code}): {tail[-300:]}"
            log(f"{step}: {status[step]}")
    return status


# ---- the systems, in this process -----------------------------------------------------------------


def load_systems(work: Path, candidates: list[dict], args) -> tuple[dict, dict]:
    """(name -> peers.System, name -> why it is absent): the user's model, each peer, each compiled candidate."""
    settings = {"threads": args.threads, "ort_spinning": args.ort_spinning}
    systems: dict = {
        ORIGINAL: peers.TFSignature(str(work / "model"), peers.FED_PADDED, "the user's TF SavedModel, inputs [None, S]")
    }
    absent: dict = {}
    for name, loader in peers.PEERS.items():
        if name in args.skip_peers:
            absent[name] = "left out on the command line"
            continue
        start = time.perf_counter()
        try:
            systems[name] = loader(work, settings)
        except peers.Missing as reason:
            absent[name] = str(reason)
            log(f"{name}: {reason}")
            continue
        except Exception as error:  # one peer that breaks on this machine is a row saying how, not a lost run
            absent[name] = one_line(f"failed to load: {type(error).__name__}: {error}")
            log(f"{name}: {absent[name]}")
            continue
        log(f"{name}: loaded in {time.perf_counter() - start:.0f}s ({systems[name].how})")
    for candidate in candidates:
        if candidate.get("path"):
            system = peers.load_compiled(candidate["path"], describe(candidate["overrides"]))
            system.precision = "int8" if kind_of(candidate["overrides"]) == "int8" else "fp32"
            system.static_shape = not any(mode in candidate["overrides"] for mode in CUT_MODES)
            systems[candidate["name"]] = system
    return systems, absent


def parity(systems: dict, batches) -> dict:
    """Each system against the user's model on the same batches (each fed its own way)."""
    import numpy as np

    batches = [batch if isinstance(batch, dict) else batch.feeds() for batch in batches]

    def outputs(system):
        return np.concatenate([system(system.prepare(batch)) for batch in batches])

    reference = outputs(systems[ORIGINAL])
    result = {}
    for name, system in systems.items():
        values = outputs(system)
        result[name] = {
            "max_abs_diff": float(np.abs(reference - values).max()),
            "argmax_agreement": float((reference.argmax(-1) == values.argmax(-1)).mean()),
            "finite": bool(np.isfinite(values).all()),
            "examples": len(reference),
        }
    return result


def workloads_for(args, vocab: int, vocab_file: Path | None) -> tuple[dict, str]:
    """name -> (batch size, [feeds padded to S]): MRPC lengths (file order) at --batch and 1, full-length batches."""
    import numpy as np

    from bertc.evaluate.lengths import length_mix

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


# ---- the two bounds (pure) ------------------------------------------------------------------------


def useful_flops(config: dict, length: int) -> float:
    """Matmul FLOPs of one sequence at `length` tokens: projections, FFN, scores and context, pooler, classifier."""
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    per_layer = 8 * length * hidden * hidden + 4 * length * hidden * inner + 4 * length * length * hidden
    return layers * per_layer + 2 * hidden * hidden + 2 * hidden * 2


def batch_max_bound(config: dict, batches: list, rate_gflops: float) -> float:
    """Sequences/s if every batch ran at its longest row at the matmul rate: what per-batch padding allows.
    `batches`: the real lengths of each batch's rows."""
    seconds = sum(len(lengths) * useful_flops(config, int(max(lengths))) for lengths in batches) / (rate_gflops * 1e9)
    return sum(len(lengths) for lengths in batches) / seconds


def real_token_bound(config: dict, batches: list, rate_gflops: float) -> float:
    """Sequences/s if each sequence ran at its own length at the matmul rate: what removing all padding allows."""
    seconds = sum(useful_flops(config, int(length)) for lengths in batches for length in lengths) / (rate_gflops * 1e9)
    return sum(len(lengths) for lengths in batches) / seconds


def bounds(config: dict, workloads: dict, rate_gflops: float) -> dict:
    """Per workload: both bounds in sequences/s, and the mean length each runs at."""
    result = {}
    for name, (_, feeds) in workloads.items():
        batches = [peers.row_lengths(batch) for batch in feeds]
        result[name] = {
            "batch_max": batch_max_bound(config, batches, rate_gflops),
            "real_token": real_token_bound(config, batches, rate_gflops),
            "mean_length_run": sum(int(lengths.max()) for lengths in batches) / len(batches),
            "mean_length_real": float(sum(lengths.sum() for lengths in batches) / sum(len(b) for b in batches)),
        }
    return result


# ---- measuring ------------------------------------------------------------------------------------


def first_of_each_length(feeds: list) -> list[int]:
    """The index of the first batch of each distinct longest row: a system that takes a variable length builds its
    kernels for a shape on its first call (oneDNN primitives, OpenVINO's dynamic-shape kernels, an XLA build's
    per-bucket compile), and that must not land in a timed round."""
    first: dict[int, int] = {}
    for index, batch in enumerate(feeds):
        first.setdefault(int(batch["input_mask"].sum(1).max()), index)
    return list(first.values())


def warm_up_systems(systems: dict, prepared: dict, workloads: dict, calls: int) -> None:
    """`calls` calls of every system on each workload, then, where it takes a variable length, one on each length."""
    for name, system in systems.items():
        for load, (_, feeds) in workloads.items():
            warm_up(system, prepared[name][load], calls)
            for index in [] if system.static_shape else first_of_each_length(feeds):
                system(prepared[name][load][index])


def measure(systems: dict, workloads: dict, args) -> dict:
    """Each system's figures per workload, timed by bertc's loop (bertc/evaluate/bench.py interleaved_rounds): the
    order rotates each round, and each system goes on through a workload's batches where its last round stopped."""
    prepared = {
        name: {load: [system.prepare(batch) for batch in feeds] for load, (_, feeds) in workloads.items()}
        for name, system in systems.items()
    }
    warm_up_systems(systems, prepared, workloads, args.warmup)
    seconds = {load: args.seconds if size > 1 else args.latency_seconds for load, (size, _) in workloads.items()}
    durations = interleaved_rounds(systems, prepared, seconds, args.rounds, round_logger(workloads, args.rounds))
    result = {name: figures_of(durations[name], workloads, args.batch) for name in systems}
    add_ratios(result, systems)
    return result


def round_logger(workloads: dict, rounds: int):
    """After each round: every system's throughput on the first workload in that round."""
    first, (size, _) = next(iter(workloads.items()))

    def after_round(number: int, durations: dict) -> None:
        rates = {name: throughput_per_round(by_load[first][-1:], size)[0] for name, by_load in durations.items()}
        log(f"round {number + 1}/{rounds} ({first} seq/s): " + ", ".join(f"{n} {r:.2f}" for n, r in rates.items()))

    return after_round


def figures_of(durations: dict, workloads: dict, batch: int) -> dict:
    """One system's call durations (workload -> one list per round) -> throughput, p50, p90 and each round's
    throughput per workload, and the full-length figures the full-length table and goals read."""
    import numpy as np

    entry: dict = {"workloads": {}}
    for load, (size, _) in workloads.items():
        ms = np.array([call for calls in durations[load] for call in calls]) * 1000
        entry["workloads"][load] = {
            "throughput": size * len(ms) / (ms.sum() / 1000),
            "calls": len(ms),
            "round_throughput": [round(value, 3) for value in throughput_per_round(durations[load], size)],
            "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)),
        }
    full_batch, full_one = entry["workloads"][f"full_b{batch}"], entry["workloads"]["full_b1"]
    entry["throughput"] = full_batch["throughput"]
    entry["round_throughput"] = full_batch["round_throughput"]
    entry["latency_ms"] = {"p50": full_one["p50_ms"], "p90": full_one["p90_ms"], "calls": full_one["calls"]}
    return entry


def best_fp32_peer(result: dict, systems: dict, load: str, key: str = "throughput") -> str | None:
    """The fastest fp32 system that is not a bertc build (lowest p50 for key p50_ms)."""
    names = [
        name for name, system in systems.items() if system.precision == "fp32" and name in peers_and_original(systems)
    ]
    if not names:
        return None
    pick = min if key == "p50_ms" else max
    return pick(names, key=lambda name: result[name]["workloads"][load][key])


def peers_and_original(systems: dict) -> list[str]:
    return [name for name, system in systems.items() if not system.bertc]


def add_ratios(result: dict, systems: dict) -> None:
    """Each figure against the user's model, ONNX Runtime (the full-length table) and the best fp32 peer per
    workload."""
    for name in result:
        for base in (ORIGINAL, ORT):
            if base in result:
                result[name][f"vs_{base}"] = result[name]["throughput"] / result[base]["throughput"]
                pairs = zip(result[name]["round_throughput"], result[base]["round_throughput"], strict=True)
                result[name][f"vs_{base}_rounds"] = [round(mine / theirs, 3) for mine, theirs in pairs]
        result[name]["latency_vs_original"] = result[name]["latency_ms"]["p50"] / result[ORIGINAL]["latency_ms"]["p50"]
        for load, figures in result[name]["workloads"].items():
            base = result[ORIGINAL]["workloads"][load]
            figures["vs_original"] = figures["throughput"] / base["throughput"]
            figures["p50_vs_original"] = figures["p50_ms"] / base["p50_ms"]
            fastest, quickest = best_fp32_peer(result, systems, load), best_fp32_peer(result, systems, load, "p50_ms")
            figures["vs_best_peer"] = figures["throughput"] / result[fastest]["workloads"][load]["throughput"]
            figures["p50_vs_best_peer"] = figures["p50_ms"] / result[quickest]["workloads"][load]["p50_ms"]
            figures["best_peer"], figures["quickest_peer"] = fastest, quickest


# ---- report -------------------------------------------------------------------------------------


def machine_info() -> dict:
    """The CPU, its cores and SIMD flags (bertc.driver.hardware's, as bertc's reports give them), and Python."""
    from bertc.runtime.machine import cpu_name, simd_flags

    flags = simd_flags()
    return {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "flags": flags,
        "bf16_hardware": bool({"avx512_bf16", "amx_bf16"} & set(flags)),
        "python": platform.python_version(),
    }


def versions() -> dict:
    """bertc's own record of its versions (bertc.driver.plan.versions), each peer's package, and the checkout's
    commit."""
    from importlib import metadata

    from bertc.driver.plan import versions as bertc_versions

    result = {key: value for key, value in bertc_versions().items() if value != "absent"}
    for package in peers.PACKAGES:
        try:
            result[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
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
    if "precision=int8" in words:
        return "int8"
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


def full_length_goals(bench: dict, candidates: list[dict], parities: dict) -> list[str]:
    """The goals at full length, for the fastest bf16 and the fastest fp32 candidate."""

    def best(kind):
        rows = [c["name"] for c in candidates if c["name"] in bench and kind_of(c["overrides"]) == kind]
        return max(rows, key=lambda name: bench[name]["throughput"]) if rows else None

    lines, goal = [], GOALS["full_length"]
    bf16 = best("bf16")
    if bf16:
        ratio = bench[bf16]["vs_original"]
        lines.append(
            f"bf16 >= {goal['bf16_vs_original']}x original: {_mark(ratio >= goal['bf16_vs_original'])} "
            f"(fastest bf16 row, {bf16}: {ratio:.2f}x)"
        )
        if ORT in bench:
            ratio = bench[bf16][f"vs_{ORT}"]
            lines.append(
                f"bf16 >= {goal['bf16_vs_ort']}x ONNX Runtime: {_mark(ratio >= goal['bf16_vs_ort'])} "
                f"({bf16}: {ratio:.2f}x)"
            )
        diff = parities[bf16]["max_abs_diff"]
        lines.append(
            f"bf16 parity within {goal['bf16_parity']} on the synthetic batches: "
            f"{_mark(diff <= goal['bf16_parity'])} ({bf16}: {diff:.2g}; the MRPC/minilm check is "
            "bertc's verify step)"
        )
    fp32 = best("fp32")
    if fp32:
        ratio = bench[fp32]["vs_original"]
        lines.append(
            f"fp32 with removal+mask >= {goal['fp32_vs_original']}x original: "
            f"{_mark(ratio >= goal['fp32_vs_original'])} (fastest fp32 row, {fp32}: {ratio:.2f}x)"
        )
    for name in filter(None, (bf16, fp32)):
        ratio = bench[name]["latency_vs_original"]
        lines.append(
            f"batch-1 p50 of {name} not worse than the original's: {_mark(ratio <= 1.0)} ({ratio:.2f}x the original's)"
        )
    return lines


def _ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}x" if key in row else "n/a"


def _agreement(row: dict, key: str = "argmax_agreement") -> str:
    """Argmax agreement; an int8 row is marked, since its probabilities are not expected to match closely."""
    mark = " (int8)" if row.get("precision") == "int8" else ""
    return f"{row[key]:.3f}{mark}"


def table(rows: list[dict], batch: int) -> str:
    """The full-length table: full-length batches (every row S real tokens), synthetic parity."""
    lines = [
        f"| system | fed | how | seq/s b{batch} | x original | x ORT | p50 ms b1 | p50 vs original | max abs dp "
        "| argmax |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "throughput" not in row:
            lines.append(f"| {row['name']} | | {row['how']} | {row['absent']} | | | | | | |")
            continue
        lines.append(
            f"| {row['name']} | {row['fed']} | {row['how']} | {row['throughput']:.2f} | {_ratio(row, 'vs_original')} | "
            f"{_ratio(row, f'vs_{ORT}')} | {row['latency_ms']['p50']:.1f} | {_ratio(row, 'latency_vs_original')} | "
            f"{row['max_abs_diff']:.2g} | {_agreement(row)} |"
        )
    return "\n".join(lines)


def length_table(rows: list[dict], batch: int, limits: dict) -> str:
    """Real lengths: MRPC at batch `batch` and 1, full length, each system's fraction of both bounds."""
    mixed, full = f"mrpc_b{batch}", f"full_b{batch}"
    head = (
        f"| system | fed | MRPC b{batch} seq/s | x original | x best fp32 peer | of batch-max bound "
        f"| of real-token bound | MRPC b1 p50 ms | x original | full b{batch} seq/s | x original | full b1 p50 ms "
        "| max abs dp (MRPC) "
        "| argmax (MRPC) |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, what in (
        ("batch_max", "each batch at its longest row"),
        ("real_token", "each sequence at its own length"),
    ):
        lines.append(
            f"| {key.replace('_', '-')} bound | {what} | {limits[mixed][key]:.2f} | | | "
            f"{'1.00' if key == 'batch_max' else ''} | {'1.00' if key == 'real_token' else ''} | "
            f"{1000 / limits['mrpc_b1'][key]:.3g} | | {limits[full][key]:.2f} | | "
            f"{1000 / limits['full_b1'][key]:.3g} | | |"
        )
    for row in rows:
        if "workloads" not in row:
            lines.append(f"| {row['name']} | {row['absent']} | | | | | | | | | | | | |")
            continue
        loads = row["workloads"]
        lines.append(
            f"| {row['name']} | {row['fed']} | {loads[mixed]['throughput']:.2f} | "
            f"{loads[mixed]['vs_original']:.2f}x | {loads[mixed]['vs_best_peer']:.2f}x | "
            f"{loads[mixed]['throughput'] / limits[mixed]['batch_max']:.2f} | "
            f"{loads[mixed]['throughput'] / limits[mixed]['real_token']:.2f} | {loads['mrpc_b1']['p50_ms']:.1f} | "
            f"{loads['mrpc_b1']['p50_vs_original']:.2f}x | {loads[full]['throughput']:.2f} | "
            f"{loads[full]['vs_original']:.2f}x | {loads['full_b1']['p50_ms']:.1f} | "
            f"{row.get('length_max_abs_diff', float('nan')):.2g} | {_agreement(row, 'length_argmax_agreement')} |"
        )
    return "\n".join(lines)


def _mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def length_goals(bench: dict, candidates: list[dict], parities: dict, limits: dict, batch: int) -> list[str]:
    """The goals on real lengths, for the fastest fp32 candidate that cuts or packs, on MRPC lengths at `batch`."""
    mixed, full = f"mrpc_b{batch}", f"full_b{batch}"
    fp32 = [c["name"] for c in candidates if c["name"] in bench and kind_of(c["overrides"]) == "fp32"]
    cut = [c["name"] for c in candidates if c["name"] in fp32 and any(mode in c["overrides"] for mode in CUT_MODES)]
    if not cut:
        return [f"no fp32 candidate with {' or '.join(CUT_MODES)} ran: the length goals are not checked"]
    best = max(cut, key=lambda name: bench[name]["workloads"][mixed]["throughput"])
    loads, goal = bench[best]["workloads"], GOALS["real_lengths"]
    mrpc, single = loads[mixed], loads["mrpc_b1"]
    checks = [
        ("x the user's model", mrpc["vs_original"], goal["vs_original"], True),
        (f"x the best fp32 peer ({mrpc['best_peer']})", mrpc["vs_best_peer"], goal["vs_peer"], True),
        (
            "of the real-token bound",
            mrpc["throughput"] / limits[mixed]["real_token"],
            goal["real_token_fraction"],
            True,
        ),
        ("of the batch-max bound", mrpc["throughput"] / limits[mixed]["batch_max"], goal["batch_max_fraction"], True),
        ("b1 p50 x the user's model's", single["p50_vs_original"], goal["latency_vs_original"], False),
        (
            f"b1 p50 x the quickest fp32 peer's ({single['quickest_peer']})",
            single["p50_vs_best_peer"],
            goal["latency_vs_peer"],
            False,
        ),
        ("max abs dp on MRPC lengths", parities[best].get("length_max_abs_diff", float("nan")), goal["parity"], False),
    ]
    lines = [f"fastest fp32 candidate that cuts or packs, on MRPC b{batch}: {best}"]
    for what, value, target, higher in checks:
        ok = value >= target if higher else value <= target
        lines.append(f"{what}: {value:.3g} ({'>=' if higher else '<='} {target}): {_mark(ok)}")
    others = [name for name in fp32 if name not in cut]
    if others:
        today = max(others, key=lambda name: bench[name]["workloads"][full]["throughput"])
        ratio = loads[full]["throughput"] / bench[today]["workloads"][full]["throughput"]
        lines.append(
            f"full-length b{batch} x the best fp32 build without a length step ({today}): {ratio:.2f} "
            f"(>= {goal['full_vs_best']}, within noise): {_mark(ratio >= goal['full_vs_best'])}"
        )
    return lines


def int8_goals(bench: dict, candidates: list[dict], systems: dict, batch: int) -> list[str]:
    """The int8 goals: bertc's fastest int8 build against the fastest (and the quickest) int8 peer."""
    mixed = f"mrpc_b{batch}"
    ours = [c["name"] for c in candidates if c["name"] in bench and kind_of(c["overrides"]) == "int8"]
    theirs = [name for name in peers_and_original(systems) if systems[name].precision == "int8" and name in bench]
    if not ours or not theirs:
        return ["int8 goals not checked: " + ("no int8 candidate ran" if not ours else "no int8 peer ran")]
    best = max(ours, key=lambda name: bench[name]["workloads"][mixed]["throughput"])
    peer = max(theirs, key=lambda name: bench[name]["workloads"][mixed]["throughput"])
    quickest = min(theirs, key=lambda name: bench[name]["workloads"]["mrpc_b1"]["p50_ms"])
    ratio = bench[best]["workloads"][mixed]["throughput"] / bench[peer]["workloads"][mixed]["throughput"]
    goal = GOALS["int8"]
    latency = bench[best]["workloads"]["mrpc_b1"]["p50_ms"] / bench[quickest]["workloads"]["mrpc_b1"]["p50_ms"]
    return [
        f"fastest int8 candidate on MRPC b{batch}: {best}",
        f"x the fastest int8 peer ({peer}): {ratio:.3g} (>= {goal['vs_int8_peer']}): "
        f"{_mark(ratio >= goal['vs_int8_peer'])}",
        f"b1 p50 x the quickest int8 peer's ({quickest}): {latency:.3g} (<= {goal['latency_vs_int8_peer']}): "
        f"{_mark(latency <= goal['latency_vs_int8_peer'])}",
        "argmax agreement of each int8 row: the table's last column (the gate itself is bertc's verify on real "
        "data: bertc/evaluate/verify.py AGREEMENT_GATES)",
    ]


def notes_for(payload: dict) -> list[str]:
    info, setup, found = payload["machine"], payload["settings"], payload["versions"]
    bf16 = "yes" if info["bf16_hardware"] else "NO (bf16 matmuls run emulated here: no bf16 speedup is possible)"
    lengths = payload["lengths"]
    mixed = lengths["bounds"][f"mrpc_b{setup['batch']}"]
    installed = ", ".join(f"{package} {found[package]}" for package in peers.PACKAGES if package in found)
    notes = [
        (
            f"Machine: {info['cpu']}, {info['cores']} cores; flags: {' '.join(info['flags']) or 'none of interest'}; "
            f"bf16 instructions: {bf16}."
        ),
        (
            f"TensorFlow {found.get('tensorflow', '?')} with oneDNN {payload['onednn']} "
            f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}); "
            f"{installed or 'no peer package'}; bertc {found.get('bertc_commit', found.get('bertc', '?'))}."
        ),
        (
            f"Model: {setup['size']} shape, seq {setup['seq_len']}, one set of random weights (seed 0) in every system "
            f"(a Hugging Face folder, bench/peers.py). {setup['rounds']} interleaved rounds of {setup['seconds']} s "
            f"per system at batch {setup['batch']} and {setup['latency_seconds']} s at batch 1, after "
            f"{setup['warmup']} warm-up calls; threads: {setup['threads'] or 'library defaults'}."
        ),
        "Fed: " + "; ".join(f"'{fed}' {meaning}" for fed, meaning in peers.FED_MEANING.items()) + ".",
        (
            f"Lengths: {lengths['source']}; batches of {setup['batch']} average {mixed['mean_length_real']:.1f} real "
            f"tokens a row and run at their longest row, {mixed['mean_length_run']:.1f} on average. Matmul rate "
            f"{lengths['matmul_gflops']:.1f} GFLOP/s (TensorFlow fp32, 1024x768x3072, the better of start and end): "
            f"the batch-max bound is {mixed['batch_max']:.2f} seq/s, the real-token bound {mixed['real_token']:.2f}."
        ),
        (
            f"Parity: max |probability difference| against the user's model (TensorFlow fp32, padded to S) on "
            f"{setup['parity_batches']} synthetic batches and as many from the length mix; int8 rows are marked with "
            f"their argmax agreement. Load average at start / end: {payload['load_start']} / {payload['load_end']}."
        ),
    ]
    notes += [f"{step}: {status}." for step, status in payload["peer_builds"].items()]
    notes += [f"{row['name']}: {row['absent']}" for row in payload["rows"] if row.get("absent")]
    return notes


def write_report(work: Path, payload: dict, markdown: str) -> None:
    text = ["# bertc vs the user's model and its peers", "", "    " + payload["command"], ""]
    text += ["## Real lengths", "", payload["length_table"], ""]
    text += ["Goals on real lengths:", ""] + [f"- {line}" for line in payload["length_goals"]] + [""]
    text += ["## Full length", "", markdown, ""]
    text += ["Goals at full length:", ""] + [f"- {line}" for line in payload["goals"]] + [""]
    text += [f"- {line}" for line in payload["notes"]]
    (work / "results.md").write_text("\n".join(text) + "\n")
    (work / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    presets = "\n".join(f"  {name:14s} {overrides}" for name, overrides in PRESETS.items())
    parser = argparse.ArgumentParser(
        prog="python bench/compare.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"candidate presets:\n{presets}",
    )
    parser.add_argument(
        "--size", default="base", help="bertc.model.export preset: tiny, mini, base, large (default base)"
    )
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
    parser.add_argument(
        "--ort-model-type",
        default="auto",
        choices=tuple(peers.ORT_EXPORTERS),
        help="bert: PyTorch's ONNX export of the HF model; bert_tf: tf2onnx of the dynamic SavedModel; "
        "auto: bert when PyTorch and transformers are installed",
    )
    parser.add_argument(
        "--skip-peers",
        default="",
        help=f"peers to leave out, comma-separated: {', '.join(peers.PEERS)}",
    )
    parser.add_argument(
        "--ort-spinning",
        default="default",
        choices=("default", "on", "off"),
        help="onnxruntime's session.intra_op.allow_spinning (default: onnxruntime's own)",
    )
    parser.add_argument("--opset", type=int, default=17)
    add_measuring_options(parser)
    args = parser.parse_args(argv)
    return checked(parser, args)


def add_measuring_options(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads of every system (0: its default)")
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


def checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The parsed options, with --quick applied and the candidates and peers looked up."""
    if args.quick:
        args.rounds, args.seconds, args.latency_seconds, args.warmup, args.parity_batches = 1, 3.0, 1.0, 1, 1
    names = list(PRESETS) if args.candidates == "all" else [name for name in args.candidates.split(",") if name]
    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        parser.error(f"unknown candidate(s) {unknown}; presets: {', '.join(PRESETS)}; or --candidate NAME=OVERRIDES")
    args.candidate_list = [(name, PRESETS[name]) for name in names]
    for spec in args.candidate:
        name, sep, overrides = spec.partition("=")
        taken = {ORIGINAL, *peers.PEERS} | {existing for existing, _ in args.candidate_list}
        if not sep or not name or name in taken or not overrides.strip():
            parser.error(f"--candidate {spec!r}: expected NAME=OVERRIDES with a new name")
        args.candidate_list.append((name, overrides))
    args.skip_peers = [name for name in args.skip_peers.split(",") if name]
    if set(args.skip_peers) - set(peers.PEERS):
        parser.error(f"--skip-peers {args.skip_peers}: peers are {', '.join(peers.PEERS)}")
    args.skip_peers += [
        name
        for name in peers.PEERS
        if name not in args.skip_peers
        and ((args.no_onnx and name.startswith(ORT)) or (args.no_openvino and name == "openvino"))
    ]
    args.workdir = (args.workdir or REPO / "bench" / "out" / args.size).resolve()
    return args


def build(args) -> tuple[dict, list[dict], dict]:
    """The build steps, each in its own process: (the model's config, the candidates, the peers' builds)."""
    work = args.workdir
    build_weights(args.size, work, args.seq_len, args.reuse, args.timeout)
    config = json.loads((work / "model" / "bert_config.json").read_text())
    candidates = [
        compile_candidate(name, overrides, work / "model", work / "runs", args.reuse, args.timeout)
        for name, overrides in args.candidate_list
    ]
    peer_builds = build_peer_formats(work, args, config["num_attention_heads"], config["hidden_size"])
    return config, candidates, peer_builds


def start_tensorflow(args) -> None:
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # loading a TF1 SavedModel warns once per reference variable
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)


def run_measurements(args, config: dict, systems: dict) -> dict:
    """Parity, the matmul rate at start and end, the interleaved rounds and both bounds."""
    from bertc.evaluate.batches import synthetic_batches

    vocab = config["vocab_size"]
    vocab_file = args.vocab or (args.workdir / "model" / "vocab.txt")
    workloads, source = workloads_for(args, vocab, vocab_file if vocab_file.is_file() else None)
    log(f"parity on {args.parity_batches} x {args.batch} synthetic sequences and the length mix ({source})")
    parities = parity(systems, synthetic_batches(args.parity_batches, args.batch, args.seq_len, vocab, seed=0))
    for name, figures in parity(systems, workloads[f"mrpc_b{args.batch}"][1][: args.parity_batches]).items():
        parities[name]["length_max_abs_diff"] = figures["max_abs_diff"]
        parities[name]["length_argmax_agreement"] = figures["argmax_agreement"]
    rates = [matmul_rate()]
    log(
        f"matmul rate {rates[0]:.1f} GFLOP/s; measuring {len(systems)} systems: {args.rounds} rounds of "
        f"{args.seconds} s each at batch {args.batch} and {args.latency_seconds} s at batch 1, per workload "
        f"({', '.join(workloads)})"
    )
    bench = measure(systems, workloads, args)
    rates.append(matmul_rate())
    limits = bounds(config, workloads, max(rates))
    lengths = {"source": source, "matmul_gflops": max(rates), "matmul_gflops_start_end": rates, "bounds": limits}
    return {"parities": parities, "bench": bench, "lengths": lengths}


def rows_for(systems: dict, absent: dict, candidates: list[dict], figures: dict) -> list[dict]:
    rows = [
        {
            "name": name,
            "how": system.how,
            "fed": system.fed,
            "precision": system.precision,
            **figures["bench"][name],
            **figures["parities"][name],
        }
        for name, system in systems.items()
    ]
    rows += [{"name": name, "how": "", "absent": f"absent: {reason}"} for name, reason in absent.items()]
    rows += [
        {"name": c["name"], "how": describe(c["overrides"]), "absent": f"failed to compile: {one_line(c.get('error'))}"}
        for c in candidates
        if not c.get("path")
    ]
    return rows


def one_line(text: str | None, limit: int = 300) -> str:
    """An error for a table cell: its lines joined, cut at `limit` characters (the log has the rest)."""
    joined = " ".join(line.strip() for line in (text or "").splitlines() if line.strip()).replace("|", "/")
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.onednn != "default":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if args.onednn == "on" else "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the length mix tokenizes before OpenVINO forks
    started, load_start = time.perf_counter(), " ".join(f"{value:.1f}" for value in os.getloadavg())
    args.workdir.mkdir(parents=True, exist_ok=True)
    config, candidates, peer_builds = build(args)
    build_s = time.perf_counter() - started
    log("loading the systems into this process")
    start_tensorflow(args)
    systems, absent = load_systems(args.workdir, candidates, args)
    figures = run_measurements(args, config, systems)
    rows = rows_for(systems, absent, candidates, figures)
    bench, parities, batch = figures["bench"], figures["parities"], args.batch
    payload = {
        "command": "python bench/compare.py " + shlex.join(argv),
        "machine": machine_info(),
        "versions": versions(),
        "onednn": onednn_enabled(),
        "settings": {key: getattr(args, key) for key in SETTINGS},
        "model": {"path": str(args.workdir / "model"), "config": config},
        "candidates": candidates,
        "peer_builds": peer_builds,
        "rows": rows,
        "goals": full_length_goals(bench, candidates, parities),
        "lengths": figures["lengths"],
        "length_table": length_table(rows, batch, figures["lengths"]["bounds"]),
        "length_goals": length_goals(bench, candidates, parities, figures["lengths"]["bounds"], batch)
        + int8_goals(bench, candidates, systems, batch),
        "load_start": load_start,
        "load_end": " ".join(f"{value:.1f}" for value in os.getloadavg()),
        "build_s": round(build_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
    }
    payload["notes"] = notes_for(payload)
    markdown = table(rows, batch)
    write_report(args.workdir, payload, markdown)
    print("\n" + payload["length_table"] + "\n")
    print(markdown + "\n")
    for line in payload["length_goals"] + [""] + payload["goals"] + [""] + payload["notes"]:
        print(f"- {line}" if line else "")
    print(f"\nresults: {args.workdir / 'results.md'} and results.json (total {payload['total_s']:.0f} s)")
    return 0


SETTINGS = (
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
    "ort_model_type",
    "skip_peers",
)


if __name__ == "__main__":
    sys.exit(main())
