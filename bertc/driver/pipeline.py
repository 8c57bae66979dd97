"""(Plan, run folder) -> the compiled model in `model/` (or `rejected/`) plus report.json / report.md.

The pipeline is `run_pipeline`: one named stage per line, each a function whose arguments and result
say what flows between stages. `Run` records (report, console); the stages do the work; `compile_run`
maps what went wrong to an exit code and always leaves a report. The runner, not the passes, does the
bookkeeping of each step: op histograms before and after, time, a graph check, match counts (an entry
that matched nothing is an error), the pass's `requires` before it and its `ensures` after it, and
errors named with the step and the steps before it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import functools
import json
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from bertc.driver.plan import Plan, fingerprint, versions
from bertc.driver.terminal import dim, escape, op_change_summary, print_wrapped
from bertc.errors import ConfigError, UserError, first_line
from bertc.passes.length.modes import length_record, record_lengths_ran
from bertc.run.artifact import DIGEST_NOTE, artifact_digest
from bertc.run.faults import (
    Interrupted,
    as_interrupted,
    interrupted_line,
    mark_recorded,
    received_interruption,
    signals_raise,
)
from bertc.run.report import gate_failure, gate_rule, summary_table, write_atomic, write_reports
from bertc.run.rundir import claim_run_folder

EXIT_USER_ERROR = 2


class StepFailed(Exception):
    def __init__(self, step: str, before: list[str], error: Exception):
        self.step, self.before, self.error = step, before, error
        ran = f" (after {', '.join(before)})" if before else ""
        super().__init__(f"step {step}{ran} failed: {error}")


class BrokenPromise(Exception):
    """A pass's `ensures` does not hold after it ran: a bug in bertc, not in the user's model."""


class Run:
    """One compile's record (what becomes report.json) and its console; the stages write into it."""

    def __init__(self, plan: Plan, run_dir: Path, console: Console, debug: bool = False):
        self.plan, self.run_dir, self.console, self.debug = plan, run_dir, console, debug
        self.record: dict = {"status": "running", "failed_step": None, "error": None, "precision": plan.precision}
        self.stage = "start"
        self.staging: Path | None = None  # the artifact's folder until it is complete and verified
        self.interruption: Interrupted | None = None  # SIGINT/SIGTERM (bertc/run/faults.py)

    @contextlib.contextmanager
    def step(self, label: str, stage: str) -> Iterator[None]:
        self.stage = stage
        start = time.perf_counter()
        with self.console.status(f"[bold]{escape(label)}[/]..."):
            yield
        self.console.print(f"  [green]done[/] {escape(label)} [dim]({time.perf_counter() - start:.1f}s)[/]")

    def say(self, message: str) -> None:
        self.console.print(dim(message))

    def warn(self, message: str) -> None:
        self.record.setdefault("warnings", []).append(message)
        self.console.print(f"  [yellow]warning[/]: {escape(message)}")


@dataclasses.dataclass(frozen=True)
class Source:
    """The input as a SavedModel folder, and what the fingerprint is made of."""

    path: Path
    digest: str
    versions: dict
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class Original:
    """What verify and bench need of the original model, without its weights."""

    path: Path
    signature_inputs: dict[str, str]
    outputs: dict[str, str]
    seq_len: int
    vocab: int
    served: Any = None  # the user's input names and output (bertc.frontends.signature.ServedSignature)
    dialect: str = "tf1"  # the frontend that read it (bertc.frontends), which says how verify calls the original


def run_pipeline(run: Run) -> None:
    plan = run.plan
    set_threads(plan)
    source = materialize(run, plan)
    target = check_target(run, plan)  # NOTE: before any work: a missing toolchain fails at once
    loaded = load(run, plan, source)
    original = Original(
        source.path,
        loaded.signature_inputs,
        {key: loaded.graph.outputs[key] for key in ("probabilities", "logits")},
        loaded.shape.seq_len,
        loaded.shape.vocab,
        loaded.served,
        loaded.dialect,
    )
    options = target_options(plan, loaded.shape, source.fingerprint)
    rewritten = [rewrite(run, plan, loaded.graph)]
    del loaded  # NOTE: from here only the rewritten graph holds weights (BERT-Large: 1.3 GB a copy)
    artifact = lower(run, target, rewritten, options)  # NOTE: handed over in a list: lower frees it, see there
    path = save(run, artifact)  # NOTE: lets go of the artifact's weights: verify and bench load two models next
    models = open_models(plan, original, artifact, path)
    passed = False
    if check_speed(run, plan, original, models):  # NOTE: first: a model that crawls is rejected, not left to run
        passed = verify(run, plan, original, models)
        bench(run, plan, original, models)
    del models
    publish(run, artifact, path, passed)


