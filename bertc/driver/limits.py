"""Config values and a loaded model -> the limits a run keeps: checked values, a static cost bound, timeouts.

Three kinds of limit, each failing as a clear user error (exit 2) before the harm:

- values that would crash TensorFlow or mean nothing (a NaN tolerance, negative thread counts) are
  refused when the plan is built, as a step's parameters are by their own dataclass (a boundary given twice);
- the work a graph can do is bounded before anything runs it: TensorFlow's shape inference at the
  largest configured batch gives every tensor's size and every matmul's cost, and no tensor may
  exceed what the BERT shape needs (attention scores, the FFN activation, a one-hot embedding, the
  tables) by more than TENSOR_MARGIN, nor the whole graph the cost of a BERT forward pass by more
  than WORK_MARGIN; a batch whose activations cannot fit in the memory available is refused too;
- verify, bench and the warm-up run under wall-clock limits (`verify.timeout_s`, `bench.timeout_s`,
  `target.timeout_s`). A TensorFlow call cannot be cancelled from Python, so the call runs in a
  worker thread; when the limit passes the main thread raises, the run records the failure and
  `python -m bertc` then exits at once without waiting for the abandoned call (`exit_if_work_abandoned`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from bertc import targets
from bertc.errors import ConfigError, ModelError, UserError
from bertc.runtime.machine import address_space_left, available_memory

TENSOR_MARGIN = 2  # a tensor may be this many times the largest one a BERT of this shape needs
WORK_MARGIN = 4  # the graph may cost this many times a BERT forward pass of this shape
MEMORY_FRACTION = 0.8  # of the memory available, what a run's estimated peak may take
# Address space the threads TensorFlow and XLA start later reserve (stacks, glibc's per-thread malloc arenas of
# 64 MiB): under an address-space limit (ulimit -v) glibc aborts the process when it runs out, with no report.
THREAD_RESERVE = 2**30

Result = TypeVar("Result")
_abandoned: list[threading.Thread] = []


@dataclasses.dataclass(frozen=True)
class RunLimits:
    """Wall-clock limits in seconds (None: none). Outside the fingerprint: they never change the artifact."""

    compile_s: float | None = 1800.0  # target.timeout_s: compile and warm-up
    verify_s: float | None = 3600.0  # verify.timeout_s: loading both models and comparing them
    bench_s: float | None = 3600.0  # bench.timeout_s
    max_slowdown: float | None = 10.0  # verify.max_slowdown: the compiled call's time over the original's


class TimeLimitExceeded(UserError):
    pass


# ---- config values -----------------------------------------------------------------------------


def run_limits(cfg: Any) -> RunLimits:
    """Validate the values TensorFlow or the gate would misuse, and return the run's time limits."""
    tolerance = cfg.verify.tolerance
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
        raise ConfigError(
            f"verify.tolerance={tolerance} must be a positive number (the largest |probability difference| "
            "allowed), or null for the precision's gate."
        )
    for key in ("intra_op_threads", "inter_op_threads"):
        if cfg.target[key] < 0:
            raise ConfigError(f"target.{key}={cfg.target[key]} must be 0 (TensorFlow's choice) or a positive count.")
    timeouts = {
        "target.timeout_s": cfg.target.timeout_s,
        "verify.timeout_s": cfg.verify.timeout_s,
        "bench.timeout_s": cfg.bench.timeout_s,
    }
    for key, value in timeouts.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{key}={value} must be a positive number of seconds, or null for no limit.")
    slowdown = cfg.verify.get("max_slowdown", RunLimits.max_slowdown)
    if slowdown is not None and not (math.isfinite(slowdown) and slowdown >= 1):
        raise ConfigError(
            f"verify.max_slowdown={slowdown} must be a number of at least 1 (how many times the original's call "
            "time the compiled model's may take), or null for no check."
        )
    return RunLimits(
        compile_s=cfg.target.timeout_s,
        verify_s=cfg.verify.timeout_s,
        bench_s=cfg.bench.timeout_s,
        max_slowdown=slowdown,
    )


