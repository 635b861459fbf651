"""Shared by the training benchmarks: the machine line, matmul peaks, and one child process per path.

Each measured path runs in its own child process so its peak RSS is its own and no path inherits
another's warm caches or allocator state; the child prints one ``RESULT {json}`` line.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tunelab.core.machine import describe_machine, machine_line  # noqa: E402


def scratch_dir(prefix: str = "tunelab-bench-") -> Path:
    """A temporary directory removed when this process exits.

    Each measured path writes a model and its data (about half a gigabyte for smollm2-135m); left
    behind, a few bench invocations fill a small disk.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def matmul_peak_flops(dtype_name: str, size: int = 2048, reps: int = 10) -> float:
    """Best square-matmul FLOP/s on this machine in one dtype, all threads."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: oneDNN picks and caches its kernel on the first call
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def machine_report() -> dict:
    """Measure and print the machine line first: CPU model, AMX or not, bf16 and fp32 matmul peaks.

    Returns {"line", "peaks": {"bf16", "fp32"}, "fastest"}: ``fastest`` is the dtype with the higher
    measured peak, the one the best-configured TRL path trains in.
    """
    import torch

    machine = describe_machine()
    peaks = {"bf16": matmul_peak_flops("bfloat16"), "fp32": matmul_peak_flops("float32")}
    fastest = max(peaks, key=peaks.get)
    line = (f"machine: {machine_line(machine)}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"2048x2048 matmul peak bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s "
            f"-> faster dtype {fastest}")
    print(line, flush=True)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"(other processes share these cores: figures are indicative)", flush=True)
    return {"line": line, "peaks": peaks, "fastest": fastest}


def peak_rss_mb() -> float:
    from tunelab.training.engine import peak_rss_mb as vm_hwm  # VmHWM: this process only, not the parent's

    return vm_hwm()


def emit(result: dict, started: float) -> None:
    """A child's last words: its result, its peak RSS and its whole wall time (load + tokenise + train)."""
    result["peak_rss_mb"] = peak_rss_mb()
    result["process_seconds"] = time.perf_counter() - started
    result["load_end"] = os.getloadavg()[0]  # 1-minute load average: how much other work shared the cores
    print("RESULT " + json.dumps(result), flush=True)


def run_child(script: str, argv: list[str], label: str) -> dict:
    """Run ``script --child ...`` in a fresh interpreter; its RESULT line as a dict (exit with its stderr on failure)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, env=env)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{label} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    # On stderr as each child ends, so a long run that is cut short still leaves its finished rows.
    print(f"  {label}: done in {time.perf_counter() - started:.0f} s: {line}", file=sys.stderr, flush=True)
    return json.loads(line[len("RESULT "):])


def add_child_arguments(parser, paths) -> None:
    """The options of the parent/child protocol every bench shares: tunelab overrides, which path a
    child runs, and the dtype the parent chose for the peer's best path."""
    parser.add_argument("--tunelab-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra tunelab config override (repeatable)")
    parser.add_argument("--child", choices=paths)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")


def chosen_paths(spec: str, known) -> list[str]:
    """``--paths a,b`` as a list; exits with one `error:` line for a path the bench does not have."""
    paths = spec.split(",")
    if any(p not in known for p in paths):
        sys.exit(f"error: unknown path in --paths {spec!r} (paths: {', '.join(known)})")
    return paths


def tunelab_set_argv(args) -> list[str]:
    """The parent's ``--tunelab-set`` overrides, passed on to a child."""
    return [f"--tunelab-set={override}" for override in args.tunelab_set]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"