def set_threads(plan: Plan) -> None:
    import tensorflow as tf

    if plan.target.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(plan.target.intra_op_threads)
    if plan.target.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(plan.target.inter_op_threads)


def prepare(plan: Plan, log: Callable[[str], None]) -> Source:
    """Materialize the input and compute what the fingerprint needs."""
    from bertc.driver.materialize import materialize as materialize_input
    from bertc.frontends.load import model_digest

    path = materialize_input(plan.model, log)
    digest = model_digest(path)
    # The saved functions record the building machine's device counts (and thread settings), and
    # target.device=auto resolves from them: they change the artifact, so they are in the fingerprint.
    from bertc import targets

    engine = targets.get(plan.target.name).engine_versions(plan.quantize)
    library_versions = {**versions(), **engine, "devices": _device_counts()}
    return Source(path, digest, library_versions, fingerprint(plan, digest, library_versions))


def _device_counts() -> str:
    import tensorflow as tf

    return ",".join(f"{kind}={len(tf.config.list_logical_devices(kind))}" for kind in ("CPU", "GPU"))


def write_plan(run_dir: Path, plan: Plan, source: Source) -> None:
    payload = {
        "fingerprint": source.fingerprint,
        "input": {"path": str(source.path), "digest": source.digest},
        "versions": source.versions,
        "plan": plan.to_dict(),
    }
    write_atomic(run_dir / "plan.json", json.dumps(payload, indent=2) + "\n")


def materialize(run: Run, plan: Plan) -> Source:
    run.stage = "input"
    source = prepare(plan, run.say)
    run.record.update(
        fingerprint=source.fingerprint,
        versions=source.versions,
        input={"path": str(source.path), "digest": source.digest},
    )
    write_plan(run.run_dir, plan, source)
    run.console.print(f"fingerprint [bold]{source.fingerprint[:23]}...[/]")
    return source


def check_target(run: Run, plan: Plan):
    from bertc import targets
    from bertc.targets.base import TargetOptions

    run.stage = "target"
    target = targets.get(plan.target.name)
    options = TargetOptions(
        plan.target.name,
        plan.target.device,
        plan.shape.batch_size,
        0,
        compute_dtype=plan.compute_dtype,
        length_mode=plan.length_mode,
        quantize=plan.quantize,
        params=plan.target.params,
    )
    if plan.quantize and not target.quantizes:
        raise ConfigError(
            f"precision={plan.precision} computes matmuls in {plan.quantize}, which target={plan.target.name} cannot "
            f"run: the engine targets quantize ({', '.join(targets.quantizing())}). Choose one of them, or a float "
            "precision (fp32, mixed, mixed_bf16) for this target."
        )
    target.check_available(options)
    if plan.compute_dtype != "float32" and target.probe_runtime is not None and target.serves_on_cpu(options):
        check_precision_pays(run, plan, target.probe_runtime)
    return target


def check_precision_pays(run: Run, plan: Plan, runtime: str) -> None:
    """Before compiling: the probe's rates per dtype in the runtime that will serve (cached per machine); a
    warning that cites them when the plan's compute dtype runs no faster than float32 here."""
    from bertc.driver.hardware import precision_advice, probe

    measured = probe(runtime, run.say)
    run.record["hardware"] = measured.to_dict()
    advice = precision_advice(plan.compute_dtype, measured, plan.precision)
    if advice:
        run.warn(advice)


