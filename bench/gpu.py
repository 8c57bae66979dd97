"""bertc's StableHLO modules on a GPU through JAX's PJRT client, against Hugging Face's BertForSequenceClassification
in PyTorch (eager and torch.compile), measured in one run; prints a table of throughput, batch-1 latency and ratios.

    python bench/gpu.py                       # bench/artifacts/large-{fp32,mixed,mixed_bf16}, on the GPU
    python bench/gpu.py --tiny                # the CPU check: bench/artifacts/tiny-*, a few calls each

Inputs: the bundles bench/prepare_gpu.py makes (StableHLO modules + manifest.json per precision, no
weights). The weights are regenerated here with NumPy from the seed in the manifest, bertc's
transforms replayed (fold_scale, the precision's dtype), and checked against the manifest's
digests; each bundle's reference batch (TensorFlow's outputs on the build machine) then checks
the GPU's answers. Needs NumPy, safetensors, JAX (CUDA build for a GPU) and, for the PyTorch half,
torch and transformers (skipped, and said, when absent). No TensorFlow, no network.

Both sides do the same work per call: int32 NumPy inputs in, probabilities out as NumPy. The
inputs (`--workload`): `padded`, one seeded batch per batch size with varied padding, which every
system runs at all S positions; `mrpc` (the default when every bundle has length buckets, from
`python bench/prepare_gpu.py --buckets ...`), batches with MRPC's real lengths (mean 53, p90 70,
max 86; `bertc.evaluate.lengths.length_mix`, seed 0), cycled through: bertc's runtime runs each at the
smallest bucket that holds its longest row, and PyTorch runs each twice over, at the padded
length S (`lengths padded`) and cut to its longest real row (`lengths real`, which
`torch.compile(dynamic=True)` takes without a recompile per length). PyTorch's model has the
same shape (layers, hidden, heads, intermediate, vocabulary, labels, tanh GELU) and random
weights: these are timings, not a parity check. PyTorch runs fp32 twice, with TF32 matmuls off
(its default) and on; XLA's float32 dots at DEFAULT precision may use TF32 on Ampere and later
GPUs. torch.compile is `dynamic=True` by default: one compile per dtype serves every batch size
(`--torch-compile static` compiles per size, about four times the compile time). A time budget
(`--budget-s`, 330 s) skips what would not fit and says so; the run ends with the table either way.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from statistics import median

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # PyTorch shares the GPU with JAX in this process
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bertc.runtime.stablehlo, bertc.model.weights: no install (no TensorFlow) needed

import numpy as np

from bertc.evaluate.batches import synthetic_batches
from bertc.evaluate.bench import timed_calls, warm_up
from bertc.evaluate.lengths import length_mix
from bertc.runtime.stablehlo import Runtime, read_manifest, regenerate_weights

PRECISIONS = ("fp32", "mixed", "mixed_bf16")
# bertc precision -> the PyTorch run it is compared with
PEERS = {"fp32": "fp32", "mixed": "fp16", "mixed_bf16": "bf16"}
WORKLOADS = ("padded", "mrpc")
MRPC_ROWS = 64  # the mrpc workload cycles through batches that make at least this many rows per batch size


class Clock:
    def __init__(self, budget_s: float):
        self.start = time.perf_counter()
        self.deadline = self.start + budget_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def say(message: str) -> None:
    print(message, flush=True)


def feeds_for(workload: str, batch_sizes, seq_len: int, vocab: int) -> dict[int, list[dict[str, np.ndarray]]]:
    """Per batch size, the batches one measurement cycles through (see the module doc)."""
    if workload == "padded":
        return {size: [synthetic_batches(1, size, seq_len, vocab, seed=1234 + size)[0].feeds()] for size in batch_sizes}
    return {
        size: length_mix(seq_len, vocab, size, batches=max(1, -(-MRPC_ROWS // size)), seed=0)[0] for size in batch_sizes
    }


def cut_to_longest(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A right-padded batch cut to its longest real row: the same probabilities, no padding columns."""
    longest = max(1, int(batch["input_mask"].sum(axis=1).max()))
    return {key: value[:, :longest] for key, value in batch.items()}


