"""`head` classification with the feature cache vs a frozen backbone run through the Trainer every epoch.

  python bench/head_cache.py [--model minilm-l6] [--examples 1000] [--epochs 3]

Three runs on the same email-spam rows (data/spam/email_train.jsonl), same seed, same linear
head, same optimiser settings:
  uncached  method `freeze` with k=0: the backbone is frozen and only the head trains, but every
            epoch runs every example through the backbone (what a Trainer does with a frozen model)
  cold      method `head` with an empty feature cache: epoch 1 computes and stores the features,
            later epochs read them
  warm      the same `head` run again: every feature comes from the cache (the case of re-running
            with another learning rate, head or epoch count on the same model and data)
Each run is scored on data/spam/email_test.jsonl. Wall time = training only (summary.json's
train_seconds), model load excluded, all three in this one process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from _common import scratch_dir  # removes itself when the bench exits

REPO = Path(__file__).resolve().parents[1]


def _config(method: dict, args, work: Path, name: str) -> dict:
    return {
        "name": name, "model": args.model,
        "stage": {"name": "classify", "head": "linear", "pooling": "mean"},
        "method": method,
        "data": {"train": str(REPO / "data/spam/email_train.jsonl"), "max_rows": args.examples, "eval_fraction": 0.0},
        "train": {"epochs": args.epochs, "lr": 1e-2, "batch_size": 32, "max_length": args.max_length,
                  "precision": "fp32", "save_steps": 0, "eval_before": False, "logging_steps": 10},
        "output_dir": str(work / "runs"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import tunelab
    from tunelab.evaluate import evaluate

    work = scratch_dir("head-cache-")
    cache = work / "features"  # an empty cache, so `cold` really starts cold
    runs = {
        "uncached": {"name": "freeze", "k": 0},
        "cold": {"name": "head", "cache_dir": str(cache)},
        "warm": {"name": "head", "cache_dir": str(cache)},
    }
    rows = {}
    for label, method in runs.items():
        run_dir = tunelab.train(_config(method, args, work, label), quiet=True)
        summary = json.loads((run_dir / "summary.json").read_text())
        report = evaluate(run_dir, {"email": str(REPO / "data/spam/email_test.jsonl")}, write=False)["data"]["email"]
        spam = report["per_class"]["spam"]
        rows[label] = {"seconds": summary["train_seconds"], "f1": spam["f1"], "accuracy": report["accuracy"]}
        print(f"{label:<9} train {summary['train_seconds']:7.1f} s   spam F1 {spam['f1']:.4f}   "
              f"accuracy {report['accuracy']:.4f}", file=sys.stderr, flush=True)

    print(f"model {args.model}, {args.examples} email rows, {args.epochs:g} epochs, max_length {args.max_length}")
    print(f"{'run':<9} {'train s':>8} {'x uncached':>11} {'spam F1':>8} {'accuracy':>9}")
    base = rows["uncached"]["seconds"]
    for label, r in rows.items():
        print(f"{label:<9} {r['seconds']:>8.1f} {r['seconds'] / base:>10.2f}x {r['f1']:>8.4f} {r['accuracy']:>9.4f}")
    print(f"ratios vs uncached: cold cache {rows['cold']['seconds'] / base:.2f}x, "
          f"warm cache {rows['warm']['seconds'] / base:.2f}x; "
          f"spam F1 difference (cold - uncached) {rows['cold']['f1'] - rows['uncached']['f1']:+.4f}")


if __name__ == "__main__":
    main()