def load(run: Run, plan: Plan, source: Source):
    from bertc.frontends.load import load_saved_model

    with run.step(f"load {source.path.name}", "load"):
        loaded = load_saved_model(source.path, plan.allow_ops, plan.model.named_inputs, plan.model.output)
    shape = loaded.shape
    assert loaded.served is not None  # load_saved_model always reads the signature it serves
    run.record["input"]["shape"] = dict(vars(shape))
    run.record["input"]["signature"] = {
        "dialect": loaded.dialect,
        **vars(loaded.served),
        "inputs": list(loaded.signature_inputs),  # the user's signature, as exported
        "outputs": list(loaded.served.signature_outputs),
    }
    roles, unread = input_roles(loaded.graph)
    run.record["input"]["roles"] = dict(sorted(collections.Counter(roles.values()).items()))
    if unread:  # a graph the analysis cannot read: the steps that need roles say so themselves
        run.say(f"roles not found: {unread}")
    run.say(
        f"BERT: {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads, intermediate "
        f"{shape.intermediate}, seq_len {shape.seq_len}, {shape.num_labels} labels"
    )
    if plan.shape.seq_len is not None and plan.shape.seq_len != shape.seq_len:
        raise ConfigError(
            f"shape.seq_len={plan.shape.seq_len} differs from the model's exported sequence length {shape.seq_len}; "
            f"re-export with --seq-len {plan.shape.seq_len} (at most max_position_embeddings={shape.max_positions}) "
            "or leave shape.seq_len unset."
        )
    from bertc.driver.limits import check_before_running

    # inputs, memory, static cost, heavy work outside the roles
    run.record["input"]["bounds"] = check_before_running(plan, loaded, roles, unread)
    return loaded


def input_roles(graph) -> tuple[dict[str, str], str]:
    """(node -> role, bertc/analysis/structure.py; why none were found, or ""): found once, for the report and the
    checks."""
    from bertc.analysis.structure import node_roles

    try:
        return node_roles(graph), ""
    except UserError as error:
        return {}, first_line(error)


def target_options(plan: Plan, shape, fingerprint_: str):
    """What the target needs to know, derived once from the plan and the model's shape."""
    from bertc.evaluate.verify import GATES
    from bertc.targets.base import TargetOptions

    return TargetOptions(
        name=plan.target.name,
        device=plan.target.device,
        batch_size=plan.shape.batch_size,
        seq_len=shape.seq_len,
        host_device=plan.facts["host_device"],
        compute_dtype=plan.compute_dtype,
        scale_folded=plan.facts["scale_folded"],
        input_limits={"input_ids": shape.vocab, "segment_ids": shape.type_vocab}
        if plan.security.guard_inputs
        else None,
        precision=plan.precision,
        gate_tolerance=plan.verify.tolerance or GATES.get(plan.gate, 1.0),  # int8: gated on agreement, not |dp|
        fingerprint=fingerprint_,
        seeded_preset=(plan.model.size, plan.model.seed) if plan.model.kind == "preset" else None,
        model_shape=dict(vars(shape)),
        keep_signature=plan.keep_signature,
        length_mode=plan.length_mode,
        quantize=plan.quantize,
        params=plan.target.params,
    )


def rewrite(run: Run, plan: Plan, graph):
    """The plan's steps in order, each bookkept; the graph after the last."""
    from bertc.passes.partition.contract import boundaries_of

    done: list[str] = []
    run.record["steps"] = []
    for step in plan.steps:
        with run.step(step.name, step.name):
            graph, entry = run_step(step, graph, done)
        run.record["steps"].append(entry)
        run.say(f"{entry['ops_before']} -> {entry['ops_after']} nodes; {op_change_summary(entry['op_delta'])}")
        done.append(step.name)
    run.record["boundaries"] = [boundary.describe() for boundary in boundaries_of(graph)]
    for line in run.record["boundaries"]:
        run.say(f"boundary {line}")
    return graph


def run_step(step, graph, done: list[str]) -> tuple[Any, dict]:
    """One pass with its bookkeeping: requires, the pass, a graph check, ensures, match counts, op delta."""
    from bertc import passes
    from bertc.ir.graph import check_graph, op_delta, op_histogram

    spec = passes.get(step.name)
    before = op_histogram(graph.graph_def)
    start = time.perf_counter()
    try:
        for condition in spec.requires:
            problem = condition.check(graph, step.params)
            if problem:
                raise ConfigError(f"{step.name} requires {condition.description}: {problem}.")
        result = spec.run(graph, step.params)
        check_graph(result.graph)
    except Exception as error:
        raise StepFailed(step.name, done, error) from error
    seconds = time.perf_counter() - start
    for condition in spec.ensures:
        problem = condition.check(result.graph, step.params)
        if problem:
            raise StepFailed(
                step.name,
                done,
                BrokenPromise(
                    f"{step.name} promised that {condition.description}, and it does not hold: {problem}. "
                    "This is a bug in bertc: please report it with this run folder."
                ),
            )
    unmatched = result.unmatched()
    if unmatched:
        one = len(unmatched) == 1
        raise StepFailed(
            step.name,
            done,
            ConfigError(
                f"{step.group} entr{'y' if one else 'ies'} {unmatched} matched nothing in the "
                f"graph; remove {'it' if one else 'them'} or fix the pattern."
            ),
        )
    after = op_histogram(result.graph.graph_def)
    return result.graph, {
        "name": step.name,
        "op_delta": op_delta(before, after),
        "ops_before": sum(before.values()),
        "ops_after": sum(after.values()),
        "seconds": round(seconds, 4),
        "matches": dict(result.matches),
        **dict(result.details),
    }