def largest_batch(plan: Any) -> tuple[int, str]:
    """The largest batch any stage runs, and the config key that sets it."""
    candidates = [(plan.shape.batch_size, "shape.batch_size")]
    if plan.verify.enabled:
        candidates.append((plan.verify.batch_size, "verify.batch_size"))
    if plan.bench.enabled:
        candidates += [(size, "bench.batch_sizes") for size in plan.bench.batch_sizes]
    return max(candidates + targets.get(plan.target.name).batches(plan.target.params))


# ---- memory --------------------------------------------------------------------------------------


def weight_bytes(shape: Any) -> int:
    """The model's float32 weights: the embedding tables and every layer's dense kernels."""
    return 4 * (
        (shape.vocab + shape.max_positions + shape.type_vocab) * shape.hidden
        + shape.layers * (4 * shape.hidden * shape.hidden + 2 * shape.hidden * shape.intermediate)
    )


def estimated_peak_bytes(shape: Any, batch: int, weight_copies: float) -> int:
    """A float32 BERT call at `batch`: the weights `weight_copies` times (what the target declares it holds at its
    peak, compiling included; 3 for TensorFlow's: the reader's, the compiled model's, the original's) and one layer's
    live activations (scores and softmax of every head, the FFN activation and its GELU terms, about 12 [B,S,H])."""
    tokens = batch * shape.seq_len
    activations = tokens * (3 * shape.heads * shape.seq_len + 4 * shape.intermediate + 12 * shape.hidden)
    return int(weight_copies * weight_bytes(shape)) + 4 * activations


def refuse_batch_beyond_memory(shape: Any, plan: Any) -> None:
    """Refused before any work where the estimated peak is over MEMORY_FRACTION of the memory available: a model
    the target cannot compile here (its weight copies alone), else a batch too large."""
    available = available_memory()
    if available is None:
        return
    target = targets.get(plan.target.name)
    compiling = int(target.weight_copies * weight_bytes(shape))
    if compiling > MEMORY_FRACTION * available:
        raise ConfigError(
            f"target={plan.target.name} holds about {target.weight_copies:g} copies of the model's float32 weights "
            f"at its peak ({weight_bytes(shape) / 2**30:.2f} GiB each for {shape.layers} layers, hidden "
            f"{shape.hidden}: {compiling / 2**30:.1f} GiB), and {available / 2**30:.1f} GiB of memory is "
            "available. Nothing was compiled: use a machine with more memory, or another target."
        )
    batch, key = largest_batch(plan)
    needed = estimated_peak_bytes(shape, batch, target.weight_copies)
    if needed > MEMORY_FRACTION * available:
        raise ConfigError(
            f"{key}: a batch of {batch} at sequence length {shape.seq_len} needs about "
            f"{needed / 2**30:.1f} GiB for this model ({shape.layers} layers, hidden {shape.hidden}, "
            f"{shape.heads} heads), and {available / 2**30:.1f} GiB of memory is available. Choose a "
            "smaller batch size."
        )


def refuse_beyond_address_space(shape: Any, plan: Any) -> None:
    """Refused before any work, with the figures, where the estimated peak and the threads' reservations do
    not fit in what an address-space limit leaves (past it glibc aborts the process mid-compile)."""
    space = address_space_left()
    if space is None:
        return
    limit, left = space
    batch, key = largest_batch(plan)
    needed = estimated_peak_bytes(shape, batch, targets.get(plan.target.name).weight_copies) + THREAD_RESERVE
    if needed > left:
        raise ConfigError(
            f"the process's address-space limit (ulimit -v, RLIMIT_AS) is {limit / 2**30:.1f} GiB and leaves "
            f"{max(left, 0) / 2**30:.2f} GiB now that TensorFlow and the model are loaded; this run needs about "
            f"{needed / 2**30:.1f} GiB of it ({key}={batch}, and about {THREAD_RESERVE / 2**30:.0f} GiB that "
            "TensorFlow's and XLA's threads reserve). Raise the limit (ulimit -v unlimited) or choose a smaller "
            "batch size."
        )


