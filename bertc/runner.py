"""(Plan, run folder) -> the compiled model in `model/` plus report.json / report.md; the pipeline in one place.

    materialize input -> load -> refuse unsafe ops -> steps (bookkept) -> target -> save (staged)
    -> verify (gate) -> bench -> move into model/ (or rejected/) -> reports

The runner, not the passes, does the bookkeeping: op histograms before and after each step, time,
a graph check, match counts (an entry that matched nothing is an error), and errors named with
the step and the steps before it. The artifact is written beside its final place and moved into
`model/` only when complete and verified.
"""
from __future__ import annotations

import contextlib
import errno
import json
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from bertc.artifact import DIGEST_NOTE, artifact_digest
from bertc.errors import ConfigError, UserError
from bertc.plan import Plan, fingerprint, versions
from bertc.report import summary_table, write_atomic, write_reports

EXIT_USER_ERROR = 2
# The artifact digest is canonical: equal for two compiles of one plan, in one process or two (bertc/artifact.py).
ARTIFACT_FILES_NOTE = DIGEST_NOTE


class StepFailed(Exception):
    def __init__(self, step: str, before: list[str], error: Exception):
        self.step, self.before, self.error = step, before, error
        ran = f" (after {', '.join(before)})" if before else ""
        super().__init__(f"step {step}{ran} failed: {error}")


class Run:
    """One compile: holds the record that becomes report.json, and the console."""

    def __init__(self, plan: Plan, run_dir: Path, console: Console):
        self.plan, self.run_dir, self.console = plan, run_dir, console
        self.record: dict = {"status": "running", "failed_step": None, "error": None, "precision": plan.precision}
        self.stage = "start"
        self.plan_debug = False  # debug=true: print tracebacks of user errors too
        self.staging: Path | None = None  # the artifact's folder until it is complete and verified

    @contextlib.contextmanager
    def step(self, label: str, stage: str):
        self.stage = stage
        start = time.perf_counter()
        with self.console.status(f"[bold]{label}[/]..."):
            yield
        self.console.print(f"  [green]done[/] {label} [dim]({time.perf_counter() - start:.1f}s)[/]")

    def say(self, message: str) -> None:
        self.console.print(f"  [dim]{message}[/]")


def prepare(plan: Plan, log: Callable[[str], None]) -> tuple[Path, str, dict, str]:
    """Materialize the input and compute what the fingerprint needs: (path, digest, versions, fingerprint)."""
    from bertc.inputs import materialize
    from bertc.load import model_digest

    path = materialize(plan.model, log)
    digest = model_digest(path)
    # The saved functions record the building machine's device counts (and thread settings), and
    # target.device=auto resolves from them: they change the artifact, so they are in the fingerprint.
    library_versions = {**versions(), "devices": _device_counts()}
    return path, digest, library_versions, fingerprint(plan, digest, library_versions)


def _device_counts() -> str:
    import tensorflow as tf

    return ",".join(f"{kind}={len(tf.config.list_logical_devices(kind))}" for kind in ("CPU", "GPU"))


def write_plan(run_dir: Path, plan: Plan, input_path: Path, digest: str, library_versions: dict, print_: str) -> None:
    payload = {
        "fingerprint": print_,
        "input": {"path": str(input_path), "digest": digest},
        "versions": library_versions,
        "plan": plan.to_dict(),
    }
    write_atomic(run_dir / "plan.json", json.dumps(payload, indent=2) + "\n")


