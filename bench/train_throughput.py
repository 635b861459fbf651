"""Training throughput, LoRA and full SFT: stock TRL, TRL at its best, and tunelab, same model and data.

Every (method, path) runs in its own child process (so peak RSS is its own), one after the other;
the parent prints the machine first, then one table, then the ratios last.

  python bench/train_throughput.py [--methods lora,full] [--paths stock,trl-best,tunelab]
                                   [--examples 128] [--max-length 512] [--rounds 1]

`--rounds N` runs every child N times, the paths in reverse order in every second round, so a
machine whose speed drifts during the invocation (a shared host: the same child has varied by up
to 40% from one run to the next) slows both sides of a comparison alike. The table then has one
row per round; each ratio is given per round and as their median.

All paths: smollm2-135m, the same first N real instruction examples (data/instruct/, natural
length spread), max_length 512, one epoch. Methods: `lora` (r=16, alpha=32, all linear layers,
dropout 0) and `full` (every weight trains).
  stock     what a new user writes: SFTTrainer (+ LoraConfig) with default options and bf16=True,
            8 examples per step, loss on every token. TRL 1.x defaults gradient_checkpointing to
            True, so stock recomputes activations; no packing, batches padded to their longest.
  trl-best  SFTTrainer as fast as its options make it on a CPU: packing=True with the 'bfd'
            strategy and padding_free=True (one flattened row; transformers derives per-example
            attention from position_ids), gradient_checkpointing=False, the machine's faster
            dtype (bf16 autocast or fp32: the higher of the two matmul peaks the parent measured
            is passed to the child), prompt-completion data so the loss is on the responses only,
            as tunelab's. 1 packed row of <= max_length per micro-batch x 2 accumulated
            (--trl-rows, --trl-accum).
  tunelab   its defaults (packing, per-example attention, LM head on loss positions only,
            precision auto = bf16 where it is the faster dtype), asked for 1 packed row x 2
            accumulated (--tunelab-rows, --tunelab-accum), which train.merge_accumulation=auto
            trains as 2 rows x 1 (the same rows per optimizer step; the `rows x acc` column).
  tunelab-compile
            the same with train.compile=true (each decoder block through torch.compile). Its
            compile time is inside `train s`. Each child starts from an empty inductor cache (the
            first run on a machine) unless --compile-cache DIR is given: a second invocation with
            the same DIR measures the warm case (the compiled kernels come from disk).
  tunelab-threads
            the same tokens per optimizer step as `tunelab`, as twice the rows per micro-batch and
            half the accumulation, each micro-batch's rows split over two threads of one core each
            (train.row_threads=2; the option's own geometry: 2 rows x 1 by default).
trl-best and tunelab therefore see ~1,024 token slots per optimizer step; stock sees 8 examples.
trl-best and tunelab train on the same examples and the same tokens: both render SmolLM2's chat
template, and trl-best is given only the examples that keep a loss token within max_length (the
ones tunelab trains on; TRL's packed path would keep the rest as rows without loss), so their
useful-token and loss-token counts are equal and the rates compare like with like.

Figures:
  useful tok/s  non-padding tokens processed per second of training (trainer.train() only)
  padding       share of batch slots that were padding
  loss tok      positions that carried loss
  train s       wall time of trainer.train() over the same N examples
  total s       the child's whole life: imports, model load, tokenising, training, saving
  peak RSS      the child process's maximum resident set size (VmHWM)
  GFLOP/s       achieved, counting only the linear layers: per real token, 4 FLOPs per frozen
                weight (forward + input-gradient backward; LoRA) or 6 per trained weight (+ the
                weight gradient; full) for the body, and the same per LM-head weight at every
                position the head was evaluated at (TRL's fused head on CPU scores every slot,
                padding included; tunelab's only loss positions). Attention, LoRA's own small
                matmuls and activation recomputation are not counted.
  /peak         that as a share of the faster dtype's measured square-matmul peak
  load          the 1-minute load average when the child finished (2 means both cores busy)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _common import REPO, add_child_arguments, emit, machine_report, run_child, scratch_dir, tunelab_set_argv

DATA = [REPO / "data/instruct/dolly_subset.jsonl", REPO / "data/instruct/self_instruct_human.jsonl"]
PATHS = ("stock", "trl-best", "tunelab", "tunelab-compile", "tunelab-threads")
METHODS = ("lora", "full")
TARGETS = {"lora": {"tps": 3.0, "wall": 0.33, "rss": 0.75}, "full": {"tps": 2.0}}  # tunelab vs trl-best


def _rows(n: int) -> list[dict]:
    rows = [json.loads(line) for path in DATA for line in path.read_text().splitlines()][:n]
    return [{"user": r["instruction"] + (f"\n\n{r['context']}" if r.get("context") else ""), "assistant": r["response"]}
            for r in rows]


def _messages(rows: list[dict]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": r["user"]}, {"role": "assistant", "content": r["assistant"]}]}
            for r in rows]


def _with_loss(rows: list[dict], tokenizer, args) -> list[dict]:
    """The examples that keep a loss token within max_length: those tunelab trains on. TRL's packed
    path keeps the others as rows that carry no loss (9 of the first 128 at 512: 4,608 tokens of
    forward and backward that teach nothing), so trl-best gets the same examples as tunelab."""
    from tunelab.data.tokenize import encode_chat

    return [r for r in rows if encode_chat(tokenizer, _messages([r])[0]["messages"], args.max_length)]


def linear_weights(model_dir: str) -> tuple[int, int]:
    """(weights in the transformer body's linear layers, weights in the LM head)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    head = model.get_output_embeddings().weight.numel()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) - head
    return body, head


# --------------------------------------------------------------------------- the paths (run in a child)


def run_trl(args, best: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunelab.models import resolve

    model_dir = resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = _rows(args.examples)
    common = dict(output_dir=str(scratch_dir("train-bench-")), max_length=args.max_length, num_train_epochs=1, report_to=[],
                  save_strategy="no", logging_steps=10, use_cpu=True, disable_tqdm=True,
                  learning_rate=2e-4 if args.method == "lora" else 2e-5)
    if best:
        config = SFTConfig(**common, per_device_train_batch_size=args.trl_rows, gradient_accumulation_steps=args.trl_accum,
                           packing=True, packing_strategy="bfd", padding_free=True, gradient_checkpointing=False,
                           bf16=args.dtype == "bf16")
        data = [{"prompt": [{"role": "user", "content": r["user"]}],
                 "completion": [{"role": "assistant", "content": r["assistant"]}]} for r in _with_loss(rows, tokenizer, args)]
    else:  # stock: TRL's defaults (gradient checkpointing on), bf16 as the user set it
        config = SFTConfig(**common, per_device_train_batch_size=args.batch, bf16=True)
        data = _messages(rows)
    peft_config = (LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
                   if args.method == "lora" else None)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(data), processing_class=tokenizer,
                         peft_config=peft_config)
    counts = {"real": 0, "slots": 0, "loss": 0}
    collate = trainer.data_collator

    def counting_collator(batch):
        out = collate(batch)
        counts["real"] += int(out["attention_mask"].sum()) if "attention_mask" in out else out["input_ids"].numel()
        counts["slots"] += out["input_ids"].numel()
        counts["loss"] += int((out["labels"] != -100).sum())
        return out

    trainer.data_collator = counting_collator  # after construction: padding-free refuses a collator passed in
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "useful_tokens": counts["real"], "padding": 1 - counts["real"] / counts["slots"],
            "loss_tokens": counts["loss"], "head_tokens": counts["slots"], "model_dir": model_dir,
            "dtype": "bf16" if config.bf16 else "fp32", "steps": trainer.state.global_step, "examples": len(data),
            "geometry": f"{trainer.args.per_device_train_batch_size}x{trainer.args.gradient_accumulation_steps}",
            "gradient_checkpointing": bool(config.gradient_checkpointing)}


