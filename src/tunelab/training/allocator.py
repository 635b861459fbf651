"""While training, glibc's malloc keeps the memory a step frees for the next step.

glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
returns it to the kernel on ``free``; the next step's block of the same size is mapped again and
faulted in page by page as it is first written. A training step frees and remakes such blocks every
micro-batch: full fine-tuning's fp32 LM-head gradient (113 MB for smollm2-135m), the activations of
long rows, the optimizer's temporaries. Measured on a 2-core AMD EPYC (docs/performance.md): making
a (49,152 x 576) fp32 tensor from bf16 took 36 ms fresh and 4 ms into memory already touched; with
mmap off for the run (glibc's environment variables), the bench's full SFT ran in 43.8 / 45.4 s
against 48.9 / 47.2 s and LoRA SFT in 33.6 / 34.2 s against 36.7 / 36.4 s, peak RSS within the runs'
spread.

`freed_memory_kept()` turns mmap off (``M_MMAP_MAX`` 0: every block comes from the heap) and raises
the trim threshold (the heap's free top stays mapped) for the block; after it, glibc's defaults
are restored and ``malloc_trim(0)`` hands the free heap back to the kernel. Elsewhere than glibc
(macOS, musl) it does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults
KEPT_TRIM_THRESHOLD = 1 << 30  # free heap top kept mapped while training (1 GiB; RSS peaks are what they were)
_lock = threading.Lock()
_inside = 0  # blocks open in this process (the jobs server may train in threads side by side)


def _glibc():
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    path = ctypes.util.find_library("c")
    if path is None:
        return None
    try:
        libc = ctypes.CDLL(path)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist in glibc only
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def freed_memory_kept(active: bool = True):
    """Within the block, freed blocks of any size stay in the process for reuse (glibc only); the
    settings are process-wide, so the first block in sets them and the last one out restores glibc's
    defaults. Yields whether the setting is in effect."""
    global _inside
    libc = _glibc() if active else None
    if libc is None:
        yield False
        return
    with _lock:
        if _inside == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, KEPT_TRIM_THRESHOLD)
        _inside += 1
    try:
        yield True
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
