"""Classification training throughput: transformers' Trainer + peft (stock, and at its best) vs tunelab.

Each path runs in its own child process (so peak RSS is its own), one after the other; the parent
prints the machine first, then one table, then the ratios last.

  python bench/classify_throughput.py [--paths stock,hf-best,tunelab] [--model minilm-l6]
                                      [--rows 512] [--batch 16] [--max-length 128]

All paths: the same first N real email rows of data/spam/email_train.jsonl (spam/ham, natural
length spread, truncated at max_length), LoRA r=16 alpha=32 dropout 0 on every linear layer of the
backbone plus a trainable classification head, N/batch optimizer steps of `--batch` rows, one epoch,
lr 2e-3, no evaluation during training.
  stock     what the transformers/peft tutorials write: AutoModelForSequenceClassification +
            get_peft_model(task_type SEQ_CLS), Trainer with default TrainingArguments (fp32),
            DataCollatorWithPadding (each batch padded to its longest), file order shuffled.
  hf-best   the same made as fast as its options go on a CPU: the machine's faster dtype (bf16
            autocast on AMX, else fp32: the higher of the two matmul peaks the parent measured),
            train_sampling_strategy="group_by_length" (batches of similar length: little padding),
            no gradient checkpointing.
  tunelab   its classify stage with its defaults (precision auto, frozen weights in the compute
            dtype, fused LoRA layers, length-grouped batches), pooling mean, linear head.
The heads differ (transformers' BERT pooler + linear for stock/hf-best, a mean pool + linear for
tunelab; a decoder pools its last token in every path); both are a rounding error next to the
backbone.

Figures: rows/s = rows / train s; train s = wall time of trainer.train() (tunelab: its
summary's train_seconds); real tok = non-padding tokens per epoch; padding = share of batch slots
that were padding; total s = the child's whole life; peak RSS = the child's VmHWM; load = the
1-minute load average when the child finished (2 = both cores busy).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import REPO, add_child_arguments, chosen_paths, emit, machine_report, ratio, run_child, scratch_dir, tunelab_set_argv

DATA = REPO / "data/spam/email_train.jsonl"
PATHS = ("stock", "hf-best", "tunelab")
TARGET = 2.0  # tunelab vs hf-best rows/s, as for the other stages


def _rows(n: int) -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines()][:n]


def run_hf(args, best: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from tunelab.models import resolve

    rows = _rows(args.rows)
    labels = sorted({r["label"] for r in rows})
    model_dir = resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:  # a decoder: pad with end-of-sequence, as the tutorials do
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    model.config.pad_token_id = tokenizer.pad_token_id
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="SEQ_CLS"))
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=args.max_length)
    data = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                              "labels": [labels.index(r["label"]) for r in rows]})
    options = dict(output_dir=str(scratch_dir("classify-bench-")), per_device_train_batch_size=args.batch, num_train_epochs=1,
                   learning_rate=2e-3, report_to=[], save_strategy="no", logging_steps=10, use_cpu=True,
                   disable_tqdm=True)
    if best:
        options.update(bf16=args.dtype == "bf16", train_sampling_strategy="group_by_length",
                       gradient_checkpointing=False)
    config = TrainingArguments(**options)
    counts = {"real": 0, "slots": 0}
    pad = DataCollatorWithPadding(tokenizer)

    def counting_collator(batch):
        out = pad(batch)
        counts["real"] += int(out["attention_mask"].sum())
        counts["slots"] += out["input_ids"].numel()
        return out

    trainer = Trainer(model=model, args=config, train_dataset=data, data_collator=counting_collator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": len(rows), "tokens": counts["real"], "padding": 1 - counts["real"] / counts["slots"],
            "dtype": "bf16" if config.bf16 else "fp32", "steps": trainer.state.global_step,
            "threads": torch.get_num_threads()}


def run_tunelab(args) -> dict:
    import torch

    import tunelab
    from tunelab.inference.classify import encode_texts
    from tunelab.models import SEQ_CLS, load_model

    work = scratch_dir("classify-bench-")
    rows = _rows(args.rows)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "name": "bench-classify", "model": args.model,
        "stage": {"name": "classify", "head": "linear", "pooling": "mean" if args.model != "smollm2-135m" else "last"},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": str(data), "eval_fraction": 0.0},
        "train": {"epochs": 1, "batch_size": args.batch, "max_length": args.max_length, "lr": 2e-3,
                  "logging_steps": 10, "save_steps": 0, "eval_before": False},
        "output_dir": str(work / "runs"),
    }
    run_dir = tunelab.train(config, args.tunelab_set, quiet=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    _, tokenizer = load_model(args.model, SEQ_CLS, num_labels=2)
    lengths = [len(ids) for ids in encode_texts(tokenizer, [r["text"] for r in rows], args.max_length)]
    return {"seconds": summary["train_seconds"], "rows": summary["train_examples"], "tokens": sum(lengths),
            "padding": None, "dtype": summary["precision"], "steps": summary["steps"], "threads": torch.get_num_threads()}


def child(args) -> None:
    started = time.perf_counter()
    result = run_tunelab(args) if args.child == "tunelab" else run_hf(args, best=args.child == "hf-best")
    emit(result, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated: stock, hf-best, tunelab")
    parser.add_argument("--model", default="minilm-l6", help="minilm-l6 (encoder) or smollm2-135m (decoder)")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16, help="rows per optimizer step")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--hf-dtype", choices=["auto", "bf16", "fp32"], default="auto",
                        help="hf-best's dtype (auto: the higher measured matmul peak)")
    add_child_arguments(parser, PATHS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    paths = chosen_paths(args.paths, PATHS)

    machine = machine_report()
    dtype = machine["fastest"] if args.hf_dtype == "auto" else args.hf_dtype
    print(f"{args.model}, {args.rows} email rows, batch {args.batch}, max_length {args.max_length}; "
          f"hf-best dtype {dtype}", flush=True)
    results = {}
    for path in paths:
        argv = ["--child", path, "--dtype", dtype, "--model", args.model, "--rows", str(args.rows),
                "--batch", str(args.batch), "--max-length", str(args.max_length),
                *tunelab_set_argv(args)]
        results[path] = run_child(__file__, argv, f"classify {path}")

    print(f"{'path':<8} {'dtype':<5} {'rows':>5} {'rows/s':>7} {'real tok':>8} {'padding':>8} {'train s':>8} "
          f"{'total s':>8} {'peak RSS MB':>12} {'load':>5}")
    for path, r in results.items():
        padding = f"{r['padding']:.1%}" if r["padding"] is not None else "-"
        print(f"{path:<8} {r['dtype']:<5} {r['rows']:>5} {r['rows'] / r['seconds']:>7.2f} {r['tokens']:>8} {padding:>8} "
              f"{r['seconds']:>8.1f} {r['process_seconds']:>8.1f} {r['peak_rss_mb']:>12.0f} {r['load_end']:>5.1f}")
    print("RESULTS " + json.dumps(results))
    mine = results.get("tunelab")
    for other in ("hf-best", "stock"):
        theirs = results.get(other)
        if mine is None or theirs is None:
            continue
        target = f" (target >= {TARGET}x)" if other == "hf-best" else ""
        print(f"ratios classify tunelab/{other}: rows/s {ratio(mine['rows'] / mine['seconds'], theirs['rows'] / theirs['seconds'])}"
              f"{target}, wall time on the same {args.rows} rows {ratio(mine['seconds'], theirs['seconds'])}, "
              f"peak RSS {ratio(mine['peak_rss_mb'], theirs['peak_rss_mb'])}")


if __name__ == "__main__":
    main()
