"""Where the time of one length bucket goes: every bucket timed, then one profiled op by op.

    python bench/profile_bucket.py                        # BERT-Base, fp32_xla_buckets, batch 8: the slowest bucket
    python bench/profile_bucket.py --bucket 96 --top 30   # a given bucket
    python bench/profile_bucket.py --size tiny --calls 3  # the smoke test (about a minute)

Steps:
1. export `--size` (random weights, seed 0, seq 128) and compile `--candidate` (a bench/compare.py preset,
   default fp32_xla_buckets: `precision=fp32 mask.fold_scale=true target=xla length=buckets`), each in its own
   process, into --workdir (`--reuse` keeps what is there);
2. load the compiled model in this process with XLA's HLO dump on (`XLA_FLAGS=--xla_dump_to=...`), and run
   one batch of `--batch` rows per bucket (the longest row the bucket's size, the others longer than the next
   smaller bucket): its first call compiles that bucket's function (its optimized HLO lands in the dump);
   `--calls` timed calls then give the bucket's ms per call and its matmul rate (useful FLOPs at the
   bucket's width over the time);
3. profile the chosen bucket (default: the lowest matmul rate, the slowest for its work) with TensorFlow's
   profiler (`tf.profiler.experimental`): XLA's CPU runtime records each thunk (one fused kernel or one
   dot) under its HLO instruction name, which the dump maps to its op and its TensorFlow op name. Thunks
   that XLA runs at once on several threads (the Q, K and V dots) each count their own duration, so their
   sum passes the wall time by that overlap. TensorFlow's fp32 matmul rate is measured after, for scale.

Printed: per bucket, ms per call, sequences/s and GFLOP/s; then, for the profiled bucket, time by category
(the projections, FFN, attention matmuls, GELU, LayerNorm, softmax, transposes, ...) and the `--top`
instructions by time. Written to <workdir>/profile.json too.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

from compare import PRESETS, REPO, compile_candidate, log, machine_info, matmul_rate, useful_flops
from compile_memory import export

from bertc.evaluate.bench import timed_calls

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+) .*\{\s*$")
_OP_TYPE = re.compile(r'op_type="([^"]*)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([\w.\-]+)")


# ---- the optimized HLO: instruction name -> what it computes ---------------------------------------------


def read_hlo(path: Path) -> dict[str, dict]:
    """{instruction name: {opcode, op_type, op_name, ops}} of an `*after_optimizations.txt` dump; `ops` is the
    set of opcodes it runs (a fusion's: those of its fused computation)."""
    computations: dict[str, list[dict]] = collections.defaultdict(list)
    current = None
    for line in path.read_text().splitlines():
        header = _COMPUTATION.match(line)
        if header and " = " not in line.split("{")[0]:
            current = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match or current is None:
            continue
        name, _, opcode = match.groups()
        op_type, op_name, calls = (pattern.search(line) for pattern in (_OP_TYPE, _OP_NAME, _CALLS))
        computations[current].append(
            {
                "name": name,
                "opcode": opcode,
                "op_type": op_type.group(1) if op_type else "",
                "op_name": re.sub(r"^(?:\w*PartitionedCall/)+", "", op_name.group(1)) if op_name else "",
                "calls": calls.group(1) if calls else None,
            }
        )
    result = {}
    for entries in computations.values():
        for entry in entries:
            inner = computations.get(entry["calls"], []) if entry["calls"] else []
            result[entry["name"]] = {
                **entry,
                "ops": sorted({entry["opcode"], *(item["opcode"] for item in inner)}),
                "inner_names": sorted({item["op_name"] for item in inner if item["op_name"]}),
            }
    return result


CATEGORIES = (
    # (category, test on (op_name, op_type, ops)); the first that matches
    (
        "attention matmuls (scores, context)",
        lambda n, t, o: "dot" in o and "attention/self" in n and "BatchMatMul" in t,
    ),
    ("QKV projections", lambda n, t, o: "dot" in o and re.search(r"attention/self/(query|key|value)", n)),
    ("attention output projection", lambda n, t, o: "dot" in o and "attention/output/dense" in n),
    ("FFN in (intermediate)", lambda n, t, o: "dot" in o and "intermediate/dense" in n),
    ("FFN out", lambda n, t, o: "dot" in o and re.search(r"layer_\d+/output/dense", n)),
    ("other matmuls (pooler, classifier)", lambda n, t, o: "dot" in o),
    ("GELU (elementwise)", lambda n, t, o: "intermediate" in n),
    ("LayerNorm", lambda n, t, o: "LayerNorm" in n),
    ("softmax", lambda n, t, o: "attention/self" in n and ("exponential" in o or "Softmax" in n or "Exp" in t)),
    ("mask bias", lambda n, t, o: "attention/self/add" in n or "attention_bias" in n or "mask" in n.lower()),
    ("transposes and copies", lambda n, t, o: set(o) <= {"transpose", "copy", "bitcast", "fusion", "parameter"}),
    ("embeddings", lambda n, t, o: "embeddings" in n or "gather" in o),
)


def category(info: dict) -> str:
    names = " ".join([info["op_name"], *info["inner_names"]])
    for label, test in CATEGORIES:
        if test(names, info["op_type"], info["ops"]):
            return label
    return "other"


# ---- measuring ---------------------------------------------------------------------------------------


def bucket_feeds(sizes: list[int], batch: int, vocab: int, seed: int) -> dict[int, dict]:
    """Per bucket, a batch whose longest row is the bucket's size and whose other rows fit no smaller bucket."""
    import numpy as np

    from bertc.evaluate.lengths import synthetic_feeds

    rng = np.random.default_rng(seed)
    result = {}
    for index, size in enumerate(sizes):
        lengths = rng.integers(sizes[index - 1] + 1 if index else 1, size + 1, batch)
        lengths[0] = size
        result[size] = synthetic_feeds(lengths, sizes[-1], vocab, seed + index)
    return result


def new_dumps(folder: Path, before: set[str]) -> list[Path]:
    return sorted(path for path in folder.glob("*after_optimizations.txt") if path.name not in before)


def time_buckets(serve, feeds: dict[int, dict], calls: int, dump: Path) -> dict[int, dict]:
    """Per bucket: its first call (the compile), then `calls` timed calls; and the HLO dump its compile wrote."""
    import tensorflow as tf

    result = {}
    for size, batch in feeds.items():
        tensors = {key: tf.constant(value) for key, value in batch.items()}
        before = {path.name for path in dump.glob("*")}
        start = time.perf_counter()
        serve(**tensors)
        first = time.perf_counter() - start
        serve(**tensors)
        seconds = timed_calls(lambda feeds: serve(**feeds), [tensors], 0.0, min_calls=calls)
        dumps = new_dumps(dump, before)
        result[size] = {"first_call_s": round(first, 3), "ms": statistics.median(seconds) * 1e3, "dumps": dumps}
    return result


def profile(serve, feeds: dict, calls: int, logdir: Path) -> dict[str, float]:
    """TensorFlow's profiler over `calls` calls -> {event name: total picoseconds} on the host CPU plane."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tensors = {key: tf.constant(value) for key, value in feeds.items()}
    shutil.rmtree(logdir, ignore_errors=True)
    tf.profiler.experimental.start(str(logdir))
    start = time.perf_counter()
    for _ in range(calls):
        serve(**tensors)
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    space.ParseFromString(next(logdir.rglob("*.xplane.pb")).read_bytes())
    totals: dict[str, float] = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {key: value.name for key, value in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                totals[names.get(event.metadata_id, "?")] += event.duration_ps
    return {**totals, "wall (profiled calls)": wall * 1e12}


def breakdown(totals: dict[str, float], hlo: dict[str, dict], calls: int, top: int) -> dict:
    """The profile's XLA thunks (events named as HLO instructions), by category and by instruction, ms per call."""
    thunks = {name: ps / calls / 1e9 for name, ps in totals.items() if name in hlo}
    whole = sum(thunks.values())
    by_category: dict[str, float] = collections.Counter()
    for name, ms in thunks.items():
        by_category[category(hlo[name])] += ms
    rows = sorted(thunks.items(), key=lambda item: -item[1])[:top]
    return {
        "thunk_ms_per_call": whole,
        "xla_execute_ms_per_call": totals.get("ThunkExecutor::Execute", 0) / calls / 1e9,
        "wall_ms_per_call": totals["wall (profiled calls)"] / calls / 1e9,
        "by_category": {label: ms for label, ms in sorted(by_category.items(), key=lambda item: -item[1])},
        "top": [
            {
                "instruction": name,
                "ms": ms,
                "category": category(hlo[name]),
                "ops": hlo[name]["ops"],
                "op_type": hlo[name]["op_type"],
                "op_name": hlo[name]["op_name"].split(";")[0],
            }
            for name, ms in rows
        ],
    }


def measure(model: Path, config: dict, args, dump: Path) -> dict:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model))
    serve = loaded.signatures["serving_default"]
    report = json.loads((model.parent / "report.json").read_text())
    sizes = report["length"]["buckets"]
    feeds = bucket_feeds(sizes, args.batch, config["vocab_size"], seed=0)
    timed = time_buckets(serve, feeds, args.calls, dump)
    for size, entry in timed.items():
        entry["seq_per_s"] = args.batch / entry["ms"] * 1e3
        entry["gflop_s"] = args.batch * useful_flops(config, size) / entry["ms"] / 1e6
    chosen = args.bucket or min(timed, key=lambda size: timed[size]["gflop_s"])
    if chosen not in timed:
        raise SystemExit(f"--bucket {chosen} is not one of the model's buckets {sizes}")
    dumps = timed[chosen]["dumps"]
    if not dumps:
        raise SystemExit(f"bucket {chosen}: its compile wrote no HLO dump into {dump}; is XLA_FLAGS overridden?")
    hlo = {}
    for path in dumps:
        hlo.update(read_hlo(path))
    totals = profile(serve, feeds[chosen], args.profile_calls, args.workdir / "trace")
    result = breakdown(totals, hlo, args.profile_calls, args.top)
    result["matmul_rate_gflop_s"] = matmul_rate()  # TensorFlow's own fp32 matmul, [1024,768] x [768,3072]
    buckets = {
        str(size): {key: value for key, value in entry.items() if key != "dumps"} for size, entry in timed.items()
    }
    return {"buckets": buckets, "profiled_bucket": chosen, "hlo_dumps": [str(path) for path in dumps], **result}