def measure_cycling(call, batches: list, rows: int, args) -> dict:
    """Throughput, p50 and calls of `call` over `batches` in turn, timed by bertc's loop (bertc/evaluate/bench.py);
    the warm-up goes round them once at least, so that each width's first call (a bucket's first use, a
    dynamic-shape recompile) is not timed."""
    calls = max(args.warmup, len(batches))
    warm_up(call, batches, calls)
    durations = timed_calls(call, batches, args.seconds, start=calls, min_calls=args.min_calls)
    return {
        "throughput": rows * len(durations) / sum(durations),
        "p50_ms": 1000 * median(durations),
        "calls": len(durations),
    }


# ---- bertc: the StableHLO modules on a PJRT device -----------------------------------------------


def run_bertc(args, bundles: dict[str, Path], batch_sizes, clock: Clock, results: list[dict]) -> None:
    drawn: dict = {}
    for precision, bundle in bundles.items():
        row = {
            "system": "bertc",
            "precision": precision,
            "mode": f"stablehlo/{args.platform}",
            "workload": args.workload,
            "by_batch": {},
        }
        results.append(row)
        if clock.left() < args.reserve_s:
            row["skipped"] = "time budget"
            continue
        try:
            measure_bundle(args, bundle, batch_sizes, clock, row, drawn)
        except Exception as error:  # one precision that breaks is a row with its reason; the others still run
            row["error"] = _error_line(error)
            say(f"bertc {precision}: {row['error']}")
        gc.collect()


def _key(size) -> str:
    """A compile_seconds key: a batch size, or (batch size, width) for a bundle with length buckets."""
    return f"{size[0]}_s{size[1]}" if isinstance(size, tuple) else str(size)


def measure_bundle(args, bundle: Path, batch_sizes, clock: Clock, row: dict, drawn: dict) -> None:
    """Regenerate the weights, load and compile the modules, check the reference batch, time every batch size."""
    precision = row["precision"]
    manifest = read_manifest(bundle)
    start = time.perf_counter()
    weights, differ = regenerate_weights(manifest, drawn=drawn)
    row["weights_seconds"] = time.perf_counter() - start
    row["weights_match_build"] = not differ
    runtime = Runtime(bundle, platform=args.platform, weights=weights)
    del weights
    start = time.perf_counter()
    compile_seconds = runtime.compile(
        [size for size in runtime.batch_sizes if size in batch_sizes], threads=args.compile_threads
    )
    row["compile_s"] = time.perf_counter() - start  # wall time: the modules compile `--compile-threads` at a time
    row["self_check"] = runtime.self_check()
    say(
        f"bertc {precision}: weights {row['weights_seconds']:.1f}s "
        f"({'digests match the build' if not differ else f'{len(differ)} digests differ: parity void'}), "
        f"compile {row['compile_s']:.1f}s "
        f"({', '.join(f'b{_key(size)} {seconds:.1f}' for size, seconds in sorted(compile_seconds.items()))}), "
        f"self-check max |dp| {row['self_check']['max_abs_diff']:.2e} (gate {row['self_check']['tolerance']}) "
        f"on {runtime.platform}"
    )
    row["lengths"] = f"buckets {','.join(map(str, runtime.widths))}" if runtime.bucketed else "padded"
    vocab = manifest["input_limits"]["input_ids"] if manifest.get("input_limits") else 1000
    feeds = feeds_for(args.workload, batch_sizes, runtime.seq_len, vocab)
    for size in batch_sizes:
        if clock.left() < args.reserve_s / 2:
            row["by_batch"][size] = {"skipped": "time budget"}
            continue
        before = dict(runtime.ran)
        row["by_batch"][size] = measure_cycling(runtime, feeds[size], size, args)
        # which module widths ran, and how often (warm-up included): each bucket's module is used for its lengths
        ran: dict[str, int] = {}
        for (batch, width), count in sorted(runtime.ran.items()):
            if count > before.get((batch, width), 0):
                ran[str(width)] = ran.get(str(width), 0) + count - before.get((batch, width), 0)
        row["by_batch"][size]["widths_ran"] = ran


# ---- PyTorch: Hugging Face BertForSequenceClassification of the same shape -----------------------