def lower(run: Run, target, rewritten: list, options):
    """The target's artifact for the rewritten graph, taken out of `rewritten`: once the artifact holds the
    weights, nothing holds the graph's arrays, so XLA compiles beside one copy of them, not two."""
    from bertc.driver.limits import run_with_limit

    with run.step(f"compile for target {options.name}", "compile"):
        start = time.perf_counter()
        artifact = target.lower(rewritten.pop(), options)
        # length=trim|buckets: {bucket: seconds of its first call}, the XLA compile included
        warmed = run_with_limit(
            functools.partial(artifact.warm_up, options.batch_size, options.seq_len),
            run.plan.limits.compile_s,
            "target.timeout_s",
            "the warm-up",
        )
        seconds = time.perf_counter() - start
    run.record.update(length_record(run.plan, warmed))  # the length step: {"length": {mode, buckets, ...}}
    run.record["target"] = {
        "name": options.name,
        "device": options.device,
        "compile_seconds": round(seconds, 3),
        "boundaries": run.record.pop("boundaries", []),
    }
    return artifact


def save(run: Run, artifact) -> Path:
    """The artifact's files in a staging folder beside model/: moved into place only once verified. Saving lets
    go of the artifact's weights in memory (verify and bench load two models next)."""
    run.staging = Path(tempfile.mkdtemp(prefix=".model.partial-", dir=run.run_dir))
    path = run.staging / "model"
    run.stage = "compile"
    try:
        artifact.save(path)
    except _write_errors() as error:
        full = getattr(error, "errno", None) == errno.ENOSPC or "space left" in str(error).lower()
        raise UserError(
            f"writing the compiled model under {run.run_dir} failed ({first_line(error)}). "
            + ("The disk is full: free space, or " if full else "Check that the folder is writable, or ")
            + "choose another run folder with hydra.run.dir=... Nothing was left in model/."
        ) from None
    run.record["artifact"] = {"digest": artifact_digest(path), "note": DIGEST_NOTE}
    return path


def _write_errors() -> tuple[type[BaseException], ...]:
    """What a failed write raises: an OSError, or TensorFlow's own error for a SavedModel's files."""
    import tensorflow as tf

    return (OSError, tf.errors.OpError)


def open_models(plan: Plan, original: Original, artifact, path: Path) -> dict | None:
    """The original (TensorFlow's own loading of the user's folder) and the compiled model (the artifact's saved
    files through its engine's runtime), for verify and bench. Loading the original runs the restore and init
    ops that passed the loader-path check; both under the verify time limit."""
    if not (plan.verify.enabled or plan.bench.enabled):
        return None
    from bertc.driver.limits import run_with_limit
    from bertc.evaluate.verify import OriginalModel

    limit, key = (
        (plan.limits.verify_s, "verify.timeout_s") if plan.verify.enabled else (plan.limits.bench_s, "bench.timeout_s")
    )

    def load_both() -> dict:
        loaded = OriginalModel(
            original.path, original.signature_inputs, original.outputs, original.served, original.dialect
        )
        return {"original": loaded, "compiled": artifact.open(path, original.served)}

    return run_with_limit(load_both, limit, key, "loading the original and compiled models")


def check_speed(run: Run, plan: Plan, original: Original, models: dict | None) -> bool:
    """One full-length batch through both models, timed; False (the model rejected, the figures recorded)
    when the compiled call is more than verify.max_slowdown times the original's or does not return."""
    if models is None or plan.limits.max_slowdown is None:
        return True
    from bertc.driver.limits import SlowModel, check_call_speed
    from bertc.evaluate.batches import synthetic_batches

    settings = plan.verify
    # the fourth synthetic batch reaches the full sequence length (bertc/evaluate/batches.py)
    batch = synthetic_batches(4, settings.batch_size, original.seq_len, original.vocab, settings.seed)[-1]
    with run.step("time one call of each model", "speed"):
        try:
            figures = check_call_speed(models["original"], models["compiled"], batch.feeds(), plan.limits.max_slowdown)
        except SlowModel as slow:
            run.record["speed_check"] = {**slow.figures, "passed": False, "error": str(slow)}
            return False
    run.record["speed_check"] = {**figures, "passed": True}
    run.say(
        f"one batch of {settings.batch_size}: original {figures['original_s'] * 1000:.1f} ms, compiled "
        f"{figures['compiled_s'] * 1000:.1f} ms (first calls {figures['original_first_s']:.2f} s, "
        f"{figures['compiled_first_s']:.2f} s)"
    )
    return True


