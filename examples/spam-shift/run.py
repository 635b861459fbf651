"""Spam filters under distribution shift: email -> SMS, for several adaptation methods.

For each method: (1) train on email, (2) evaluate on email-test and SMS-test, (3) continue the
email model on 200 SMS messages (init_from), (4) evaluate again on both. Plus a zero-shot
baseline (an instruct model asked "spam?", no training). Prints one table and writes it to
OUTPUT_DIR/results.{md,json}.

    python examples/spam-shift/run.py            # fast profile (minutes on 2 CPU cores)
    python examples/spam-shift/run.py --full     # all data, longer inputs (much longer)
    python examples/spam-shift/run.py --smoke    # seconds: tiny random models, a few rows (checks it runs)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TEST_SETS = {"email": "data/spam/email_test.jsonl", "sms": "data/spam/sms_test.jsonl"}
METHODS = ["head", "lora", "adapter", "full"]

# Fast: subsets (the split files are in hash order, so "first N rows" is a fixed random sample).
PROFILES = {
    "fast": {"overrides": [], "test_rows": {"email": 200, "sms": 400}, "zeroshot_rows": 100, "zeroshot_tokens": 48},
    "full": {"overrides": ["data.max_rows=null", "train.max_length=128"], "test_rows": None,
             "zeroshot_rows": None, "zeroshot_tokens": 128},
    # The whole scenario on the tiny random models: the numbers mean nothing, the path is the real one.
    "smoke": {"overrides": ["model=tiny-bert", "data.max_rows=32", "train.max_steps=2", "train.batch_size=8"],
              "test_rows": {"email": 16, "sms": 16}, "zeroshot_rows": 4, "zeroshot_tokens": 32,
              "zeroshot_model": "tiny-llama", "backbone": "tiny-bert"},
}
ZEROSHOT = {
    "model": "smollm2-135m",
    "labels": ["ham", "spam"],
    "label_words": {"ham": "no", "spam": "yes"},  # one token each: one forward pass per message
    "instruction": "Is the message below spam (unsolicited advertising, a scam or phishing)? Answer yes or no.",
}


def _row(method: str, trained_on: str, summary: dict, result: dict) -> dict:
    row = {"method": method, "trained_on": trained_on, "trainable_percent": summary["trainable_percent"],
           "train_seconds": summary["train_seconds"]}
    for name, report in result["data"].items():
        row[name] = {"f1": report["f1"], "accuracy": report["accuracy"], "n": report["n"]}
    return row


def format_table(rows: list[dict], title: str) -> str:
    sets = list(TEST_SETS)
    header = f"{'method':<10} {'trained on':<18} {'trainable %':>11} {'train s':>8} " + " ".join(
        f"{name + ' F1':>9} {name + ' acc':>10}" for name in sets)
    lines = [title, header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['method']:<10} {r['trained_on']:<18} {r['trainable_percent']:>11.3f} {r['train_seconds']:>8.1f} "
                     + " ".join(f"{r[name]['f1']:>9.3f} {r[name]['accuracy']:>10.3f}" for name in sets))
    counts = {name: sorted({r[name]["n"] for r in rows}) for name in sets}
    lines.append("F1 = spam F1 (positive class: spam). Test rows: "
                 + ", ".join(f"{name} {'/'.join(map(str, n))}" for name, n in counts.items())
                 + " (zero-shot may use fewer: it is the slowest to score).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="All training/test data and max_length 128.")
    parser.add_argument("--smoke", action="store_true",
                        help="Seconds: tiny-bert/tiny-llama, 32 rows, 2 steps (checks the script runs; numbers mean nothing).")
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated methods (default: %(default)s).")
    parser.add_argument("--model", default=None, help="Backbone instead of the configs' minilm-l6 (e.g. smollm2-135m).")
    parser.add_argument("--no-zeroshot", action="store_true", help="Skip the zero-shot baseline.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra config override for every run (repeatable), e.g. --set train.lr=1e-3.")
    parser.add_argument("--output-dir", default="runs/spam-shift", help="Where the runs go (default: %(default)s).")
    args = parser.parse_args(argv)

    os.chdir(REPO)  # configs name data/ and runs/ relative to the repository root
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tunelab import TunelabError, train
    from tunelab.evaluate import evaluate
    from tunelab.baselines.zeroshot import ZeroShotConfig
    from tunelab.runs.baseline import create_baseline_run

    if args.full and args.smoke:
        parser.error("--full and --smoke exclude each other")
    profile_name = "full" if args.full else "smoke" if args.smoke else "fast"
    profile = PROFILES[profile_name]
    out = Path(args.output_dir)
    overrides = profile["overrides"] + [f"output_dir={out}"] + ([f"model={args.model}"] if args.model else []) + args.set
    started = time.time()
    rows = []

    def score(run_dir: Path, max_rows) -> dict:
        return evaluate(run_dir, TEST_SETS, max_rows=max_rows)

    def progress(message: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    try:
        if not args.no_zeroshot:
            progress("zero-shot baseline ...")
            zs_cfg = ZeroShotConfig(**{**ZEROSHOT, "model": profile.get("zeroshot_model", ZEROSHOT["model"])},
                                    max_length=profile["zeroshot_tokens"])
            run = create_baseline_run(out / "zeroshot", "zeroshot", zs_cfg, overwrite=True)
            summary = json.loads((run / "summary.json").read_text())
            rows.append(_row("zero-shot", f"none ({zs_cfg.model})", summary, score(run, profile["zeroshot_rows"])))
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            progress(f"{method}: train on email ...")
            email_run = train(HERE / f"email-{method}.yaml", overrides, overwrite=True, quiet=True)
            summary = json.loads((email_run / "summary.json").read_text())
            rows.append(_row(method, "email", summary, score(email_run, profile["test_rows"])))
            progress(f"{method}: continue on 200 SMS ...")
            sms_run = train(HERE / f"sms-{method}.yaml", overrides + [f"init_from={email_run}"], overwrite=True, quiet=True)
            summary = json.loads((sms_run / "summary.json").read_text())
            rows.append(_row(method, "email + 200 sms", summary, score(sms_run, profile["test_rows"])))
    except TunelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    elapsed = time.time() - started
    backbone = args.model or profile.get("backbone", "minilm-l6")
    title = (f"spam-shift, {profile_name} profile, backbone {backbone} -- {time.strftime('%Y-%m-%d')}, "
             f"{platform.machine()} {os.cpu_count()} CPU cores, {elapsed / 60:.1f} min total")
    table = format_table(rows, title)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"title": title, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