def run_tunelab(args, compiled: bool = False, threads: int = 1) -> dict:
    if compiled:  # before torch is imported: inductor reads its cache directory once
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.compile_cache or scratch_dir("train-bench-") / "inductor")
    import tunelab
    from tunelab.models import resolve

    work = scratch_dir("train-bench-")
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in _messages(_rows(args.examples))))
    method = ({"name": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"} if args.method == "lora"
              else {"name": "full"})
    config = {
        "name": "bench", "model": "smollm2-135m", "stage": "sft", "method": method,
        "data": {"train": str(data), "eval_fraction": 0.0},
        "train": {"epochs": 1, "batch_size": args.tunelab_rows * threads,
                  "grad_accum": max(1, args.tunelab_accum // threads), "row_threads": threads,
                  "max_length": args.max_length, "save_steps": 0, "logging_steps": 10, "eval_before": False,
                  "lr": 2e-4 if args.method == "lora" else 2e-5},
        "output_dir": str(work / "runs"),
    }
    overrides = [*args.tunelab_set, *(["train.compile=true"] if compiled else [])]
    run_dir = tunelab.train(config, overrides, quiet=True)  # --tunelab-set: e.g. train.precision=fp32
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seconds": summary["train_seconds"], "useful_tokens": summary["batched_tokens"],
            "padding": summary["padding_fraction"], "loss_tokens": summary["loss_tokens"],
            # the chunked loss evaluates the LM head only at loss-bearing positions
            "head_tokens": summary["loss_tokens"], "model_dir": resolve("smollm2-135m"),
            "dtype": summary["precision"], "steps": summary["steps"], "gradient_checkpointing": False,
            "geometry": f"{summary['micro_batch_rows']}x{summary['accumulated_micro_batches']}"}


def child(args) -> None:
    started = time.perf_counter()
    if args.child.startswith("tunelab"):
        result = run_tunelab(args, compiled=args.child == "tunelab-compile",
                             threads=2 if args.child == "tunelab-threads" else 1)
    else:
        result = run_trl(args, best=args.child == "trl-best")
    emit(result, started)


# --------------------------------------------------------------------------- the parent


def _table(results: dict, peaks: dict, fastest: str) -> dict:
    """One row per (method, path, round); returns each row's figures under the same key."""
    body, head = linear_weights(next(iter(results.values()))["model_dir"])
    print(f"{'method':<6} {'path':<15} {'round':>5} {'dtype':<5} {'useful tok/s':>12} {'padding':>8} {'useful tok':>10} "
          f"{'loss tok':>9} {'rows x acc':>10} {'train s':>8} {'total s':>8} {'peak RSS MB':>12} {'GFLOP/s':>8} {'/peak':>6} {'load':>5}")
    rows = {}
    for (method, path, round_), r in sorted(results.items()):
        per_weight = 4 if method == "lora" else 6  # frozen: forward + input grad; trained: + weight grad
        achieved = per_weight * (body * r["useful_tokens"] + head * r["head_tokens"]) / r["seconds"]
        row = rows[method, path, round_] = {"tps": r["useful_tokens"] / r["seconds"], "wall": r["seconds"],
                                            "rss": r["peak_rss_mb"], "flops": achieved}
        print(f"{method:<6} {path:<15} {round_:>5} {r['dtype']:<5} {row['tps']:>12.1f} {r['padding']:>8.1%} "
              f"{r['useful_tokens']:>10} {r['loss_tokens']:>9} {r['geometry']:>10} {r['seconds']:>8.1f} {r['process_seconds']:>8.1f} "
              f"{r['peak_rss_mb']:>12.0f} {achieved / 1e9:>8.1f} {achieved / peaks[fastest]:>6.1%} {r['load_end']:>5.1f}")
    return rows


def _ratios(rows: dict, methods: list[str], examples: int, rounds: int) -> None:
    """Per pair of paths: each figure's ratio in every round, and (several rounds) their median."""
    pairs = [(m, ours, other) for m in methods for ours in ("tunelab", "tunelab-compile", "tunelab-threads") for other in ("trl-best", "stock")]
    for method, ours, other in pairs:
        if (method, ours, 1) not in rows or (method, other, 1) not in rows:
            continue
        targets = TARGETS.get(method, {}) if other == "trl-best" else {}

        def figure(key: str, sign: str) -> str:
            per_round = [rows[method, ours, r][key] / rows[method, other, r][key] for r in range(1, rounds + 1)]
            text = f"{statistics.median(per_round):.2f}x"
            if rounds > 1:
                text = f"median {text} (rounds {', '.join(f'{x:.2f}x' for x in per_round)})"
            return text + (f" (target {sign} {targets[key]}x)" if key in targets else "")

        print(f"ratios {method} {ours}/{other}: useful tok/s {figure('tps', '>=')}, "
              f"wall time on the first {examples} examples {figure('wall', '<=')}, "
              f"peak RSS {figure('rss', '<=')}, achieved FLOP/s {figure('flops', '>=')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora,full", help="comma-separated: lora, full")
    parser.add_argument("--paths", default="stock,trl-best,tunelab",
                        help="comma-separated: stock, trl-best, tunelab, tunelab-compile, tunelab-threads")
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8, help="examples per optimizer step (stock path)")
    parser.add_argument("--tunelab-rows", type=int, default=1, help="packed rows of max_length per micro-batch")
    parser.add_argument("--tunelab-accum", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--trl-rows", type=int, default=1, help="trl-best: packed rows of max_length per micro-batch")
    parser.add_argument("--trl-accum", type=int, default=2, help="trl-best: micro-batches per optimizer step")
    parser.add_argument("--trl-dtype", choices=["auto", "bf16", "fp32"], default="auto",
                        help="trl-best's dtype (auto: the higher measured matmul peak)")
    parser.add_argument("--compile-cache", type=Path, help="tunelab-compile's inductor cache (default: empty per child)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every child this many times, the paths reversed in every second round")
    parser.add_argument("--method", choices=METHODS, default="lora")
    add_child_arguments(parser, PATHS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    methods, paths = args.methods.split(","), args.paths.split(",")
    unknown = [m for m in methods if m not in METHODS] + [p for p in paths if p not in PATHS]
    if unknown:
        sys.exit(f"error: unknown method or path {unknown[0]!r} (methods: {', '.join(METHODS)}; paths: {', '.join(PATHS)})")
    for name in ("rounds", "tunelab_rows", "tunelab_accum", "trl_rows", "trl_accum"):
        if getattr(args, name) < 1:
            sys.exit(f"error: --{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")

    machine = machine_report()
    dtype = machine["fastest"] if args.trl_dtype == "auto" else args.trl_dtype
    print(f"examples {args.examples}, max_length {args.max_length}; trl-best dtype {dtype}", flush=True)
    results = {}
    for round_ in range(1, args.rounds + 1):
        for method in methods:
            for path in (paths if round_ % 2 else paths[::-1]):
                argv = ["--child", path, "--method", method, "--dtype", dtype, "--examples", str(args.examples),
                        "--max-length", str(args.max_length), "--batch", str(args.batch),
                        "--tunelab-rows", str(args.tunelab_rows), "--tunelab-accum", str(args.tunelab_accum),
                        "--trl-rows", str(args.trl_rows), "--trl-accum", str(args.trl_accum),
                        *tunelab_set_argv(args),
                        *(["--compile-cache", str(args.compile_cache)] if args.compile_cache else [])]
                label = f"{method} {path}" + (f" round {round_}" if args.rounds > 1 else "")
                results[method, path, round_] = run_child(__file__, argv, label)
    rows = _table(results, machine["peaks"], machine["fastest"])
    print("RESULTS " + json.dumps({" ".join(map(str, key)): r for key, r in results.items()}))
    _ratios(rows, methods, args.examples, args.rounds)


if __name__ == "__main__":
    main()
