"""Training throughput: the stock TRL SFTTrainer + peft LoRA path vs tunelab, same model and data.

Each path runs in its own child process (so peak RSS is its own) on the same machine, one after
the other; the parent prints one table and the ratios tunelab / stock last.

  python bench/train_throughput.py [--examples 128] [--max-length 512] [--batch 8]

Both paths: smollm2-135m, LoRA r=16 alpha=32 on all linear layers, bf16 autocast, the same
real instruction examples (data/instruct/, natural length spread), max_length 512, one epoch,
8 examples per optimizer step. Stock = what a new user writes: SFTTrainer defaults (no
packing, pad to the longest in each batch, loss on every token). tunelab = its defaults
(packing, loss-positions-only chunked LM head, length-grouped batches).

Figures:
  useful tokens/s  non-padding tokens processed per second of training
  padding          share of batch slots that were padding
  peak RSS         the child process's maximum resident set size
  MFU              useful tokens/s x FLOPs per token / a bf16 matmul peak measured here;
                   FLOPs per token = 4 x (linear weights incl. LM head) — LoRA's forward plus
                   input-gradient backward (frozen weights need no weight gradient).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = [REPO / "data/instruct/dolly_subset.jsonl", REPO / "data/instruct/self_instruct_human.jsonl"]


def _examples(n: int) -> list[dict]:
    rows = [json.loads(line) for path in DATA for line in path.read_text().splitlines()]
    rows = rows[:n]
    return [{"messages": [{"role": "user", "content": r["instruction"] + (f"\n\n{r['context']}" if r.get("context") else "")},
                          {"role": "assistant", "content": r["response"]}]} for r in rows]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_flops(size: int = 2048, reps: int = 10) -> float:
    """Best bf16 (autocast) matmul FLOP/s on this machine, all threads."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    best = 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a16, b16 = a.bfloat16(), b.bfloat16()
        for _ in range(reps):
            start = time.perf_counter()
            a16 @ b16
            best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def flops_per_token(model_dir: str) -> float:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 4.0 * linear


# --------------------------------------------------------------------------- the two paths


def run_stock(args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunelab.models import resolve

    model_dir = resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    counts = {"real": 0, "slots": 0}

    out = tempfile.mkdtemp()
    config = SFTConfig(output_dir=out, max_length=args.max_length, per_device_train_batch_size=args.batch,
                       num_train_epochs=1, bf16=True, report_to=[], save_strategy="no", logging_steps=5,
                       use_cpu=True, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(_examples(args.examples)),
                         processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    collate = trainer.data_collator

    def counting_collator(batch):
        out_batch = collate(batch)
        counts["real"] += int(out_batch["attention_mask"].sum()) if "attention_mask" in out_batch else out_batch["input_ids"].numel()
        counts["slots"] += out_batch["input_ids"].numel()
        return out_batch

    trainer.data_collator = counting_collator
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "useful_tokens": counts["real"], "padding": 1 - counts["real"] / counts["slots"],
            "model_dir": model_dir}


def run_tunelab(args) -> dict:
    import tunelab
    from tunelab.models import resolve

    work = Path(tempfile.mkdtemp())
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in _examples(args.examples)))
    config = {
        "name": "bench", "model": "smollm2-135m", "stage": "sft",
        "method": {"name": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"},
        "data": {"train": str(data), "eval_fraction": 0.0},
        "train": {"epochs": 1, "batch_size": args.tunelab_rows, "max_length": args.max_length, "save_steps": 0,
                  "logging_steps": 5, "eval_before": False},
        "output_dir": str(work / "runs"),
    }
    run_dir = tunelab.train(config, quiet=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seconds": summary["train_seconds"], "useful_tokens": summary["batched_tokens"],
            "padding": summary["padding_fraction"], "model_dir": resolve("smollm2-135m")}


def child(path: str, args) -> None:
    result = (run_stock if path == "stock" else run_tunelab)(args)
    result["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8, help="examples per optimizer step (stock path)")
    parser.add_argument("--tunelab-rows", type=int, default=2,
                        help="packed rows of max_length tokens per step for tunelab (2 x 512 tokens ~ 8 examples)")
    parser.add_argument("--child", choices=["stock", "tunelab"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return

    results = {}
    for path in ("stock", "tunelab"):
        command = [sys.executable, __file__, "--child", path, "--examples", str(args.examples),
                   "--max-length", str(args.max_length), "--batch", str(args.batch),
                   "--tunelab-rows", str(args.tunelab_rows)]
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{path} path failed:\n{proc.stderr[-3000:]}")
        results[path] = json.loads(line[len("RESULT "):])

    peak = matmul_peak_flops()
    per_token = flops_per_token(results["stock"]["model_dir"])
    print(f"examples {args.examples}, max_length {args.max_length}, bf16 matmul peak {peak / 1e9:.1f} GFLOP/s, "
          f"{per_token / 1e9:.2f} GFLOP per useful token")
    print(f"{'path':<10} {'useful tok/s':>12} {'padding':>8} {'peak RSS MB':>12} {'MFU':>6} {'train s':>8}")
    rows = {}
    for path, r in results.items():
        tps = r["useful_tokens"] / r["seconds"]
        rows[path] = {"tps": tps, "rss": r["peak_rss_mb"], "mfu": tps * per_token / peak}
        print(f"{path:<10} {tps:>12.1f} {r['padding']:>8.1%} {r['peak_rss_mb']:>12.0f} {rows[path]['mfu']:>6.1%} "
              f"{r['seconds']:>8.1f}")
    print(f"ratios tunelab/stock: useful tokens/s {rows['tunelab']['tps'] / rows['stock']['tps']:.2f}x, "
          f"peak RSS {rows['tunelab']['rss'] / rows['stock']['rss']:.2f}x")


if __name__ == "__main__":
    main()
