"""The host -> measured TensorFlow rates per dtype on a BERT layer's op mix, cached, and whether a precision pays.

A flag list cannot say whether a dtype pays: on an Intel Xeon with avx512_bf16 but no AMX, TensorFlow's
oneDNN bf16 matmul ran at 116 GFLOP/s against fp32's 202, and with avx512_fp16 TensorFlow hands float16
ops to oneDNN (only there: it needs avx512_fp16, amx_fp16 or avx_ne_convert), where a float16 BERT crawled
(195 s for one batch-8 call of the demo). So the probe measures, in a child process with TensorFlow's default
environment (as the user's serving process has it) and a time limit per dtype, a BERT layer's op mix: dense
MatMul + BiasAdd + tanh GELU + MatMul, and attention (BatchMatMul, scale, additive mask, Softmax,
BatchMatMul), the patterns TensorFlow's oneDNN remapper fuses. A dtype that does not finish in its time is
recorded as stalled. Figures are cached per CPU, TensorFlow version, runtime (tf or xla) and oneDNN setting
under the bertc cache (`hardware/`), so the probe runs once per machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import select
import subprocess
import sys
import time

from bertc.runtime.machine import cpu_flags, cpu_name, simd_flags

DTYPES = ("float32", "bfloat16", "float16")
PROBE_VERSION = "1"  # bump when the op mix or its sizes change: cached figures of another mix are not reused
DTYPE_LIMIT_S = 45.0  # a dtype with no figure after this is stalled (TensorFlow's import included; ~2.2 GFLOP a call)
PAYS_MARGIN = 1.1  # a narrow dtype "pays" when it runs at least this many times the float32 rate
# The op mix: 512 tokens (a batch of 8 at 64), hidden 512, intermediate 2048, 8 heads of 64.
TOKENS, HIDDEN, INTERMEDIATE, HEADS, BATCH = 512, 512, 2048, 8, 8


@dataclasses.dataclass(frozen=True)
class Probe:
    """GFLOP/s per dtype on the op mix (None: stalled or failed, with the reason in `notes`)."""

    runtime: str  # tf | xla
    cpu: str
    flags: tuple[str, ...]
    tensorflow: str
    onednn: bool | None
    rates: dict[str, float | None]
    notes: dict[str, str]
    path: str = ""  # where the figures are cached

    def describe(self, dtype: str) -> str:
        rate = self.rates.get(dtype)
        return f"{rate:.0f} GFLOP/s" if rate is not None else self.notes.get(dtype, "not measured")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _cache_key(runtime: str) -> str:
    from bertc.ir.lazy import tf

    facts = [PROBE_VERSION, runtime, cpu_name(), " ".join(sorted(cpu_flags())), tf.__version__]
    facts.append(os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"))
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def probe(runtime: str = "tf", log=None) -> Probe:
    """The cached figures for this machine and runtime, measured first if there are none."""
    from bertc.driver.materialize import cache_dir

    path = cache_dir() / "hardware" / f"probe-{_cache_key(runtime)}.json"
    if path.is_file():
        try:
            return Probe(**{**json.loads(path.read_text()), "path": str(path)})
        except (ValueError, TypeError):
            pass  # a damaged cache entry is measured again
    if log:
        log(f"measuring TensorFlow's {runtime} rates per dtype on this CPU (once; cached in {path.parent})")
    result = dataclasses.replace(_measure(runtime), path=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps({k: v for k, v in result.to_dict().items() if k != "path"}, indent=2) + "\n")
    partial.replace(path)
    return result


def _measure(runtime: str) -> Probe:
    """Run the op mix in a child process, dtype after dtype; one that gives no figure in DTYPE_LIMIT_S is
    stalled: the child is killed and a fresh one measures the dtypes left."""
    from bertc.ir.lazy import tf

    rates: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    onednn: bool | None = None
    left = list(DTYPES)
    while left:
        for figures in _child_figures(runtime, left):
            dtype = figures["dtype"]
            left.remove(dtype)
            rates[dtype] = figures.get("gflops")
            onednn = figures.get("onednn", onednn)
            if figures.get("note"):
                notes[dtype] = figures["note"]
    return Probe(runtime, cpu_name(), tuple(simd_flags()), tf.__version__, onednn, rates, notes)


def _child_figures(runtime: str, dtypes: list[str]):
    """Yield each dtype's figures as the child prints them; the first one it cannot give in time is stalled."""
    command = [sys.executable, "-m", "bertc.driver.hardware", runtime, *dtypes]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout = child.stdout
    assert stdout is not None  # stdout=PIPE
    try:
        for dtype in dtypes:
            ready, _, _ = select.select([stdout], [], [], DTYPE_LIMIT_S)
            line = stdout.readline() if ready else ""
            if not line.startswith("{"):
                why = f"stalled (no result in {DTYPE_LIMIT_S:.0f} s)" if not ready else _child_error(child)
                yield {"dtype": dtype, "gflops": None, "note": why}
                return
            yield json.loads(line)
    finally:
        child.kill()
        child.wait()


def _child_error(child: subprocess.Popen) -> str:
    child.kill()
    lines = child.communicate()[1].strip().splitlines() or ["no output"]
    return f"failed ({lines[-1][:200]})"