def torch_available() -> str | None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except Exception as error:  # absent, or a broken install: the JAX half still runs
        return f"{type(error).__name__}: {error}"
    return None


def run_torch(args, shape: dict, batch_sizes, clock: Clock, results: list[dict]) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    device = "cuda" if args.platform in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
    config = BertConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        intermediate_size=shape["intermediate"],
        max_position_embeddings=shape["max_positions"],
        type_vocab_size=shape["type_vocab"],
        num_labels=shape["num_labels"],
        hidden_act="gelu_new",  # google's tanh GELU
        layer_norm_eps=shape["epsilon"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    with torch.device(device):
        base = BertForSequenceClassification(config).eval()
    feeds = feeds_for(args.workload, batch_sizes, shape["seq_len"], shape["vocab"])
    # mrpc: every run at the padded length and at the real lengths; padded: at the padded length only
    lengths = ("padded", "real") if args.workload == "mrpc" else ("padded",)

    def call(model, batch):
        inputs = {key: torch.from_numpy(value).to(device).long() for key, value in batch.items()}
        with torch.inference_mode():
            logits = model(
                input_ids=inputs["input_ids"], attention_mask=inputs["input_mask"], token_type_ids=inputs["segment_ids"]
            ).logits
            return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    runs = [
        ("fp32", torch.float32, False),
        ("fp32+tf32", torch.float32, True),
        ("fp16", torch.float16, False),
        ("bf16", torch.bfloat16, False),
    ]
    for label, dtype, tf32 in runs:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        model = base if dtype == torch.float32 else _cast(base, dtype)
        modes = [("eager", model)]
        if args.torch_compile != "off" and not tf32:
            modes.append((f"compile/{args.torch_compile}", None))
        for mode, runnable in modes:
            # a torch.compile'd model compiles on the first length and is reused for the next; a static compile
            # would recompile for every real length (and fall back to eager past torch's limit): padded only
            static = runnable is None and args.torch_compile == "static"
            for length in ("padded",) if static else lengths:
                row = {
                    "system": "pytorch",
                    "precision": label,
                    "mode": f"{mode}/{device}",
                    "workload": args.workload,
                    "lengths": length,
                    "by_batch": {},
                }
                results.append(row)
                if clock.left() < (args.compile_reserve_s if runnable is None else args.reserve_s / 2):
                    row["skipped"] = "time budget"
                    say(f"pytorch {label} {mode} lengths {length}: skipped (time budget)")
                    continue
                cut = {size: [cut_to_longest(batch) for batch in feeds[size]] for size in batch_sizes}
                try:
                    runnable = _measure_torch(
                        args, call, model, runnable, cut if length == "real" else feeds, batch_sizes, clock, row
                    )
                except Exception as error:  # a row that fails has its reason; the next length is still tried
                    row["error"] = _error_line(error)
                say(f"pytorch {label} {mode} lengths {length}: {row.get('error', 'done')}")
        if model is not base:
            del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = False


def _measure_torch(args, call, model, runnable, batches, batch_sizes, clock: Clock, row: dict):
    """Compile (torch.compile rows: runnable None) then time every batch size; returns the runnable, compiled
    once per dtype and reused for the real-length row."""
    if runnable is None:
        runnable = torch_compiled(model, args.torch_compile)
        start = time.perf_counter()
        call(runnable, batches[batch_sizes[0]][0])
        row["compile_s"] = time.perf_counter() - start
    for size in batch_sizes:
        if clock.left() < args.reserve_s / 2:
            row["by_batch"][size] = {"skipped": "time budget"}
            continue
        if runnable is not model and args.torch_compile == "static":
            start = time.perf_counter()
            call(runnable, batches[size][0])
            row["compile_s"] = row.get("compile_s", 0.0) + time.perf_counter() - start
        output = call(runnable, batches[size][0])
        if not np.isfinite(output).all():
            raise FloatingPointError(f"non-finite probabilities at batch {size}")
        row["by_batch"][size] = measure_cycling(functools.partial(call, runnable), batches[size], size, args)
    return runnable


def torch_compiled(model, how: str):
    import torch

    return torch.compile(model, dynamic=how == "dynamic")


def _error_line(error: BaseException) -> str:
    import traceback

    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    text = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {text}" + (f" ({Path(where.filename).name}:{where.lineno})" if where else "")


def _cast(base, dtype):
    import copy

    return copy.deepcopy(base).to(dtype)


# ---- the table -----------------------------------------------------------------------------------


def table(results: list[dict], batch_sizes) -> str:
    head = ["system", "precision", "mode", "lengths", "compile s"]
    head += [f"seq/s b{size}" for size in batch_sizes] + ["b1 p50 ms"]
    lines = [head]
    for row in results:
        cells = [row["system"], row["precision"], row["mode"], row.get("lengths", "-")]
        cells.append(f"{row['compile_s']:.1f}" if "compile_s" in row else "-")
        for size in batch_sizes:
            entry = row["by_batch"].get(size, {})
            cells.append(
                f"{entry['throughput']:.1f}"
                if "throughput" in entry
                else ("skip" if entry.get("skipped") or row.get("skipped") else "err" if row.get("error") else "-")
            )
        cells.append(
            f"{row['by_batch'][1]['p50_ms']:.2f}" if 1 in row["by_batch"] and "p50_ms" in row["by_batch"][1] else "-"
        )
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    text = [" | ".join(str(cell).ljust(width) for cell, width in zip(line, widths)) for line in lines]
    text.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(text)


def ratios(results: list[dict], batch_sizes) -> list[str]:
    """bertc against each PyTorch run of the matching precision: throughput at the largest batch, batch-1 latency;
    then against the best torch.compile row of that precision (padded or real lengths) at the largest batch."""
    largest = max(batch_sizes)
    lines = []
    for ours in (row for row in results if row["system"] == "bertc" and row["precision"] in PEERS):
        mine = ours["by_batch"].get(largest, {}).get("throughput")
        my_latency = ours["by_batch"].get(1, {}).get("p50_ms")
        peers = [
            row
            for row in results
            if row["system"] == "pytorch" and row["precision"].split("+")[0] == PEERS[ours["precision"]]
        ]
        for peer in peers:
            theirs = peer["by_batch"].get(largest, {}).get("throughput")
            latency = peer["by_batch"].get(1, {}).get("p50_ms")
            parts = []
            if mine and theirs:
                parts.append(f"throughput b{largest} x{mine / theirs:.2f}")
            if my_latency and latency:
                parts.append(f"b1 latency x{my_latency / latency:.2f} (<1: bertc faster)")
            if parts:
                lines.append(
                    f"bertc {ours['precision']} vs pytorch {peer['precision']} {peer['mode']} "
                    f"lengths {peer.get('lengths', 'padded')}: " + ", ".join(parts)
                )
        compiled = [
            (peer["by_batch"][largest]["throughput"], peer)
            for peer in peers
            if peer["mode"].startswith("compile") and "throughput" in peer["by_batch"].get(largest, {})
        ]
        if mine and compiled:
            best, peer = max(compiled, key=lambda item: item[0])
            lines.append(
                f"bertc {ours['precision']} ({ours.get('lengths', 'padded')}) on the {ours.get('workload', 'padded')} "
                f"workload, b{largest}: x{mine / best:.2f} the best torch.compile ({peer['precision']} "
                f"{peer['mode']} lengths {peer.get('lengths', 'padded')}, {best:.1f} seq/s)"
            )
    return lines


def versions() -> dict:
    found = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("jax", "jaxlib", "torch", "transformers", "safetensors"):
        try:
            found[name] = __import__(name).__version__
        except Exception:
            found[name] = "absent"
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "bench" / "artifacts")
    parser.add_argument("--model", default=None, help="bundle prefix: large (default), tiny with --tiny")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--batch-sizes", default=None, help="default: every size the bundles have")
    parser.add_argument("--platform", default=None, help="PJRT platform: gpu (default), cpu with --tiny")
    parser.add_argument(
        "--tiny", action="store_true", help="the CPU check: tiny bundles, a few short calls, no torch.compile"
    )
    parser.add_argument("--seconds", type=float, default=None, help="per measurement (default 0.75; --tiny 0.05)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--min-calls", type=int, default=5)
    parser.add_argument(
        "--budget-s", type=float, default=330.0, help="the run skips what would end past this (default 330 s)"
    )
    parser.add_argument("--reserve-s", type=float, default=40.0, help="left over when a new measurement starts")
    parser.add_argument("--compile-reserve-s", type=float, default=90.0, help="left over when a torch.compile starts")
    parser.add_argument("--compile-threads", type=int, default=4, help="modules compiled at once by the PJRT client")
    parser.add_argument("--torch-compile", choices=("dynamic", "static", "off"), default=None)
    parser.add_argument(
        "--workload", choices=WORKLOADS, default=None, help="default: mrpc when every bundle has buckets, else padded"
    )
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here too")
    args = parser.parse_args(argv)
    args.model = args.model or ("tiny" if args.tiny else "large")
    args.platform = args.platform or ("cpu" if args.tiny else "gpu")
    args.seconds = args.seconds if args.seconds is not None else (0.05 if args.tiny else 0.75)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.torch_compile = args.torch_compile or ("off" if args.tiny else "dynamic")
    if args.tiny:
        args.min_calls = min(args.min_calls, 2)
    clock = Clock(args.budget_s)

    bundles = {precision: args.artifacts / f"{args.model}-{precision}" for precision in args.precisions.split(",")}
    missing = [str(path) for path in bundles.values() if not (path / "manifest.json").is_file()]
    if missing:
        raise SystemExit(
            f"no bundle at {', '.join(missing)}: make them with python bench/prepare_gpu.py --model {args.model}"
        )
    manifests = {precision: read_manifest(path) for precision, path in bundles.items()}
    available = sorted(
        set.intersection(*({module["batch_size"] for module in m["modules"]} for m in manifests.values()))
    )
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")] if args.batch_sizes else available
    bucketed = all(m.get("length") for m in manifests.values())
    args.workload = args.workload or ("mrpc" if bucketed else "padded")
    shape = next(iter(manifests.values()))["model_shape"]
    say(
        f"bench/gpu.py: {args.model} ({shape['layers']} layers, hidden {shape['hidden']}, seq {shape['seq_len']}), "
        f"batch sizes {batch_sizes}, workload {args.workload}, platform {args.platform}, "
        f"budget {args.budget_s:.0f}s; {versions()}"
    )

    results: list[dict] = []
    # NOTE: a half that breaks is reported and the other still runs: the table is printed either way.
    try:
        run_bertc(args, bundles, batch_sizes, clock, results)
    except Exception as error:
        results.append(
            {"system": "bertc", "precision": "-", "mode": "failed", "by_batch": {}, "error": _error_line(error)}
        )
        say(f"bertc half failed: {_error_line(error)}")
    torch_missing = "--no-torch" if args.no_torch else torch_available()
    if torch_missing:
        say(f"pytorch half skipped: {torch_missing}")
    else:
        try:
            run_torch(args, shape, batch_sizes, clock, results)
        except Exception as error:
            results.append(
                {"system": "pytorch", "precision": "-", "mode": "failed", "by_batch": {}, "error": _error_line(error)}
            )
            say(f"pytorch half failed: {_error_line(error)}")

    say("")
    say(table(results, batch_sizes))
    for line in ratios(results, batch_sizes):
        say(line)
    for row in results:
        if "self_check" in row:
            check = row["self_check"]
            say(
                f"check bertc {row['precision']}: max |dp| {check['max_abs_diff']:.2e} vs the TensorFlow build "
                f"(gate {check['tolerance']}): "
                f"{'ok' if check['passed'] else 'OVER THE GATE'}; "
                f"weights {'match the build' if row['weights_match_build'] else 'differ from the build'}"
            )
    for row in results:
        if row.get("error"):
            say(f"error {row['system']} {row['precision']} {row['mode']}: {row['error']}")
    say(f"total {clock.elapsed():.0f}s")
    summary = {
        "model": args.model,
        "shape": shape,
        "batch_sizes": batch_sizes,
        "workload": args.workload,
        "platform": args.platform,
        "versions": versions(),
        "results": results,
        "seconds": clock.elapsed(),
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


if __name__ == "__main__":
    main()