def verify(run: Run, plan: Plan, original: Original, models: dict | None) -> bool:
    """Compiled against original on the same inputs; True when within the gate."""
    if not plan.verify.enabled:
        return True
    assert models is not None  # open_models loads both when verify is enabled
    from bertc.driver.limits import run_with_limit
    from bertc.evaluate.batches import Chained, SeededBatches
    from bertc.evaluate.verify import compare, read_glue_tsv, tokenize_pairs

    settings = plan.verify
    if plan.quantize and not settings.dataset:
        run.warn(
            f"precision={plan.precision} is gated on argmax agreement, here over synthetic batches only: random "
            "tokens say little about a quantized model. Give verify.dataset=PATH (your task's dev set, GLUE TSV) "
            "for a gate on real sentences."
        )
    with run.step("verify against the original", "verify"):
        # made one at a time on each pass (compare, then the widths ran): memory stays one batch's
        seeded = SeededBatches(settings.batches, settings.batch_size, original.seq_len, original.vocab, settings.seed)
        dataset = []
        if settings.dataset:
            vocab = original.path / "vocab.txt"
            if not vocab.is_file():
                raise ConfigError(f"verify.dataset needs the model's vocab.txt, and {original.path} has none.")
            pairs = read_glue_tsv(settings.dataset, settings.max_examples)
            dataset = tokenize_pairs(pairs, vocab, original.seq_len, settings.batch_size)
        batches = Chained(seeded, dataset)
        parity = run_with_limit(
            functools.partial(
                compare,
                models["original"],
                models["compiled"],
                batches,
                plan.gate,
                settings.tolerance,
                settings.min_agreement,
            ),
            plan.limits.verify_s,
            "verify.timeout_s",
            "verify",
        )
        record_lengths_ran(run.record, models["compiled"], batches)  # the length step: which widths verify ran
    run.record["parity"] = parity
    run.say(
        f"max |dp| {parity['max_abs_diff']:.3g} over {parity['examples']} examples; "
        f"argmax agreement {parity['argmax_agreement']:.4f} (gate: {gate_rule(parity)})"
    )
    return bool(parity["passed"])


def bench(run: Run, plan: Plan, original: Original, models: dict | None) -> None:
    if not plan.bench.enabled:
        return
    assert models is not None  # open_models loads both when bench is enabled
    from bertc.driver.limits import run_with_limit
    from bertc.evaluate.bench import benchmark, benchmark_lengths

    settings = plan.bench
    # Real lengths too: verify.dataset's pairs with the model's vocab, else MRPC-like lengths.
    vocab_file = original.path / "vocab.txt"
    dataset = plan.verify.dataset if plan.verify.dataset and vocab_file.is_file() else None

    def measure() -> dict:
        figures = benchmark(
            models,
            settings.batch_sizes,
            original.seq_len,
            original.vocab,
            settings.rounds,
            settings.seconds,
            settings.warmup,
        )
        timing = {
            "batch_sizes": settings.batch_sizes,
            "rounds": settings.rounds,
            "seconds": settings.seconds,
            "warmup": settings.warmup,
        }
        figures["lengths"] = benchmark_lengths(
            models, original.seq_len, original.vocab, timing, dataset, vocab_file if dataset else None
        )
        return figures

    with run.step("benchmark original vs compiled", "bench"):
        run.record["bench"] = run_with_limit(measure, plan.limits.bench_s, "bench.timeout_s", "the benchmark")


