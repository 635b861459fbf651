"""Benchmark: every adaptation method, same model, data, batch and step count; one table.

    python bench/methods.py                 # 10 steps, batch 4, max_length 256 on smollm2-135m
    python bench/methods.py --steps 50 --methods lora,adapter

Each method trains in a fresh subprocess (through the library, ``tunelab.train``), so peak RSS
is that method's own. Seconds/step exclude evaluation. Learning rates are each method's usual
one (a shared lr would favour some methods): see ``METHODS`` below.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "instruct" / "dolly_subset.jsonl"

# name -> (method section, learning rate). LRs follow each method's paper / peft examples.
METHODS: dict[str, tuple[dict, float]] = {
    "full": ({"name": "full"}, 5e-5),
    "freeze": ({"name": "freeze", "k": 4}, 1e-4),  # top 4 of 30 blocks
    "lora": ({"name": "lora", "r": 16, "alpha": 32}, 2e-4),
    "lora-dora": ({"name": "lora", "r": 16, "alpha": 32, "use_dora": True}, 2e-4),
    "adapter-pfeiffer": ({"name": "adapter", "placement": "pfeiffer", "reduction_factor": 16}, 1e-3),
    "adapter-houlsby": ({"name": "adapter", "placement": "houlsby", "reduction_factor": 16}, 1e-3),
    "prefix": ({"name": "prefix", "num_virtual_tokens": 20}, 1e-2),
    "prompt": ({"name": "prompt", "num_virtual_tokens": 20}, 3e-2),
    "ia3": ({"name": "ia3"}, 3e-3),
}


def run_config(name: str, args) -> dict:
    method, lr = METHODS[name]
    train = {"max_steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length, "lr": lr,
             "warmup_ratio": 0.1, "logging_steps": 1, "save_steps": 0, "eval_batch_size": 8, "seed": 0,
             "packing": False,  # the same examples per step for every method (prefix/prompt cannot pack)
             "eval_before": False}  # only the final eval matters here
    return {"name": f"bench-{name}", "model": args.model, "stage": "sft", "method": method,
            "data": {"train": str(DATA), "eval_fraction": 0.1}, "train": train, "output_dir": args.output_dir}


def measure_one(name: str, args) -> dict:
    """Train one method in this process; return its row."""
    import tunelab
    from tunelab.runs.directory import read_jsonl

    run_dir = tunelab.train(run_config(name, args), overwrite=True, quiet=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    eval_seconds = sum(r.get("eval_runtime", 0.0) for r in read_jsonl(run_dir / "metrics.jsonl"))
    return {
        "method": name,
        "lr": METHODS[name][1],
        "trainable": summary["trainable_params"],
        "percent": summary["trainable_percent"],
        "seconds_per_step": (summary["train_seconds"] - eval_seconds) / max(summary["steps"], 1),
        "peak_rss_mb": summary["peak_rss_mb"],
        "eval_loss": summary["metrics"].get("eval_loss"),
        "precision": summary["precision"],
    }


def table(rows: list[dict]) -> str:
    lines = ["| method | lr | trainable params (%) | s/step | peak RSS (MB) | final eval loss |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | | failed: {r['error']} | | | |")
            continue
        lines.append(f"| {r['method']} | {r['lr']:g} | {r['trainable']:,} ({r['percent']:.3f}%) | {r['seconds_per_step']:.2f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['eval_loss']:.4f} |")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="Optimizer steps per method.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--output-dir", default=str(REPO / "runs" / "bench"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one method, print JSON
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.one:
        print(json.dumps(measure_one(args.one, args)))
        return

    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    rows, load_before = [], os.getloadavg()[0]  # other work on the machine inflates s/step: say how much
    for name in names:
        started = time.time()
        command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--batch-size",
                   str(args.batch_size), "--max-length", str(args.max_length), "--model", args.model,
                   "--output-dir", args.output_dir]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode == 0:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:
            rows.append({"method": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:120]})
        print(f"{name}: done in {time.time() - started:.0f}s", file=sys.stderr, flush=True)

    precision = next((r["precision"] for r in rows if "precision" in r), "?")
    print(f"{time.strftime('%Y-%m-%d')} | {args.model} sft on {DATA.name} | {args.steps} steps, batch "
          f"{args.batch_size}, max_length {args.max_length}, {precision} | {_cpu_name()}, "
          f"{os.cpu_count()} CPUs, torch {__import__('torch').__version__} | "
          f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(table(rows))


if __name__ == "__main__":
    main()
