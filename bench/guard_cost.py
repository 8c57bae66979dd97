"""What the runtime input guard costs: the same plan compiled with security.guard_inputs on and off,
both measured in one process, interleaved (bertc.evaluate.bench), on the demo model (mini shape) by default.

    python bench/guard_cost.py [--model demo] [--rounds 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from rich.console import Console

from bertc.driver.cli import CONF_DIR
from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan
from bertc.evaluate.bench import benchmark
from bertc.targets.serving import ServedSavedModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="a model config: demo (mini shape), tiny, base, minilm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bertc-guard-"))
    models = {}
    for guard in ("on", "off"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(
                "config",
                overrides=[
                    f"model={args.model}",
                    "bench=off",
                    "verify=off",
                    f"security.guard_inputs={'true' if guard == 'on' else 'false'}",
                ],
            )
        assert compile_run(build_plan(cfg), work / guard, Console(file=io.StringIO())) == 0
        models[f"guard {guard}"] = ServedSavedModel(work / guard / "model")
    result = benchmark(models, (1, 8), 128, 30522, args.rounds, args.seconds, warmup=3)
    print(f"| model ({args.model}) | batch 1 p50 ms | batch 8 seq/s |\n|---|---|---|")
    for name in models:
        print(f"| {name} | {result[name]['latency_ms']['p50']:.2f} | {result[name]['throughput']['8']:.1f} |")
    on, off = result["guard on"], result["guard off"]
    print(
        f"guard cost: batch 1 p50 {on['latency_ms']['p50'] / off['latency_ms']['p50'] - 1:+.1%}, "
        f"batch 8 throughput {on['throughput']['8'] / off['throughput']['8'] - 1:+.1%}"
    )


if __name__ == "__main__":
    main()
