"""Spam filters under distribution shift, email -> SMS: `tunelab compare` on compare.yaml, in profiles.

Runs every approach of compare.yaml (majority class, zero-shot and 4-shot prompting of an instruct
model, then head / LoRA / adapter / full fine-tunes on email continued on 200 SMS, with and
without email replay), prints the table and the recommendation, and writes OUTPUT_DIR/report.html.

    python examples/spam-shift/run.py            # fast profile (subsets; minutes on 2 CPU cores)
    python examples/spam-shift/run.py --full     # all data, longer inputs (much longer)
    python examples/spam-shift/run.py --smoke    # seconds: tiny random models, a few rows (checks it runs)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# The whole scenario on tiny random models: the numbers mean nothing, the path is the real one.
SMOKE_MODELS = {"minilm-l6": "tiny-bert", "smollm2-135m": "tiny-llama"}


def apply_profile(spec: dict, profile: str) -> dict:
    if profile == "full":
        spec["data"]["test_rows"] = None
        spec["defaults"]["data"]["max_rows"] = None
        spec["defaults"]["train"]["max_length"] = 128
    elif profile == "smoke":
        spec["data"]["test_rows"] = {name: 16 for name in spec["data"]["test"]}
        spec["defaults"]["model"] = SMOKE_MODELS[spec["defaults"]["model"]]
        spec["defaults"]["data"]["max_rows"] = 32
        spec["defaults"]["train"].update(max_steps=2, batch_size=8)
        for approach in spec["approaches"]:
            approach.pop("test_rows", None)  # every approach scores the same 16 rows
            if "model" in approach:
                approach["model"] = SMOKE_MODELS.get(approach["model"], approach["model"])
            if isinstance(approach.get("train"), dict):
                approach["train"].pop("epochs", None)
                approach["train"].pop("batch_size", None)
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="All training/test data and max_length 128.")
    parser.add_argument("--smoke", action="store_true",
                        help="Seconds: tiny-bert/tiny-llama, 32 rows, 2 steps (checks the script runs; numbers mean nothing).")
    parser.add_argument("--only", default=None, help="Comma-separated approach names to keep (default: all).")
    parser.add_argument("--output-dir", default=None, help="Where the runs and report go (default: compare.yaml's).")
    parser.add_argument("-v", "--verbose", action="store_true", help="Show each training run's own output.")
    args = parser.parse_args(argv)
    if args.full and args.smoke:
        parser.error("--full and --smoke exclude each other")

    os.chdir(REPO)  # compare.yaml names data/ and runs/ relative to the repository root
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import tunelab
    from tunelab import TunelabError
    from tunelab.comparison import format_table

    spec = apply_profile(yaml.safe_load((HERE / "compare.yaml").read_text()),
                         "full" if args.full else "smoke" if args.smoke else "fast")
    if args.only:
        keep = {name.strip() for name in args.only.split(",")}
        spec["approaches"] = [a for a in spec["approaches"] if a["name"] in keep]
    if args.output_dir:
        spec["output_dir"] = args.output_dir
    try:
        result = tunelab.compare(spec, verbose=args.verbose)
    except TunelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"\nreport: {Path(spec['output_dir']) / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
