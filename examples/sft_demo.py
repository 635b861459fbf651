"""SFT demo: LoRA-tune SmolLM2-135M on real instructions; held-out loss and a generation, before vs after.

Usage: python examples/sft_demo.py [CONFIG] [KEY=VALUE ...] [--smoke]

--smoke runs the same path in seconds on the tiny random llama and a few rows (checks the script
runs; the numbers mean nothing).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import tunelab
from tunelab.data import load_examples

HERE = Path(__file__).parent
SMOKE = ["model=tiny-llama", "data.max_rows=24", "train.max_steps=2", "train.max_length=128"]


def main(argv: list[str]) -> None:
    config_path = argv[0] if argv and argv[0].endswith(".yaml") else str(HERE / "sft-demo.yaml")
    smoke = "--smoke" in argv
    overrides = (SMOKE if smoke else []) + [a for a in argv if "=" in a]
    cfg = tunelab.load_config(config_path, overrides)
    max_new_tokens = 8 if smoke else 80

    # A held-out instruction (from the run's own eval split) to generate from, before and after.
    held_out = load_examples(cfg.data, cfg.train.seed, ("instruction", "messages")).eval[0]["messages"]
    prompt = next(m["content"] for m in held_out if m["role"] == "user")
    before = tunelab.load(cfg.model).generate(prompt, max_new_tokens=max_new_tokens)

    run_dir = tunelab.train(cfg, overwrite=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    after = tunelab.load(run_dir).generate(prompt, max_new_tokens=max_new_tokens)

    m = summary["metrics"]
    print("\n=== tunelab SFT demo ===")
    print(f"model {summary['model']} | method {summary['method']} | trainable {summary['trainable_params']:,} "
          f"of {summary['total_params']:,} ({summary['trainable_percent']:.2f}%) | {summary['train_examples']} train / "
          f"{summary['eval_examples']} held-out examples | {summary['train_seconds']:.0f} s | peak RSS {summary['peak_rss_mb']:.0f} MB")
    print(f"held-out loss       before {m['before_eval_loss']:.4f}  after {m['eval_loss']:.4f}")
    print(f"held-out perplexity before {m['before_eval_perplexity']:.2f}  after {m['eval_perplexity']:.2f}")
    print(f"\nprompt: {prompt[:300]}")
    print(f"\n--- before ---\n{before}\n\n--- after ---\n{after}\n")
    print(run_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