def compile_run(plan: Plan, run_dir: Path, console: Console, debug: bool = False) -> int:
    """Run the plan into `run_dir`; returns the exit code: 0 passed, 2 the user's input or config is at
    fault (the message says what to change), 1 the model was rejected by verify or bertc failed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run = Run(plan, run_dir, console)
    run.plan_debug = debug
    staging: Path | None = None
    try:
        _set_threads(plan)
        run.stage = "input"
        input_path, digest, library_versions, print_ = prepare(plan, run.say)
        run.record.update(fingerprint=print_, versions=library_versions, input={"path": str(input_path), "digest": digest})
        write_plan(run_dir, plan, input_path, digest, library_versions, print_)
        console.print(f"fingerprint [bold]{print_[:23]}...[/]")
        staging = _run_pipeline(run, input_path)
    except UserError as error:
        _fail(run, error, traceback.format_exc() if debug else None)
        return EXIT_USER_ERROR
    except StepFailed as failure:
        user_fault = isinstance(failure.error, UserError)
        # A pass that broke (not the user's input) keeps its traceback in report.json for the bug report.
        _fail(run, failure, traceback.format_exc() if debug or not user_fault else None)
        return EXIT_USER_ERROR if user_fault else 1
    except BaseException as error:  # a crash: still leave an honest report, then re-raise
        _fail(run, error, traceback.format_exc())
        raise
    finally:
        for leftover in (staging, run.staging):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
        _finish(run)
    return 0 if run.record["status"] == "passed" else 1


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _fail(run: Run, error: BaseException, trace: str | None = None) -> None:
    run.record.update(status="failed", failed_step=getattr(error, "step", None) or run.stage, error=str(error) or type(error).__name__)
    if trace:
        run.record["traceback"] = trace
        if run.plan_debug:
            run.console.print(trace, markup=False, highlight=False)


def _finish(run: Run) -> None:
    write_reports(run.run_dir, run.record)
    run.console.print(summary_table(run.record))
    if run.record.get("error"):
        run.console.print(f"[bold red]error[/] [dim]({run.record.get('failed_step')})[/]: {run.record['error']}")
    run.console.print(f"run folder: {run.run_dir}")


def _set_threads(plan: Plan) -> None:
    import tensorflow as tf

    if plan.target.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(plan.target.intra_op_threads)
    if plan.target.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(plan.target.inter_op_threads)


def _warn_if_bf16_is_emulated(run: Run, tf) -> None:
    from bertc.hardware import native_bf16

    uses_bf16 = any(
        rule.dtype == "bfloat16" for step in run.plan.steps if step.group == "precision" for rule in step.params.rules
    )
    on_cpu = run.plan.target.device == "cpu" or not tf.config.list_physical_devices("GPU")
    if uses_bf16 and on_cpu and native_bf16() is False:
        message = (
            "this CPU has no bf16 instructions (avx512_bf16 or amx_bf16): TensorFlow emulates bf16 "
            "matmuls, so expect mixed_bf16 to be slower than fp32 here; on this CPU try precision=fp32 "
            "target=xla mask.fold_scale=true"
        )
        run.record.setdefault("warnings", []).append(message)
        run.console.print(f"  [yellow]warning[/]: {message}")


def _run_pipeline(run: Run, input_path: Path) -> Path | None:
    import tensorflow as tf

    from bertc import targets
    from bertc.graph import check_graph, op_delta, op_histogram
    from bertc.load import load_saved_model
    from bertc.passes import REGISTRY
    from bertc.passes.partition_graph import boundaries_of

    plan = run.plan
    target_module = targets.get(plan.target.name)
    target_module.check_available(plan.target)  # before any work: a missing toolchain fails at once
    _warn_if_bf16_is_emulated(run, tf)

    with run.step(f"load {input_path.name}", "load"):
        loaded = load_saved_model(input_path, plan.allow_ops, dict(plan.model.inputs), plan.model.output)
    shape = loaded.shape
    run.record["input"]["shape"] = dict(vars(shape))
    run.record["input"]["signature"] = {"dialect": loaded.dialect, **vars(loaded.served)}  # issue 13
    run.say(f"BERT: {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads, intermediate "
            f"{shape.intermediate}, seq_len {shape.seq_len}, {shape.num_labels} labels")
    seq_len = plan.target.seq_len or shape.seq_len
    if seq_len != shape.seq_len:
        raise ConfigError(
            f"shape.seq_len={seq_len} differs from the model's exported sequence length {shape.seq_len}; "
            f"re-export with --seq-len {seq_len} (at most max_position_embeddings={shape.max_positions}) "
            "or leave shape.seq_len unset."
        )

    graph, done, steps, result = loaded.graph, [], [], None
    for step in plan.steps:
        function = REGISTRY[step.name][0]
        with run.step(step.name, step.name):
            before = op_histogram(graph.graph_def)
            start = time.perf_counter()
            try:
                result = function(graph, step.params)
                check_graph(result.graph)
            except Exception as error:
                raise StepFailed(step.name, done, error) from error
            seconds = time.perf_counter() - start
            unmatched = [entry for entry, count in result.matches.items() if count == 0]
            if unmatched:
                raise StepFailed(step.name, done, ConfigError(
                    f"{step.group} entr{'y' if len(unmatched) == 1 else 'ies'} {unmatched} matched nothing in the "
                    f"graph; remove {'it' if len(unmatched) == 1 else 'them'} or fix the pattern."
                ))
            after = op_histogram(result.graph.graph_def)
        graph = result.graph
        steps.append({
            "name": step.name, "op_delta": op_delta(before, after), "ops_before": sum(before.values()),
            "ops_after": sum(after.values()), "seconds": round(seconds, 4), "matches": dict(result.matches),
        })
        run.say(f"{sum(before.values())} -> {sum(after.values())} nodes; " + (", ".join(f"{op} {n:+d}" for op, n in op_delta(before, after).items()) or "no op change"))
        done.append(step.name)
        run.record["steps"] = steps
    run.record.setdefault("steps", steps)
    boundaries = [b.describe() for b in boundaries_of(graph)]
    for line in boundaries:
        run.say(f"boundary {line}")

    staging = run.staging = Path(tempfile.mkdtemp(prefix=".model.partial-", dir=run.run_dir))
    artifact = staging / "model"
    with run.step(f"compile for target {plan.target.name}", "compile"):
        start = time.perf_counter()
        host_device = next((step.params.host_device for step in plan.steps if step.group == "partition"), "/device:CPU:0")
        limits = {"input_ids": shape.vocab, "segment_ids": shape.type_vocab} if plan.target.guard_inputs else None
        module = target_module.compile(graph, plan.target, seq_len, host_device=host_device, precision=plan.precision, input_limits=limits)
        from bertc.targets.serving import save_compiled, warm_up

        warm_up(module, plan.target.batch_size, seq_len)
        compile_seconds = time.perf_counter() - start
        try:
            save_compiled(module, artifact)
            if hasattr(target_module, "after_save"):  # target=stablehlo: its stablehlo/ folder inside the artifact
                target_module.after_save(module, artifact, plan, run.record["fingerprint"])
        except (OSError, tf.errors.OpError) as error:
            full = getattr(error, "errno", None) == errno.ENOSPC or "space left" in str(error).lower()
            raise UserError(
                f"writing the compiled model under {run.run_dir} failed ({_first_line(error)}). "
                + ("The disk is full: free space, or " if full else "Check that the folder is writable, or ")
                + "choose another run folder with hydra.run.dir=... Nothing was left in model/."
            ) from None
        del module
    # The weights live in the saved artifact now: drop the in-memory copies before verify and bench
    # load two models (for BERT-Large that is 1.3 GB per copy).
    signature_inputs, served, dialect = loaded.signature_inputs, loaded.served, loaded.dialect
    original_outputs = {key: loaded.graph.outputs[key] for key in ("probabilities", "logits")}
    del loaded, graph, result
    run.record["target"] = {"name": plan.target.name, "device": plan.target.device, "compile_seconds": round(compile_seconds, 3), "boundaries": boundaries}
    run.record["artifact"] = {"digest": artifact_digest(artifact), "note": ARTIFACT_FILES_NOTE}

    passed = True
    original = compiled = None
    if plan.verify.enabled or plan.bench.enabled:
        from bertc.verify import CompiledModel, OriginalModel

        original = OriginalModel(input_path, signature_inputs, original_outputs, served, dialect)
        compiled = CompiledModel(artifact, served.input_names)
    if plan.verify.enabled:
        with run.step("verify against the original", "verify"):
            from bertc.verify import compare, read_glue_tsv, synthetic_batches, tokenize_pairs

            verify = plan.verify
            batches = synthetic_batches(verify.batches, verify.batch_size, seq_len, shape.vocab, verify.seed)
            if verify.dataset:
                vocab = input_path / "vocab.txt"
                if not vocab.is_file():
                    raise ConfigError(f"verify.dataset needs the model's vocab.txt, and {input_path} has none.")
                pairs = read_glue_tsv(verify.dataset, verify.max_examples)
                batches += tokenize_pairs(pairs, vocab, seq_len, verify.batch_size)
            parity = compare(original, compiled, batches, verify.precision, verify.tolerance)
        run.record["parity"] = parity
        passed = parity["passed"]
        run.say(f"max |dp| {parity['max_abs_diff']:.3g} over {parity['examples']} examples (gate {parity['tolerance']}); "
                f"argmax agreement {parity['argmax_agreement']:.4f}")
    if plan.bench.enabled:
        from bertc.bench import benchmark

        bench = plan.bench
        with run.step("benchmark original vs compiled", "bench"):
            run.record["bench"] = benchmark(
                {"original": original, "compiled": compiled}, bench.batch_sizes, seq_len, shape.vocab,
                bench.rounds, bench.seconds, bench.warmup,
            )
    del original, compiled

    final = run.run_dir / ("model" if passed else "rejected")
    if final.exists():
        shutil.rmtree(final)
    artifact.rename(final)
    run.record["artifact"]["path"] = str(final)
    run.record["status"] = "passed" if passed else "rejected"
    if not passed:
        run.record["failed_step"] = "verify"
        run.record["error"] = (
            f"parity gate failed: max |dp| {run.record['parity']['max_abs_diff']:.3g} > {run.record['parity']['tolerance']} "
            f"or {run.record['parity']['confident_disagreements']} confident disagreements; the model is in rejected/"
        )
    return staging
