"""DPO training throughput: TRL's DPOTrainer (stock, and at its best) vs tunelab's dpo stage, same pairs.

Each path runs in its own child process (so peak RSS is its own), one after the other; the parent
prints the machine first, then one table, then the ratios last.

  python bench/dpo_throughput.py [--paths stock,trl-best,tunelab] [--pairs 128] [--batch 4] [--max-length 320]

All paths: smollm2-135m, LoRA r=16 alpha=32 (dropout 0) on all linear layers, the first N HH-RLHF
helpful pairs of data/preference/hh_helpful_train.jsonl, beta 0.1, the sigmoid loss, 4 pairs per
optimizer step (8 sequences: chosen and rejected), max_length 320, one epoch; the reference is
the policy with its adapter switched off (no second copy of the weights) in every path. TRL gets
the pairs in its conversational format (the HH transcript split into chat turns the way tunelab
splits it), so both render the same chat template.
  stock     DPOConfig with its defaults (gradient_checkpointing=True, bf16=True).
  trl-best  padding_free=True (TRL 1.16 warns that it is temporarily unavailable for DPO and
            falls back to padding; it is asked for anyway, so a TRL that brings it back uses it),
            gradient_checkpointing=False, the machine's faster dtype (the higher of the two matmul
            peaks the parent measured), and with --trl-precompute-ref the reference log-probs
            computed once before training (their time is counted as training time).
  tunelab   its dpo stage with its defaults (precision auto = bf16 where it is the faster dtype; the LM
            head evaluated only at response positions).
max_length 320 because the two truncate differently: TRL drops a pair whose prompt alone fills
max_length and cuts the end of the rest, tunelab keeps every pair and cuts the prompt's start.
At 192 (examples/rlhf) TRL dropped 2 of the first 8 pairs; the longest of the first 128 pairs is
304 tokens, so at 320 both train on every pair, uncut. The table's `pairs` column is what each
path actually trained on.

Figures: pairs/s = pairs / train s; train s = wall time of training on the same N pairs (TRL:
trainer.train() plus any reference precompute; tunelab: trainer.train()); total s = the child's
whole life; tokens = real (non-padding) tokens of chosen + rejected sequences per epoch; peak RSS
= the child's VmHWM; load = the 1-minute load average when the child finished.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import REPO, add_child_arguments, chosen_paths, emit, machine_report, ratio, run_child, scratch_dir, tunelab_set_argv

DATA = REPO / "data/preference/hh_helpful_train.jsonl"
PATHS = ("stock", "trl-best", "tunelab")


def _pairs(n: int) -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines()][:n]


def run_trl(args, best: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from tunelab.models import resolve
    from tunelab.stages._pairs import prompt_messages

    model_dir = resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    data = [{"prompt": prompt_messages(p["prompt"]),
             "chosen": [{"role": "assistant", "content": p["chosen"].strip()}],
             "rejected": [{"role": "assistant", "content": p["rejected"].strip()}]} for p in _pairs(args.pairs)]
    common = dict(output_dir=str(scratch_dir("dpo-bench-")), max_length=args.max_length, per_device_train_batch_size=args.batch,
                  num_train_epochs=1, beta=0.1, learning_rate=4e-4, report_to=[], save_strategy="no",
                  logging_steps=10, use_cpu=True, disable_tqdm=True)
    if best:
        config = DPOConfig(**common, padding_free=True, gradient_checkpointing=False, bf16=args.dtype == "bf16",
                           precompute_ref_log_probs=args.trl_precompute_ref,
                           precompute_ref_batch_size=2 * args.batch if args.trl_precompute_ref else None)
    else:
        config = DPOConfig(**common)
    precompute = {"seconds": 0.0}
    original = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **kw):  # runs inside the constructor: timed so it counts as training
        start = time.perf_counter()
        try:
            return original(self, *a, **kw)
        finally:
            precompute["seconds"] += time.perf_counter() - start

    DPOTrainer._precompute_ref_logps = timed_precompute
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(data), processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    counts = {"real": 0, "slots": 0}
    collate = trainer.data_collator

    def counting_collator(batch):
        out = collate(batch)
        counts["real"] += int(out["attention_mask"].sum()) if "attention_mask" in out else out["input_ids"].numel()
        counts["slots"] += out["input_ids"].numel()
        return out

    trainer.data_collator = counting_collator
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start + precompute["seconds"]
    return {"seconds": seconds, "precompute_seconds": precompute["seconds"], "pairs": len(trainer.train_dataset),
            "tokens": counts["real"], "padding": 1 - counts["real"] / counts["slots"],
            "dtype": "bf16" if config.bf16 else "fp32", "steps": trainer.state.global_step,
            "gradient_checkpointing": bool(config.gradient_checkpointing),
            "padding_free_used": bool(getattr(trainer, "padding_free", False))}


def run_tunelab(args) -> dict:
    import tunelab
    from tunelab.models import CAUSAL_LM, load_model
    from tunelab.stages import dpo

    work = scratch_dir("dpo-bench-")
    pairs = _pairs(args.pairs)
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = {  # as examples/rlhf/dpo.yaml, from the base model, without eval
        "name": "bench-dpo", "model": "smollm2-135m", "stage": {"name": "dpo", "beta": 0.1},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": str(data), "eval_fraction": 0.0},
        "train": {"epochs": 1, "batch_size": args.batch, "max_length": args.max_length, "lr": 4e-4,
                  "logging_steps": 10, "save_steps": 0, "eval_before": False},
        "output_dir": str(work / "runs"),
    }
    run_dir = tunelab.train(config, args.tunelab_set, quiet=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    _, tokenizer = load_model("smollm2-135m", CAUSAL_LM)
    encoded = [dpo.encode_pair(tokenizer, p, args.max_length) for p in pairs]  # what the stage trained on
    tokens = sum(len(e["input_ids"]) + len(e["rejected_ids"]) for e in encoded)
    return {"seconds": summary["train_seconds"], "precompute_seconds": 0.0, "pairs": summary["train_examples"],
            "tokens": tokens, "padding": None, "dtype": summary["precision"], "steps": summary["steps"],
            "gradient_checkpointing": False, "padding_free_used": False}


def child(args) -> None:
    started = time.perf_counter()
    result = run_tunelab(args) if args.child == "tunelab" else run_trl(args, best=args.child == "trl-best")
    emit(result, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated: stock, trl-best, tunelab")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4, help="pairs per optimizer step")
    parser.add_argument("--max-length", type=int, default=320, help="tokens per sequence (320: no pair of the first 128 is cut)")
    parser.add_argument("--trl-dtype", choices=["auto", "bf16", "fp32"], default="auto",
                        help="trl-best's dtype (auto: the higher measured matmul peak)")
    parser.add_argument("--trl-precompute-ref", action="store_true",
                        help="trl-best: precompute the reference log-probs before training")
    add_child_arguments(parser, PATHS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    paths = chosen_paths(args.paths, PATHS)

    machine = machine_report()
    dtype = machine["fastest"] if args.trl_dtype == "auto" else args.trl_dtype
    print(f"{args.pairs} pairs, {args.batch} pairs per step, max_length {args.max_length}; trl-best dtype {dtype}"
          f"{', reference log-probs precomputed' if args.trl_precompute_ref else ''}", flush=True)
    results = {}
    for path in paths:
        argv = ["--child", path, "--dtype", dtype, "--pairs", str(args.pairs), "--batch", str(args.batch),
                "--max-length", str(args.max_length), *(["--trl-precompute-ref"] if args.trl_precompute_ref else []),
                *tunelab_set_argv(args)]
        results[path] = run_child(__file__, argv, f"dpo {path}")

    print(f"{'path':<9} {'dtype':<5} {'pairs':>5} {'pairs/s':>8} {'tokens':>7} {'padding':>8} {'train s':>8} {'of which ref':>12} "
          f"{'total s':>8} {'peak RSS MB':>12} {'load':>5}")
    for path, r in results.items():
        padding = f"{r['padding']:.1%}" if r["padding"] is not None else "-"
        print(f"{path:<9} {r['dtype']:<5} {r['pairs']:>5} {r['pairs'] / r['seconds']:>8.3f} {r['tokens']:>7} {padding:>8} "
              f"{r['seconds']:>8.1f} {r['precompute_seconds']:>12.1f} {r['process_seconds']:>8.1f} "
              f"{r['peak_rss_mb']:>12.0f} {r['load_end']:>5.1f}")
    print("RESULTS " + json.dumps(results))
    mine = results.get("tunelab")
    for other in ("trl-best", "stock"):
        theirs = results.get(other)
        if mine is None or theirs is None:
            continue
        target = " (target >= 2.0x)" if other == "trl-best" else ""
        rate = ratio(mine["pairs"] / mine["seconds"], theirs["pairs"] / theirs["seconds"])
        print(f"ratios dpo tunelab/{other}: pairs/s {rate}{target}, "
              f"wall time on the same {args.pairs} pairs {ratio(mine['seconds'], theirs['seconds'])}"
              f"{'' if mine['pairs'] == theirs['pairs'] else ' (NOT the same: they trained on different pair counts)'}, "
              f"peak RSS {ratio(mine['peak_rss_mb'], theirs['peak_rss_mb'])}")


if __name__ == "__main__":
    main()