# ---- static cost bound ----------------------------------------------------------------------------


def tensor_limit(shape: Any, batch: int) -> int:
    """Elements of the largest tensor a BERT of this shape needs at `batch`, times TENSOR_MARGIN."""
    tokens = batch * shape.seq_len
    largest = max(
        tokens * shape.heads * shape.seq_len,
        tokens * shape.intermediate,
        tokens * shape.vocab,
        tokens * shape.hidden,
        shape.vocab * shape.hidden,
        shape.max_positions * shape.hidden,
    )
    return TENSOR_MARGIN * largest


def work_limit(shape: Any, batch: int) -> int:
    """Multiply-adds and elementwise results of a BERT forward pass at `batch` (a one-hot embedding
    included), times WORK_MARGIN."""
    tokens = batch * shape.seq_len
    per_layer = (
        2 * tokens * shape.hidden * (4 * shape.hidden + 2 * shape.intermediate)
        + 4 * tokens * shape.seq_len * shape.hidden
        + 40 * tokens * (shape.heads * shape.seq_len + shape.intermediate + shape.hidden)
    )
    embeddings = 2 * tokens * (shape.vocab + shape.type_vocab) * shape.hidden + 20 * tokens * shape.hidden
    tables = 4 * (shape.vocab + shape.max_positions) * shape.hidden
    return WORK_MARGIN * (shape.layers * per_layer + embeddings + tables)


def refuse_unbounded_work(
    meta_graph,
    nodes_to_run: Iterable[str],
    feeds: Mapping[str, Iterable[int | None] | None],
    stops: Iterable[str],
    shape: Any,
    batch: int,
    outputs: Mapping[str, str],
) -> dict:
    """Shape-infer the nodes that will run at `batch` (nothing is executed); refuse what exceeds the limits.

    `feeds` maps each serving input node to its shape (-1 or None: the batch); `stops` are the other
    tensors TensorFlow feeds (the checkpoint filename, asset paths). Returns the figures for the report.
    """
    graph_def = meta_graph.graph_def
    stops = set(stops) | set(feeds)
    tf_graph = _import_at_batch(_subgraph_to_run(graph_def, nodes_to_run, feeds, stops, batch), batch)
    limit, budget = tensor_limit(shape, batch), work_limit(shape, batch)
    library = {function.signature.name: function for function in graph_def.library.function}
    too_big, unknown, costs = _measure(tf_graph, library, stops, limit)
    described = (
        f"a BERT of {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads, "
        f"intermediate {shape.intermediate}, vocab {shape.vocab}, at batch {batch} and sequence "
        f"length {shape.seq_len}"
    )
    _refuse_unbounded_tensors(too_big, unknown, limit, described)
    _refuse_non_classifier_outputs(tf_graph, outputs, shape, batch)
    total = sum(costs.values())
    _refuse_over_budget(graph_def, costs, total, budget, described)
    return {
        "batch": batch,
        "tensor_limit": limit,
        "work": total,
        "work_limit": budget,
        "largest_tensor": max(
            (
                tensor.shape.num_elements()
                for operation in tf_graph.get_operations()
                for tensor in operation.outputs
                if tensor.shape.is_fully_defined()
            ),
            default=0,
        ),
    }


def _subgraph_to_run(graph_def, nodes_to_run: Iterable[str], feeds: Mapping, stops: set[str], batch: int):
    """The nodes that will run, with every fed tensor (`stops`) a placeholder of its shape at `batch`."""
    import tensorflow as tf

    from bertc.ir.graph import GraphDef, ancestors, make_placeholder

    keep = ancestors(graph_def, nodes_to_run, stops=stops)
    subgraph = GraphDef()
    subgraph.versions.CopyFrom(graph_def.versions)
    subgraph.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name not in keep:
            continue
        if node.name in stops:
            dims = feeds[node.name] if node.name in feeds else _declared_shape(node)
            dims = [batch if dim is None or dim < 0 else dim for dim in dims] if dims is not None else None
            dtype = node.attr["dtype"].type if "dtype" in node.attr else tf.string.as_datatype_enum
            subgraph.node.append(make_placeholder(node.name, tf.as_dtype(dtype), dims))
        else:
            copied = subgraph.node.add()
            copied.CopyFrom(node)
            copied.attr.pop("_output_shapes", None)  # the exporter's hints; inferred here at the real batch
    return subgraph


