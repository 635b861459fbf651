"""Training throughput: the stock TRL SFTTrainer + peft LoRA path vs tunelab, same model and data.

Each path runs in its own child process (so peak RSS is its own) on the same machine, one after
the other; the parent prints one table and the ratios tunelab / stock last.

  python bench/train_throughput.py [--examples 128] [--max-length 512] [--batch 8]

Both paths: smollm2-135m, LoRA r=16 alpha=32 on all linear layers, the same real instruction
examples (data/instruct/, natural length spread), max_length 512, one epoch.
  stock    what a new user writes: SFTTrainer + LoraConfig with default options, bf16=True,
           8 examples per step (no packing, pad to the longest in each batch, loss on every token)
  tunelab  its defaults (packing, per-example attention, loss-positions-only LM head, precision
           auto = fp32 on CPUs without AMX), 1 packed row of max_length per micro-batch x 2
           accumulated = ~1,024 real tokens per optimizer step (stock: ~1,630 real tokens in
           ~3,580 slots per step). The two tokenise slightly differently (SmolLM2's template adds
           a default system prompt under TRL), so compare rates, not totals.

Figures:
  useful tok/s  non-padding tokens processed per second of training
  padding       share of batch slots that were padding
  loss tok      positions that carried loss
  peak RSS      the child process's maximum resident set size
  GFLOP/s       achieved: 4 FLOPs per frozen linear weight per token (forward + input-gradient
                backward) for the transformer body on every real token, and for the LM head on
                every position it was evaluated at (stock: all slots, padding included; tunelab:
                loss positions only); attention and LoRA's own small matmuls not counted
  /bf16 pk, /fp32 pk  that as a share of the best square-matmul FLOP/s measured here per dtype
"""
from __future__ import annotations

import argparse
import json
import os
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
    from tunelab.training.engine import peak_rss_mb  # VmHWM: not the spawning parent's peak

    return peak_rss_mb()


def matmul_peak_flops(dtype_name: str, size: int = 2048, reps: int = 10) -> float:
    """Best square-matmul FLOP/s on this machine in one dtype, all threads."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def linear_weights(model_dir: str) -> tuple[int, int]:
    """(weights in the transformer body's linear layers, weights in the LM head)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    head = model.get_output_embeddings().weight.numel()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) - head
    return body, head


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
    counts = {"real": 0, "slots": 0, "loss": 0}

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
        counts["loss"] += int((out_batch["labels"] != -100).sum())
        return out_batch

    trainer.data_collator = counting_collator
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    # The stock model computes logits for every position it is given, padding included.
    return {"seconds": seconds, "useful_tokens": counts["real"], "padding": 1 - counts["real"] / counts["slots"],
            "loss_tokens": counts["loss"], "head_tokens": counts["slots"], "model_dir": model_dir}


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
        "train": {"epochs": 1, "batch_size": args.tunelab_rows, "grad_accum": args.tunelab_accum,
                  "max_length": args.max_length, "save_steps": 0,
                  "logging_steps": 5, "eval_before": False},
        "output_dir": str(work / "runs"),
    }
    run_dir = tunelab.train(config, args.tunelab_set, quiet=True)  # --tunelab-set: e.g. train.precision=fp32
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seconds": summary["train_seconds"], "useful_tokens": summary["batched_tokens"],
            "padding": summary["padding_fraction"], "loss_tokens": summary["loss_tokens"],
            # the chunked loss evaluates the LM head only at loss-bearing positions
            "head_tokens": summary["loss_tokens"], "model_dir": resolve("smollm2-135m")}


def child(path: str, args) -> None:
    result = (run_stock if path == "stock" else run_tunelab)(args)
    result["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8, help="examples per optimizer step (stock path)")
    parser.add_argument("--tunelab-rows", type=int, default=1, help="packed rows of max_length per micro-batch")
    parser.add_argument("--tunelab-accum", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--paths", default="stock,tunelab", help="which paths to run (ratios need both)")
    parser.add_argument("--tunelab-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra tunelab config override (repeatable)")
    parser.add_argument("--child", choices=["stock", "tunelab"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return

    results = {}
    for path in args.paths.split(","):
        command = [sys.executable, __file__, "--child", path, "--examples", str(args.examples),
                   "--max-length", str(args.max_length), "--batch", str(args.batch),
                   "--tunelab-rows", str(args.tunelab_rows), "--tunelab-accum", str(args.tunelab_accum)]
        command += [f"--tunelab-set={override}" for override in args.tunelab_set]
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{path} path failed:\n{proc.stderr[-3000:]}")
        results[path] = json.loads(line[len("RESULT "):])

    peaks = {name: matmul_peak_flops(name) for name in ("bfloat16", "float32")}
    body, head = linear_weights(next(iter(results.values()))["model_dir"])
    print(f"examples {args.examples}, max_length {args.max_length}; square-matmul peak: "
          f"bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s")
    print(f"{'path':<10} {'useful tok/s':>12} {'padding':>8} {'loss tok':>9} {'peak RSS MB':>12} {'GFLOP/s':>8} "
          f"{'/bf16 pk':>9} {'/fp32 pk':>9} {'train s':>8}")
    rows = {}
    for path, r in results.items():
        # Frozen weights need forward + input-gradient backward: 4 FLOPs per weight per token.
        flops = 4 * (body * r["useful_tokens"] + head * r["head_tokens"])
        achieved = flops / r["seconds"]
        rows[path] = {"tps": r["useful_tokens"] / r["seconds"], "rss": r["peak_rss_mb"], "flops": achieved}
        print(f"{path:<10} {rows[path]['tps']:>12.1f} {r['padding']:>8.1%} {r['loss_tokens']:>9} "
              f"{r['peak_rss_mb']:>12.0f} {achieved / 1e9:>8.1f} {achieved / peaks['bfloat16']:>9.1%} "
              f"{achieved / peaks['float32']:>9.1%} {r['seconds']:>8.1f}")
    print("RESULTS " + json.dumps(results))
    if len(rows) < 2:
        return
    print(f"ratios tunelab/stock: useful tokens/s {rows['tunelab']['tps'] / rows['stock']['tps']:.2f}x, "
          f"peak RSS {rows['tunelab']['rss'] / rows['stock']['rss']:.2f}x, "
          f"achieved FLOP/s {rows['tunelab']['flops'] / rows['stock']['flops']:.2f}x")


if __name__ == "__main__":
    main()