def print_result(result: dict, batch: int) -> None:
    print(f"\nper bucket, batch {batch} (median of the timed calls):")
    print("| bucket | first call s (compile) | ms/call | seq/s | GFLOP/s (useful, at the bucket's width) |")
    print("|---:|---:|---:|---:|---:|")
    for size, entry in result["buckets"].items():
        print(
            f"| {size} | {entry['first_call_s']:.1f} | {entry['ms']:.1f} | {entry['seq_per_s']:.2f} | "
            f"{entry['gflop_s']:.1f} |"
        )
    print(f"TensorFlow's fp32 matmul rate here ([1024,768] x [768,3072]): {result['matmul_rate_gflop_s']:.1f} GFLOP/s")
    whole = result["thunk_ms_per_call"]
    print(
        f"\nbucket {result['profiled_bucket']}: {result['wall_ms_per_call']:.1f} ms per call under the profiler; "
        f"XLA's thunks sum to {whole:.1f} ms per call (thunks that run at once on several threads each count, "
        "so the sum can pass the wall time); shares below are of that sum"
    )
    print("| category | ms/call | share |\n|---|---:|---:|")
    for label, ms in result["by_category"].items():
        print(f"| {label} | {ms:.2f} | {ms / whole:.1%} |")
    print("\n| instruction | ms/call | share | category | ops | TensorFlow op |\n|---|---:|---:|---|---|---|")
    for row in result["top"]:
        print(
            f"| {row['instruction']} | {row['ms']:.2f} | {row['ms'] / whole:.1%} | {row['category']} | "
            f"{','.join(row['ops'])} | {row['op_type']} {row['op_name']} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", help="tiny, mini, base, large (bertc.model.export presets)")
    parser.add_argument("--candidate", default="fp32_xla_buckets", help=f"a preset: {', '.join(PRESETS)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bucket", type=int, default=None, help="the bucket to profile (default: the slowest)")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per bucket")
    parser.add_argument("--profile-calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--workdir", type=Path, default=None, help="default bench/out/profile-<size>")
    parser.add_argument("--reuse", action="store_true", help="reuse the export and compile in --workdir")
    args = parser.parse_args(argv)
    args.workdir = (args.workdir or REPO / "bench" / "out" / f"profile-{args.size}").resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / "export"
    export(args.size, model, 128, args.reuse, 3600)
    built = compile_candidate(args.candidate, PRESETS[args.candidate], model, args.workdir / "runs", args.reuse, 3600)
    if built["status"] == "failed":
        raise SystemExit(built["error"])
    dump = args.workdir / "hlo"
    shutil.rmtree(dump, ignore_errors=True)
    # NOTE: before TensorFlow is imported (the compile above ran in its own process, without it).
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump} --xla_dump_hlo_as_text".strip()
    config = json.loads((model / "bert_config.json").read_text())
    log(f"measuring {built['path']} ({PRESETS[args.candidate]}), batch {args.batch}")
    result = measure(Path(built["path"]), config, args, dump)
    result.update(
        {
            "candidate": args.candidate,
            "overrides": PRESETS[args.candidate],
            "size": args.size,
            "batch": args.batch,
            "machine": machine_info(),
            "load_average": os.getloadavg(),
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        }
    )
    (args.workdir / "profile.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print_result(result, args.batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
