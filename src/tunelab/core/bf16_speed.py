"""Is bf16 the faster matmul dtype on this CPU? Measured once per machine, not assumed from its flags.

CPUs with bf16 instructions but no AMX tiles differ widely: an Intel Xeon with avx512_bf16 ran a
2048x2048 matmul at 146-163 GFLOP/s in bf16 against 250-309 in fp32, while a 2-core AMD EPYC with
avx512_bf16 (family 26) ran the matmul shapes of a smollm2-135m training step at 725-819 GFLOP/s in
bf16 against 170-196 in fp32, and LoRA SFT 2.5x faster end to end (docs/performance.md). So where
the flags cannot tell, a short probe on the shapes training and scoring use decides, and its answer
is cached under the tunelab cache, keyed by CPU, flags, torch version and thread count.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .cache import cache_root
from .machine import cpu_flags, describe_machine

# One projection of a small decoder on a packed row: (tokens x hidden) @ (hidden x intermediate).
PROBE_SHAPE = (512, 576, 1536)
# bf16 must beat fp32 clearly: autocast adds casts around every matmul, so a near tie is a loss.
FASTER_BELOW = 0.8


def probe_seconds(repeats: int = 5) -> dict[str, float]:
    """Best time of one probe matmul per dtype, the two dtypes alternating so that a burst of
    other work on the machine slows both alike."""
    import torch

    m, k, n = PROBE_SHAPE
    operands = {name: (torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype))
                for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    for a, b in operands.values():
        a @ b  # warm-up: oneDNN creates its kernel on the first call
    best = {name: float("inf") for name in operands}
    for _ in range(repeats):
        for name, (a, b) in operands.items():
            start = time.perf_counter()
            a @ b
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def decide(seconds: dict[str, float]) -> bool:
    return seconds["bf16"] < FASTER_BELOW * seconds["fp32"]


def _machine_key() -> str:
    import torch

    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16]
    return f"{describe_machine()['cpu']}|flags {flags}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def cache_file() -> Path:
    return cache_root() / "machine" / "bf16_speed.json"


def _known() -> dict:
    try:
        known = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def cached_probe() -> dict | None:
    """This machine's cached probe ({bf16_faster, bf16_s, fp32_s, shape}), or None before the first."""
    return _known().get(_machine_key())


def bf16_matmul_faster(measure_again: bool = False) -> bool:
    """The cached answer for this machine, measuring it the first time (about 0.1 s) or when asked."""
    path, key = cache_file(), _machine_key()
    known = _known()
    if isinstance(known.get(key), dict) and "bf16_faster" in known[key] and not measure_again:
        return bool(known[key]["bf16_faster"])
    seconds = probe_seconds()
    known[key] = {"bf16_faster": decide(seconds), **{f"{name}_s": s for name, s in seconds.items()},
                  "shape": list(PROBE_SHAPE)}
    try:  # a read-only cache only costs the next process another probe
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        scratch.write_text(json.dumps(known, indent=1))
        os.replace(scratch, path)
    except OSError:
        pass
    return bool(known[key]["bf16_faster"])
