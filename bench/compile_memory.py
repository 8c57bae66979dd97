"""Peak memory and time of one compile, per stage and per length bucket (`large`, xla, buckets or pack).

    python bench/compile_memory.py                                  # BERT-Large, length=buckets target=xla fp32
    python bench/compile_memory.py --size tiny                      # the smoke test (under a minute)
    python bench/compile_memory.py -- precision=mixed_bf16 partition=cpu_embed   # other overrides after --
    python bench/compile_memory.py --length pack                    # length=pack target=xla: a function per (L, T)
    python bench/compile_memory.py --size base --length trim -- target=onnxruntime   # the ONNX conversion's peak

Steps, each in its own process:
1. export `--size` (bertc.model.export presets: random weights, seed 0, seq 128, 2 labels) into --workdir, unless
   it is there already (reused with `--reuse`);
2. `python -m bertc model.path=<export> length=<--length> target=xla precision=fp32 verify=off bench=off
   hydra.run.dir=<workdir>/run overwrite=true <overrides>`, the compile measured: its peak resident set
   (`ru_maxrss` from `os.wait4`, the kernel's own high-water mark), and, sampled every 0.2 s from
   /proc/<pid>/status, the resident set while each stage the compile prints was running.

Printed: the fp32 weight bytes (the export's variables/ data), the peak and its ratio to them (the goal: under
3x), the wall time, each stage's peak RSS and time, and the compile seconds of each length bucket as the
run's report.json records them (report["length"]["compile_seconds"]: the first call of each bucket, the XLA
compile included). Everything goes to <workdir>/compile_memory.json as well.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from compare import REPO, machine_info, run_logged  # bench/ is on sys.path when this runs as a script

DEFAULT_OVERRIDES = ("target=xla", "precision=fp32", "verify=off", "bench=off")
GOAL_RATIO = 3.0


def export(size: str, out: Path, seq_len: int, reuse: bool, timeout: float) -> None:
    """bertc.model.export's preset `size` (random weights, seed 0, 2 labels) into `out`, in its own process."""
    if reuse and (out / "saved_model.pb").is_file():
        print(f"export: reusing {out}", flush=True)
        return
    if out.exists():
        raise SystemExit(f"{out} exists; pass --reuse to compile it, or remove it")
    command = [sys.executable, "-m", "bertc.model.export", "--size", size, "--out", str(out), "--seq-len", str(seq_len)]
    command += ["--num-labels", "2", "--seed", "0"]
    code, seconds, tail = run_logged(command, out.parent / "export.log", timeout)
    if code != 0:
        raise SystemExit(f"exporting {size} failed (exit {code}); see {out.parent / 'export.log'}:\n{tail}")
    print(f"export: {size} in {seconds:.0f}s", flush=True)