def publish(run: Run, artifact, path: Path, passed: bool) -> None:
    """Move the verified artifact into model/ (a failed one into rejected/) and set the run's status; a passed one
    says how it serves (for a SavedModel, TensorFlow Serving's layout)."""
    final = run.run_dir / ("model" if passed else "rejected")
    if final.exists():
        shutil.rmtree(final)
    path.rename(final)
    run.record["artifact"]["path"] = str(final)
    if passed:  # TensorFlow Serving's layout, serving/<name>/1/ (bertc/run/serving_layout.py)
        user = run.record["input"]["signature"]
        run.record["serving"] = artifact.describe(final, run.run_dir, run.plan.model.name, user)
    run.record["status"] = "passed" if passed else "rejected"
    if not passed and not run.record.get("speed_check", {}).get("passed", True):
        run.record["failed_step"] = "speed"
        run.record["error"] = run.record["speed_check"]["error"]
    elif not passed:
        parity = run.record["parity"]
        run.record["failed_step"] = "verify"
        run.record["error"] = f"parity gate failed: {gate_failure(parity)}; the model is in rejected/"


def compile_run(plan: Plan, run_dir: Path, console: Console, debug: bool = False, overwrite: bool = False) -> int:
    """Run the plan into `run_dir`; returns the exit code: 0 passed, 2 the user's input or config is at
    fault (the message says what to change), 1 the model was rejected by verify or bertc failed.
    SIGINT/SIGTERM: recorded `interrupted`, then bertc.run.faults.Interrupted (a KeyboardInterrupt) is raised."""
    from bertc.ir.lazy import import_tensorflow

    # NOTE: TensorFlow before the signal handlers: importing it installs handlers of its own over bertc's.
    import_tensorflow()
    # bertc/run/rundir.py: refuse the input's folder, a finished run (unless overwrite), a held folder; lock it
    with claim_run_folder(run_dir, plan.model.path, overwrite), signals_raise():
        return _compile_run(plan, run_dir, console, debug)


def _compile_run(plan: Plan, run_dir: Path, console: Console, debug: bool) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    run = Run(plan, run_dir, console, debug)
    try:
        try:
            run_pipeline(run)
        except Exception as error:  # raised by the signal handler inside C code, it can surface as another error
            if (interruption := received_interruption()) is not None:
                raise interruption from error
            raise
    except UserError as error:
        _fail(run, error, traceback.format_exc() if debug else None)
        return EXIT_USER_ERROR
    except StepFailed as failure:
        user_fault = isinstance(failure.error, UserError)
        # A pass that broke (not the user's input) keeps its traceback in report.json for the bug report.
        _fail(run, failure, traceback.format_exc() if debug or not user_fault else None)
        return EXIT_USER_ERROR if user_fault else 1
    except MemoryError:  # whatever the step held is gone by now: a report can still be written
        _fail(run, MemoryError(out_of_memory(run.stage)))
        return 1
    except KeyboardInterrupt as error:  # SIGINT or SIGTERM (bertc/run/faults.py): recorded with its stage
        _interrupted(run, as_interrupted(error))
        mark_recorded(error)
        raise
    except BaseException as error:  # a crash: still leave an honest report, then re-raise
        _fail(run, error, traceback.format_exc())
        mark_recorded(error)
        raise
    finally:
        if run.staging is not None and run.staging.exists():
            shutil.rmtree(run.staging, ignore_errors=True)
        _finish(run)
    return 0 if run.record["status"] == "passed" else 1


def out_of_memory(stage: str) -> str:
    return (
        f"out of memory during {stage}: the process could not allocate what the step needed. Free memory, lower "
        "verify.batch_size or the bench.batch_sizes, or run where more memory is available; nothing was published"
    )


def _fail(run: Run, error: BaseException, trace: str | None = None) -> None:
    run.record.update(
        status="failed", failed_step=getattr(error, "step", None) or run.stage, error=str(error) or type(error).__name__
    )
    if trace:
        run.record["traceback"] = trace
        if run.debug:
            run.console.print(trace, markup=False, highlight=False)


def _interrupted(run: Run, error: Interrupted) -> None:
    run.interruption = error
    run.record.update(status="interrupted", failed_step=run.stage, error=f"{error} during {run.stage}")


def _finish(run: Run) -> None:
    write_reports(run.run_dir, run.record)
    if run.interruption is not None:  # one line, no summary: the user asked it to stop
        run.console.print(escape(interrupted_line(run.interruption, run.stage, run.run_dir)))
        return
    print_wrapped(run.console, summary_table(run.record))
    if run.record.get("error"):
        run.console.print(
            f"[bold red]error[/] [dim]({run.record.get('failed_step')})[/]: {escape(run.record['error'])}"
        )
    run.console.print(f"run folder: {escape(str(run.run_dir))}")
