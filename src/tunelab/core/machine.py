"""What machine a figure was measured on: CPU model, cores, and the matrix units that set its speed."""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path


@functools.cache  # /proc/cpuinfo does not change within a process; the bf16 probe's key reads it per call
def _cpuinfo() -> tuple[str, frozenset[str]]:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return cpu, frozenset(flags)


def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    return _cpuinfo()[1]


def describe_machine() -> dict:
    """{cpu, cores, arch, amx, avx512_bf16, gpu}: read from /proc/cpuinfo (no torch import)."""
    cpu, flags = _cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "arch": platform.machine(), "amx": "amx_tile" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, "", "-1")}


def machine_line(machine: dict | None = None) -> str:
    """One line for a table's caption, e.g. 'AMD EPYC, 2 cores, x86_64, avx512_bf16, no AMX'."""
    m = machine or describe_machine()
    units = ["AMX" if m["amx"] else "no AMX"] + (["avx512_bf16"] if m["avx512_bf16"] else [])
    return f"{m['cpu']}, {m['cores']} cores, {m['arch']}, {', '.join(units)}"
