"""The host CPU -> whether bf16 matmuls can run natively (AVX-512 BF16 or AMX), for an honest warning.

On a CPU without bf16 instructions TensorFlow emulates bf16 matmuls, and a mixed_bf16 build runs
slower than fp32 (measured on a 2-core AMD EPYC with AVX2 only: 0.86x the original on target=tf,
0.99x on target=xla; bench/README.md).
"""

from __future__ import annotations

from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16() -> bool | None:
    """True or False where the CPU's flags can be read (Linux), None elsewhere."""
    flags = cpu_flags()
    if not flags:
        return None
    return any(flag in flags for flag in BF16_FLAGS)


def bf16_is_emulated(device: str) -> bool:
    """Whether a bf16 build for target.device would run its matmuls on a CPU without bf16 instructions."""
    if device == "gpu":
        return False
    from bertc.lazy import tf

    on_cpu = device == "cpu" or not tf.config.list_physical_devices("GPU")
    return on_cpu and native_bf16() is False