def _import_at_batch(subgraph, batch: int):
    """A tf.Graph of `subgraph`: importing it runs TensorFlow's shape inference (and executes nothing)."""
    import tensorflow as tf

    with tf.Graph().as_default() as tf_graph:
        try:
            tf.graph_util.import_graph_def(subgraph, name="")
        except (ValueError, tf.errors.OpError) as error:  # shape inference proved the graph cannot run
            raise ModelError(f"the model's graph does not hold together at batch {batch}: {str(error)[:400]}") from None
    return tf_graph


def _measure(tf_graph, library: Mapping, stops: set[str], limit: int) -> tuple[list[str], list[str], dict[str, int]]:
    """Over every operation (function bodies included): the tensors over `limit` elements, those of a shape
    not known before running, and each operation's cost."""
    too_big, unknown, costs = [], [], {}
    for where, operation in _operations_with_function_bodies(tf_graph, library):
        if operation.type == "Placeholder" and operation.name in stops and not where:
            continue
        costs[operation.name + where] = _cost(operation)
        for tensor in operation.outputs:
            if _restored(operation):
                continue  # sized by the checkpoint, whose shapes the reader checked against the variables
            if not tensor.shape.is_fully_defined():
                unknown.append(f"{tensor.name}{where} ({operation.type}, shape {tensor.shape})")
            elif tensor.shape.num_elements() > limit:
                too_big.append(
                    f"{tensor.name}{where} ({operation.type}, shape {tensor.shape.as_list()}, "
                    f"{tensor.shape.num_elements():.3g} elements)"
                )
    return too_big, unknown, costs


def _refuse_unbounded_tensors(too_big: list[str], unknown: list[str], limit: int, described: str) -> None:
    if too_big:
        raise ModelError(
            f"the model's graph would make tensor(s) larger than {limit:.3g} elements ({TENSOR_MARGIN}x the "
            f"largest that {described} needs): {', '.join(too_big[:5])}. bertc refuses to run it; the "
            "graph computes more than a BERT classifier."
        )
    if unknown:
        raise ModelError(
            f"the size of {len(unknown)} tensor(s) the model would compute cannot be bounded before "
            f"running it: {', '.join(unknown[:5])}. bertc runs only graphs whose every tensor has a "
            "static shape at the configured batch (google-research/bert's export has)."
        )


def _refuse_over_budget(graph_def, costs: Mapping[str, int], total: int, budget: int, described: str) -> None:
    from bertc.ir.graph import nodes_by_name

    if total > budget:
        nodes = nodes_by_name(graph_def)
        heaviest = sorted(costs.items(), key=lambda item: -item[1])[:3]
        raise ModelError(
            f"the model's graph would cost {total:.3g} operations per call, over {budget:.3g} "
            f"({WORK_MARGIN}x {described}); the heaviest nodes: "
            + ", ".join(f"{name} ({nodes[name].op if name in nodes else '?'}, {cost:.3g})" for name, cost in heaviest)
            + ". bertc refuses to run it; the graph computes more than a BERT classifier."
        )


def _refuse_non_classifier_outputs(tf_graph, outputs: Mapping[str, str], shape: Any, batch: int) -> None:
    for name, size in outputs.items():
        tensor = tf_graph.get_tensor_by_name(size)
        if tensor.shape.num_elements() > batch * max(shape.num_labels, 1):
            raise ModelError(
                f"the model's output {name} would have shape {tensor.shape.as_list()} at batch {batch}; a "
                f"classifier's output is (batch, num_labels) = ({batch}, {shape.num_labels})."
            )


