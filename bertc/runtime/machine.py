"""This machine: the bytes of memory a process may still use (the runtime's bound before it allocates), the CPU's
name and the instruction-set flags that decide the engines' kernels (reported beside every speed figure)."""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path


def available_memory() -> int | None:
    """Bytes this process may still use: MemAvailable, capped by a cgroup limit; None when unknown."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        try:
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    try:
        maximum = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if maximum != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            limits.append(int(maximum) - used)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def address_space_left() -> tuple[int, int] | None:
    """(the address-space limit, what is left of it) under ulimit -v (RLIMIT_AS); None without one."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        status = Path("/proc/self/status").read_text()
        used = int(status.split("VmSize:", 1)[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return None
    return limit, limit - used


def _cpuinfo(field: str) -> str | None:
    """The value of /proc/cpuinfo's first line starting with `field`; None when there is none or no file."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(field)), None)


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    name = _cpuinfo("model name")
    return name if name is not None else platform.processor() or platform.machine()


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def simd_flags() -> list[str]:
    """The flags that decide TensorFlow's CPU kernels, for reports next to every speed figure."""
    flags = cpu_flags()
    return [flag for flag in SIMD_FLAGS if flag in flags]