def weight_bytes(model: Path) -> int:
    """The fp32 weights of an export: the bytes of its checkpoint's data shards."""
    return sum(file.stat().st_size for file in (model / "variables").glob("variables.data-*"))


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class Stages:
    """The compile's printed stage lines ("done <label> (12.3s)") and RSS samples, timed from its start."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, str]] = []
        self.samples: list[tuple[float, int]] = []

    def line(self, elapsed: float, text: str) -> None:
        text = text.strip()
        if text.startswith("done "):
            self.marks.append((elapsed, text.removeprefix("done ")))

    def peaks(self) -> dict[str, int]:
        """{stage label: peak KiB while it ran}; a stage runs from the previous mark to its own."""
        result: dict[str, int] = {}
        for at, kib in self.samples:
            label = next((line.rsplit(" (", 1)[0] for end, line in self.marks if at <= end), "save and exit")
            result[label] = max(result.get(label, 0), kib)
        return result


def run_measured(command: list[str], log_file: Path, timeout: float) -> dict:
    """Run `command`; its exit code, wall seconds, peak RSS (KiB, from wait4) and per-stage RSS peaks."""
    stages = Stages()
    start = time.perf_counter()
    with open(log_file, "w") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, text=True, bufsize=1
        )
        done = threading.Event()

        def sampler() -> None:
            while not done.is_set():
                kib = rss_kib(process.pid)
                if kib is not None:
                    stages.samples.append((time.perf_counter() - start, kib))
                done.wait(0.2)

        def reader() -> None:
            for text in process.stdout:
                log.write(text)
                log.flush()
                stages.line(time.perf_counter() - start, text)

        threads = [threading.Thread(target=sampler, daemon=True), threading.Thread(target=reader, daemon=True)]
        for thread in threads:
            thread.start()
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            process.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
            done.set()
        process.returncode = os.waitstatus_to_exitcode(status)
        for thread in threads:
            thread.join(timeout=5)
    seconds = time.perf_counter() - start
    return {
        "exit_code": process.returncode,
        "timed_out": killed.is_set(),
        "seconds": round(seconds, 1),
        "peak_rss_kib": usage.ru_maxrss,  # Linux: KiB
        "stage_marks": [{"at_s": round(at, 1), "line": line} for at, line in stages.marks],
        "stage_peak_rss_kib": stages.peaks(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="large", help="tiny, mini, base, large (bertc.model.export presets)")
    parser.add_argument("--workdir", type=Path, default=None, help="default bench/out/compile_memory-<size>")
    parser.add_argument("--model", type=Path, default=None, help="an export to compile instead of exporting one")
    parser.add_argument("--reuse", action="store_true", help="reuse the export in --workdir")
    parser.add_argument("--timeout", type=float, default=5400, help="seconds for the compile (default 5400)")
    parser.add_argument("--length", default="buckets", help="the length option: buckets (default) or pack")
    parser.add_argument("overrides", nargs="*", help="bertc overrides after the defaults (after --)")
    args = parser.parse_args(argv)
    work = (args.workdir or REPO / "bench" / "out" / f"compile_memory-{args.size}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = args.model.resolve() if args.model else work / f"export-{args.size}"
    if args.model is None:
        export(args.size, model, 128, args.reuse, args.timeout)
    command = [
        sys.executable,
        "-m",
        "bertc",
        f"model.path={model}",
        f"length={args.length}",
        *DEFAULT_OVERRIDES,
        *args.overrides,
        f"hydra.run.dir={work / 'run'}",
        "overwrite=true",
    ]
    print("$", shlex.join(command), flush=True)
    measured = run_measured(command, work / "compile.log", args.timeout)
    report_file = work / "run" / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    size = weight_bytes(model)
    peak = measured["peak_rss_kib"] * 1024
    result = {
        "command": shlex.join(command),
        "machine": machine_info(),
        "load_average_after": os.getloadavg(),
        "weights_fp32_bytes": size,
        **measured,
        "peak_rss_bytes": peak,
        "peak_over_weights": round(peak / size, 2) if size else None,
        "goal_ratio": GOAL_RATIO,
        "status": report.get("status"),
        "error": report.get("error"),
        "target_compile_seconds": (report.get("target") or {}).get("compile_seconds"),
        "bucket_compile_seconds": (report.get("length") or {}).get("compile_seconds"),
        "steps_seconds": {step["name"]: step["seconds"] for step in report.get("steps", [])},
    }
    (work / "compile_memory.json").write_text(json.dumps(result, indent=1) + "\n")
    print_summary(result)
    return 0 if measured["exit_code"] == 0 and result["status"] == "passed" else 1


def print_summary(result: dict) -> None:
    gib = 1024**3
    info = result["machine"]
    print(f"machine: {info['cpu']}, {info['cores']} cores, flags {' '.join(info['flags'])}")
    print(f"status {result['status']} (exit {result['exit_code']}) in {result['seconds']:.0f}s wall")
    if result["error"]:
        print(f"error: {result['error']}")
    ratio = result["peak_over_weights"]
    verdict = "met" if ratio is not None and ratio < result["goal_ratio"] else "NOT met"
    print(
        f"fp32 weights {result['weights_fp32_bytes'] / gib:.2f} GiB; peak RSS {result['peak_rss_bytes'] / gib:.2f} GiB "
        f"= {ratio}x the weights (goal < {result['goal_ratio']}x: {verdict})"
    )
    print("peak RSS while each stage ran (sampled every 0.2 s; the first stage includes importing TensorFlow):")
    for stage, kib in result["stage_peak_rss_kib"].items():
        print(f"  {kib / 1024**2:6.2f} GiB  {stage}")
    for mark in result["stage_marks"]:
        print(f"  {mark['at_s']:7.1f}s  {mark['line']}")
    print(f"compile for the target (lowering + warm-up of every bucket): {result['target_compile_seconds']} s")
    buckets = result["bucket_compile_seconds"] or {}
    for bucket, seconds in buckets.items():  # length=pack: "LxT", a function per (L bucket, T bucket)
        print(f"  bucket {bucket:>8}: {seconds:8.1f} s (its first call, the XLA compile included)")
    if buckets:
        values = sorted(buckets.values())
        print(
            f"  {len(values)} compiled functions: {sum(values):.1f} s in all, median {values[len(values) // 2]:.1f} s, "
            f"max {values[-1]:.1f} s"
        )
    for name, seconds in result["steps_seconds"].items():
        print(f"  step {name}: {seconds} s")


if __name__ == "__main__":
    raise SystemExit(main())
