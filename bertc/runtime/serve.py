"""`python -m bertc.runtime.serve MODEL_DIR`: a target=stablehlo artifact on a PJRT device, without TensorFlow.

    python -m bertc.runtime.serve outputs/.../model --check               # the manifest's reference batch,
                                                                          # vs the TF build
    python -m bertc.runtime.serve outputs/.../model --inputs batch.npz --out out.npz --platform gpu
    python -m bertc.runtime.serve bench/artifacts/large-fp32 --regenerate --check  # no weights: remake them

--inputs is an .npz with int32 input_ids, input_mask, segment_ids [batch, seq_len]; --out gets
probabilities and logits. Exit codes: 0 done (and --check passed), 1 --check over the gate, 2 a bad
artifact or input.
"""

from __future__ import annotations

import argparse
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from bertc.errors import UserError
from bertc.runtime.stablehlo import SERVING_INPUTS, Runtime, load_manifest, regenerate_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertc.runtime.serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "model", type=Path, help="the model/ folder of a target=stablehlo run, or its stablehlo/ folder"
    )
    parser.add_argument(
        "--platform", default=None, help="cpu, gpu, tpu or a PJRT plugin's name (default: JAX's default)"
    )
    parser.add_argument("--device", type=int, default=0, help="which device of the platform")
    parser.add_argument("--check", action="store_true", help="run the manifest's reference batch and compare")
    parser.add_argument("--inputs", type=Path, help=".npz with " + ", ".join(SERVING_INPUTS))
    parser.add_argument("--out", type=Path, help=".npz to write probabilities and logits to")
    parser.add_argument(
        "--regenerate", action="store_true", help="remake the weights from the manifest's seed instead of reading them"
    )
    args = parser.parse_args(argv)
    try:
        weights = None
        if args.regenerate:
            weights, differ = regenerate_weights(load_manifest(args.model))
            if differ:
                print(
                    f"warning: {len(differ)} regenerated weight(s) differ from the build's digests "
                    f"(first {differ[0]}); "
                    "parity against the reference is void",
                    file=sys.stderr,
                )
        runtime = Runtime(args.model, platform=args.platform, device_index=args.device, weights=weights)
        buckets = f"length buckets {runtime.widths}, " if runtime.bucketed else ""
        print(
            f"{runtime.folder}: batch sizes {runtime.batch_sizes}, {buckets}seq_len {runtime.seq_len}, "
            f"on {runtime.platform} ({runtime.device})"
        )
        code = 0
        if args.check:
            code = 0 if print_check(runtime) else 1
        if args.inputs:
            feeds = read_inputs(args.inputs)
            start = time.perf_counter()
            outputs = runtime(feeds)
            print(
                f"{len(outputs['probabilities'])} examples in {time.perf_counter() - start:.3f}s (first call compiles)"
            )
            if args.out:
                np.savez(args.out, **outputs)  # type: ignore[arg-type]  # numpy's stub: ** may fill allow_pickle (bool)
            else:
                print(np.array2string(outputs["probabilities"], precision=4, threshold=40))
        return code
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def print_check(runtime: Runtime) -> bool:
    """--check: the reference batches against the TensorFlow build's outputs, and (buckets) the widths they ran."""
    check = runtime.self_check()
    ran = ""
    if runtime.bucketed:
        ran = f", at widths {check['widths']}"
        for entry in check["width_disagreements"]:
            print(
                f"check: a reference batch ran at width {entry['ours']}, "
                f"the TensorFlow build ran it at {entry['tensorflow']}"
            )
    print(
        f"check: max |dp| {check['max_abs_diff']:.3g} over {check['examples']} examples{ran} "
        "against the TensorFlow build "
        f"(gate {check['tolerance']}): {'passed' if check['passed'] else 'FAILED'}"
    )
    return check["passed"]


def read_inputs(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in SERVING_INPUTS if name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError) as error:
        names = ", ".join(SERVING_INPUTS)
        raise UserError(f"--inputs {path} cannot be read as an .npz of {names} ({error}).") from None


if __name__ == "__main__":
    raise SystemExit(main())
