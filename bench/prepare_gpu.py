"""Compile the StableHLO artifacts bench/gpu.py takes: one bundle per precision, modules + manifest, no weights.

    python bench/prepare_gpu.py                                   # BERT-Large, seq 128, fp32 mixed mixed_bf16,
                                                                  # batch 1 8 64 128, length buckets 32 64 96 128
    python bench/prepare_gpu.py --buckets none                    # the same at the full length only
    python bench/prepare_gpu.py --model tiny --batch-sizes 1,8    # the CPU-sized bundles of the tiny mode

Each precision is one `python -m bertc model=M target=stablehlo target.batch_sizes=[...] precision=P
length=buckets length.sizes=[...] bench=off verify.batches=4 target.device=cpu` in its own process
(a BERT-Large compile holds several GB), in --work; its model/stablehlo/ is then copied into
--out/<model>-<precision>/ without weights.safetensors (bench/gpu.py regenerates the weights from
the seed in the manifest), with the run's report.json as build-report.json. With buckets there is
one module per (batch size, bucket), and bench/gpu.py measures them on MRPC-like lengths; verify's
four synthetic batches reach every bucket of the default sizes. About 5 minutes per precision for
BERT-Large on 2 cores at the full length, more with buckets (each bucket is one more XLA compile
and one more module per batch size).

Verify's gates were set on 6 layers; 24 layers add error with depth (BERT-Large, these random
weights, fp16: max |dp| 5.3e-3 over the fp16 gate of 5e-3), so the deep models get the wider
VERIFY_TOLERANCE below. The manifest's reference check on the GPU uses the same figure.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PRECISIONS = ("fp32", "mixed", "mixed_bf16")
BUNDLED = ("manifest.json", "*.mlir", "*.mlirbc")
DEEP = ("base", "large")
VERIFY_TOLERANCE = {"mixed": 1e-2, "mixed_bf16": 5e-2}  # for DEEP models: see the module doc


def bundle(model_dir: Path, out: Path) -> int:
    """Copy a target=stablehlo model's modules and manifest (not its weights) into `out`; returns bytes copied."""
    model_dir = Path(model_dir)
    if not model_dir.exists() and (model_dir.parent / "rejected").exists():
        print(
            f"warning: verify rejected {model_dir.parent.name}: its parity is in build-report.json; timings still hold"
        )
        model_dir = model_dir.parent / "rejected"
    source = model_dir / "stablehlo"
    if not (source / "manifest.json").is_file():
        raise SystemExit(f"{source} holds no manifest.json: did the compile pass? See its report.md.")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    size = 0
    for pattern in BUNDLED:
        for file in sorted(source.glob(pattern)):
            shutil.copy2(file, out / file.name)
            size += file.stat().st_size
    if (model_dir.parent / "report.json").is_file():
        shutil.copy2(model_dir.parent / "report.json", out / "build-report.json")
    return size


def length_overrides(buckets: str) -> list[str]:
    """--buckets 32,64,96,128 -> bertc's length overrides; "none" -> [] (the full length only)."""
    if buckets.strip().lower() in ("", "none", "full"):
        return []
    sizes = [int(size) for size in buckets.split(",")]
    return ["length=buckets", f"length.sizes=[{','.join(map(str, sizes))}]"]


def compile_one(model: str, precision: str, batch_sizes: list[int], run_dir: Path, extra: list[str]) -> Path:
    command = [
        sys.executable,
        "-m",
        "bertc",
        f"model={model}",
        "target=stablehlo",
        f"target.batch_sizes=[{','.join(map(str, batch_sizes))}]",
        f"precision={precision}",
        "bench=off",
        "verify.batches=4",  # synthetic batches capped at S/4, S/2, 3S/4, S: every default bucket runs
        "target.device=cpu",
        f"hydra.run.dir={run_dir}",
        "overwrite=true",
        *extra,  # the work folder is this script's own: a rerun replaces its compiles
    ]
    if (
        model in DEEP
        and precision in VERIFY_TOLERANCE
        and not any(item.startswith("verify.tolerance=") for item in extra)
    ):
        command.append(f"verify.tolerance={VERIFY_TOLERANCE[precision]}")
    print("$", " ".join(command), flush=True)
    code = subprocess.run(command).returncode
    if code not in (0, 1):  # 1: verify rejected it (bundled with a warning); 2 or a crash: stop here
        raise SystemExit(f"the {precision} compile failed (exit {code}); see {run_dir}/report.md")
    return run_dir / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="large", help="a model config: large (default), base, tiny, ...")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--batch-sizes", default="1,8,64,128")
    parser.add_argument(
        "--buckets", default="32,64,96,128", help="length bucket sizes (length=buckets), or none for the full length"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "artifacts")
    parser.add_argument(
        "--work", type=Path, default=None, help="where the full compiles go (default: a temporary folder, kept)"
    )
    parser.add_argument("overrides", nargs="*", help="more bertc overrides, e.g. mask.fold_scale=true")
    args = parser.parse_args()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="bertc-gpu-prepare-"))
    total = 0
    for precision in args.precisions.split(","):
        overrides = length_overrides(args.buckets) + list(args.overrides)
        model_dir = compile_one(args.model, precision, batch_sizes, work / f"{args.model}-{precision}", overrides)
        size = bundle(model_dir, args.out / f"{args.model}-{precision}")
        total += size
        print(
            f"{args.out / f'{args.model}-{precision}'}: {size / 1e6:.1f} MB (modules + manifest; weights left out)",
            flush=True,
        )
    print(f"total {total / 1e6:.1f} MB in {args.out}; full compiles (with weights) in {work}")


if __name__ == "__main__":
    main()