def _operations_with_function_bodies(tf_graph, library: Mapping, where: str = "", seen: frozenset = frozenset()):
    """(" in function F, called by N" or "", operation) for every operation, and those of every function
    called, traced at the shapes of the call's inputs (nested calls too; a recursion is not re-entered)."""
    from tensorflow.python.framework.function_def_to_graph import function_def_to_graph

    for operation in tf_graph.get_operations():
        yield where, operation
        called = [operation.type] if operation.type in library else []
        for value in operation.node_def.attr.values():
            called += [value.func.name] if value.HasField("func") else []
            called += [function.name for function in value.list.func]
        for name in called:
            if name not in library or name in seen:
                continue
            shapes = [tensor.shape for tensor in operation.inputs]
            with tf_graph.as_default():
                body = function_def_to_graph(library[name], input_shapes=shapes if shapes else None)
            inner = f" in function {name}, called by {operation.name}{where}"
            yield from _operations_with_function_bodies(body, library, inner, seen | {name})


def _restored(operation) -> bool:
    """A checkpoint read, or an Identity of one (the restore op passes values on to the assignments)."""
    while operation.type == "Identity" and operation.inputs:
        operation = operation.inputs[0].op
    return operation.type in ("RestoreV2", "Restore", "RestoreSlice")


def _declared_shape(node) -> list[int] | None:
    """A placeholder's declared shape (-1: any), None when it declares none."""
    if "shape" not in node.attr or node.attr["shape"].shape.unknown_rank:
        return None
    return [dim.size for dim in node.attr["shape"].shape.dim]


def _cost(operation) -> int:
    """Multiply-adds of a matmul-like op (2 per product), else the elements it produces."""

    def dims(tensor) -> list[int]:
        if tensor.shape.rank is None:
            return []
        return [dim if dim is not None else 0 for dim in tensor.shape.as_list()]

    kind = operation.type
    produced = sum(t.shape.num_elements() or 0 for t in operation.outputs if t.shape.is_fully_defined())
    if kind in ("MatMul", "_FusedMatMul") and len(operation.inputs) >= 2:
        left = dims(operation.inputs[0])
        inner = left[0] if operation.get_attr("transpose_a") else left[-1] if left else 0
        return 2 * produced * inner
    if kind.startswith("BatchMatMul") and len(operation.inputs) >= 2:
        left = dims(operation.inputs[0])
        adjoint = operation.get_attr("adj_x")
        inner = (left[-2] if adjoint else left[-1]) if len(left) >= 2 else 0
        return 2 * produced * inner
    if kind == "Einsum":
        equation = operation.get_attr("equation").decode()
        sizes: dict[str, int] = {}
        for letters, tensor in zip(equation.split("->")[0].split(","), operation.inputs):
            letters = letters.replace("...", "")  # broadcast dims: counted in the output's elements
            for letter, size in zip(letters, dims(tensor)[-len(letters) :] if letters else []):
                sizes[letter] = max(sizes.get(letter, 0), size)
        return 2 * math.prod(sizes.values()) if sizes else produced
    return produced


# ---- wall-clock limits ----------------------------------------------------------------------------