def _op_mix(tf, dtype, jit: bool):
    """(function, its inputs, FLOPs a call): one BERT layer's dense and attention patterns at `dtype`."""
    rng = tf.random.Generator.from_seed(0)

    def normal(*shape):
        return tf.cast(rng.normal(shape) * 0.05, dtype)

    head = HIDDEN // HEADS
    length = TOKENS // BATCH
    inputs = (
        normal(TOKENS, HIDDEN),
        normal(HIDDEN, INTERMEDIATE),
        normal(INTERMEDIATE),
        normal(INTERMEDIATE, HIDDEN),
        normal(BATCH, HEADS, length, head),
        tf.cast(tf.concat([tf.zeros([BATCH, 1, 1, length - 8]), tf.fill([BATCH, 1, 1, 8], -10000.0)], -1), dtype),
    )

    @tf.function(jit_compile=jit)
    def layer(x, w_in, b_in, w_out, q, mask):
        inner = tf.nn.bias_add(tf.matmul(x, w_in), b_in)
        cube = tf.cast(0.044715, dtype) * tf.pow(inner, 3)
        gelu = tf.cast(0.5, dtype) * inner * (1 + tf.tanh(tf.cast(0.7978845608, dtype) * (inner + cube)))
        dense = tf.matmul(gelu, w_out)
        scores = tf.matmul(q, q, transpose_b=True) * tf.cast(head**-0.5, dtype) + mask
        context = tf.matmul(tf.nn.softmax(scores), q)
        return tf.reduce_sum(tf.cast(dense, tf.float32)) + tf.reduce_sum(tf.cast(context, tf.float32))

    flops = 2 * TOKENS * HIDDEN * INTERMEDIATE * 2 + 2 * 2 * BATCH * HEADS * length * length * head
    return layer, inputs, flops


def _worker(runtime: str, dtype_name: str) -> dict:
    """In the child process: warm up, then time calls of the op mix for about half a second."""
    from bertc.ir.lazy import import_tensorflow

    tf = import_tensorflow()
    try:
        from tensorflow.python.util import _pywrap_util_port

        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        onednn = None
    layer, inputs, flops = _op_mix(tf, tf.as_dtype(dtype_name), runtime == "xla")
    for _ in range(2):
        layer(*inputs).numpy()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.5 or calls < 3:
        layer(*inputs).numpy()
        calls += 1
    seconds = (time.perf_counter() - start) / calls
    return {"dtype": dtype_name, "gflops": round(flops / seconds / 1e9, 1), "onednn": onednn}


def precision_advice(compute_dtype: str, measured: Probe, precision: str) -> str | None:
    """A warning, citing the probe, when `compute_dtype` runs no faster than float32 here; None when it pays."""
    if compute_dtype == "float32":
        return None
    fp32, narrow = measured.rates.get("float32"), measured.rates.get(compute_dtype)
    if fp32 is not None and narrow is not None and narrow >= PAYS_MARGIN * fp32:
        return None
    short = {"float16": "fp16", "bfloat16": "bf16"}[compute_dtype]
    onednn = {True: "on", False: "off", None: "unknown"}[measured.onednn]
    figures = (
        f"TensorFlow ({measured.runtime}, oneDNN {onednn}) ran a BERT layer's ops at "
        f"{measured.describe(compute_dtype)} in {short} against {measured.describe('float32')} in fp32 on this "
        f"CPU ({measured.cpu}; "
        f"{' '.join(measured.flags) or 'no AVX flags read'}; probe cached in {measured.path})"
    )
    meant = (
        " precision=mixed is meant for accelerators (target=neuron on Inferentia, a GPU)."
        if compute_dtype == "float16"
        else ""
    )
    return (
        f"precision={precision} computes attention and the FFN in {short}, which will not pay here: {figures}.{meant} "
        f"{_what_pays(compute_dtype, measured)}"
    )


# The precision preset whose attention and FFN compute in each narrow dtype (conf/precision/)
PRESETS = {"bfloat16": "mixed_bf16", "float16": "mixed"}


def _what_pays(refused: str, measured: Probe) -> str:
    """The other narrow precision where the probe measured it paying, else fp32; and the engines' int8."""
    fp32 = measured.rates.get("float32")
    paying = [
        dtype
        for dtype in PRESETS
        if dtype != refused and fp32 and (measured.rates.get(dtype) or 0.0) >= PAYS_MARGIN * fp32
    ]
    int8 = "; for more speed on a CPU, precision=int8 with target=onnxruntime or target=openvino (gated on agreement)"
    if paying:
        short = {"float16": "fp16", "bfloat16": "bf16"}[paying[0]]
        return (
            f"Here {short} measured {measured.describe(paying[0])}: use precision={PRESETS[paying[0]]} instead{int8}."
        )
    return f"On this CPU use precision=fp32 (with length=trim or length=pack for real lengths){int8}."


if __name__ == "__main__":  # the probe's child process: python -m bertc.driver.hardware RUNTIME DTYPE...
    for name in sys.argv[2:]:
        print(json.dumps(_worker(sys.argv[1], name)), flush=True)