def run_with_limit(call: Callable[[], Result], seconds: float | None, key: str, what: str) -> Result:
    """`call()` in a worker thread; TimeLimitExceeded when it is still running after `seconds`."""
    if seconds is None:
        return call()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 (re-raised in the caller's thread below)
            outcome["error"] = error

    worker = threading.Thread(target=work, name=f"bertc {what}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        _abandoned.append(worker)
        raise TimeLimitExceeded(
            f"{what} was still running after {seconds:g} s ({key}={seconds:g}) and was abandoned. A BERT of "
            f"this size should finish well within it: raise {key} (or set it to null) if the machine is just "
            "slow, otherwise the model does more work than a BERT classifier."
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def work_abandoned() -> bool:
    return any(thread.is_alive() for thread in _abandoned)


def exit_if_work_abandoned(code: int | str | None) -> None:
    """After a time limit the abandoned TensorFlow call may run on: leave now (reports are written),
    rather than wait for it at interpreter exit."""
    if work_abandoned():
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


# ---- the compiled model's call time ---------------------------------------------------------------

FIRST_CALL_FLOOR_S = 30.0  # the compiled model's first call may always take this long (graph optimisation)
SLOW_FLOOR_S = 0.5  # and a warm call this much longer than the original's: tiny models' timings are noise


class SlowModel(Exception):
    """The compiled model's call is many times slower than the original's: rejected with the figures."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def _best_of(call: Callable[[], Any], times: int) -> float:
    best = math.inf
    for _ in range(times):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def check_call_speed(original: Callable, compiled: Callable, feeds: Mapping, max_slowdown: float) -> dict:
    """Time both models on one batch (first call, then the best of three); SlowModel when the compiled one is
    more than `max_slowdown` times the original's and SLOW_FLOOR_S slower, or its calls do not return in time
    (the first: max(FIRST_CALL_FLOOR_S, max_slowdown x the original's first call)). A call that does not return
    is abandoned in its thread (a TensorFlow call cannot be cancelled); `python -m bertc` exits once the report
    is written."""
    start = time.perf_counter()
    original(feeds)
    figures: dict[str, Any] = {"original_first_s": round(time.perf_counter() - start, 4), "max_slowdown": max_slowdown}
    figures["original_s"] = round(_best_of(lambda: original(feeds), 3), 4)
    warm_limit = max_slowdown * figures["original_s"] + SLOW_FLOOR_S
    limits = {
        "compiled_first_s": (max(FIRST_CALL_FLOOR_S, max_slowdown * figures["original_first_s"]), 1, "first call"),
        "compiled_s": (3 * 2 * warm_limit, 3, "calls"),  # three calls, each up to twice the rejection limit
    }
    for key, (limit, times, what) in limits.items():
        try:
            seconds = run_with_limit(
                functools.partial(_best_of, functools.partial(compiled, feeds), times),
                limit,
                "verify.max_slowdown",
                what,
            )
        except TimeLimitExceeded:
            figures[key] = None
            raise SlowModel(
                f"the compiled model's {what} did not return within {limit:.1f} s, while the original's took "
                f"{figures['original_first_s']:.3f} s (first) and {figures['original_s']:.3f} s (verify.max_slowdown="
                f"{max_slowdown:g}): the call was abandoned. {SLOW_ADVICE}",
                figures,
            ) from None
        figures[key] = round(seconds, 4)
    figures["slowdown"] = round(figures["compiled_s"] / max(figures["original_s"], 1e-9), 2)
    if figures["compiled_s"] > warm_limit:
        raise SlowModel(
            f"the compiled model's call took {figures['compiled_s']:.3f} s against the original's "
            f"{figures['original_s']:.3f} s ({figures['slowdown']:g}x; verify.max_slowdown={max_slowdown:g}). "
            + SLOW_ADVICE,
            figures,
        )
    return figures


SLOW_ADVICE = (
    "The model is in rejected/ with this report. A float16 build on a CPU whose TensorFlow hands float16 to "
    "oneDNN (avx512_fp16 or amx_fp16) can crawl this way: serve fp16 on an accelerator, or use precision=fp32 "
    "here; raise verify.max_slowdown (or set it to null) to accept a slower model."
)


# ---- before compiling ------------------------------------------------------------------------------

# What does the heavy work of a BERT: each such node the outputs need must play a role of the recognised
# structure (attention, FFN, pooler, classifier, a one-hot embedding) or be named in security.allow_unrecognised.
CONVOLUTIONS = ("Conv2D", "Conv3D", "DepthwiseConv2dNative")


def refuse_unrecognised_compute(
    graph: Any, roles: Mapping[str, str], unread: str, allowed: Iterable[str], path: Any
) -> None:
    """Refuse (before anything runs) a matmul or convolution on the way to the outputs that is not part of the BERT
    structure bertc recognised (`roles`; `unread`: why none were found), unless the user named it: such work is
    bounded by nothing bertc understands."""
    from bertc.ir.graph import ancestors, match_scope
    from bertc.ir.ops import MATMUL_OPS

    why = f" bertc could not find that structure: {unread}" if unread else ""
    needed = ancestors(graph.graph_def, graph.outputs.values())
    stray = [
        node.name
        for node in graph.graph_def.node
        if node.op in MATMUL_OPS + CONVOLUTIONS
        and node.name in needed
        and node.name not in roles
        and not any(match_scope(node.name, pattern) for pattern in allowed)
    ]
    if stray:
        raise ModelError(
            f"{path}: {len(stray)} matmul or convolution node(s) on the way to the outputs are outside the BERT "
            f"structure bertc recognised (embeddings, attention, FFN, pooler, classifier), e.g. {stray[:5]}.{why} "
            "Nothing was run. If they belong to your model, name them: security.allow_unrecognised="
            f"['{stray[0]}'] (fnmatch patterns of node names)."
        )


def check_before_running(plan: Any, loaded: Any, roles: Mapping[str, str], unread: str) -> dict:
    """Everything that can be refused from the loaded model and the plan before a graph runs: the
    verify inputs, the batch against memory, the static cost of all that loading and serving runs, heavy
    work outside the recognised BERT structure."""
    from bertc.evaluate.verify import check_verify_inputs

    if plan.verify.enabled:
        check_verify_inputs(plan.verify, loaded.path, loaded.shape.vocab)
    refuse_batch_beyond_memory(loaded.shape, plan)
    refuse_beyond_address_space(loaded.shape, plan)
    bounds = _static_bound(plan, loaded)
    refuse_unrecognised_compute(loaded.graph, roles, unread, plan.security.allow_unrecognised, loaded.path)
    return bounds


def _static_bound(plan: Any, loaded: Any) -> dict:
    """The cost of what serving runs, bounded before it runs: bertc's Graph where the frontend inlined the serving
    functions, else the meta graph's nodes that loading and serving run (bertc.frontends: `inlines_functions`)."""
    from bertc import frontends
    from bertc.frontends.security import loader_fed_nodes
    from bertc.ir.graph import split_input

    if loaded.meta_graph is None:
        return {}
    if frontends.get(loaded.dialect).inlines_functions:
        return _bound_inlined_graph(plan, loaded)
    batch, _ = largest_batch(plan)
    graph_def = loaded.meta_graph.graph_def
    by_name = {node.name: node for node in graph_def.node}
    feeds = {}
    for tensor in loaded.signature_inputs.values():
        node = by_name[split_input(tensor)[0]]
        declared = _declared_shape(node)
        # a signature of any length (keras-hub's export) is bounded at the length bertc compiles it for
        feeds[node.name] = declared and [
            declared[0],
            *(loaded.shape.seq_len if dim in (None, -1) else dim for dim in declared[1:]),
        ]
    # TF2: `executed` names functions (their bodies are traced from the call nodes); TF1: nodes
    to_run = {name for name in set().union(*loaded.executed.values()) if name in by_name} | {
        node.name for node in loaded.graph.graph_def.node if node.name in by_name
    }
    outputs = {"probabilities": loaded.graph.outputs["probabilities"]}
    return refuse_unbounded_work(
        loaded.meta_graph, to_run, feeds, loader_fed_nodes(loaded.meta_graph), loaded.shape, batch, outputs
    )


def _bound_inlined_graph(plan: Any, loaded: Any) -> dict:
    """A TF2 model: the serving computation is bertc's inlined graph (every function body flattened into one
    GraphDef), bounded at [batch, seq_len]; what loading runs besides (init, restore functions) was checked
    against the allowlist by bertc.frontends.security and reads no serving input."""
    import types

    from bertc.ir.graph import node_of

    batch, _ = largest_batch(plan)
    graph = loaded.graph
    feeds = {node_of(tensor): [None, loaded.shape.seq_len] for tensor in graph.inputs.values()}
    nodes_to_run = [node.name for node in graph.graph_def.node]
    outputs = {"probabilities": graph.outputs["probabilities"]}
    flat = types.SimpleNamespace(graph_def=graph.graph_def)
    return refuse_unbounded_work(flat, nodes_to_run, feeds, (), loaded.shape, batch, outputs)
