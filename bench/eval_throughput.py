"""Evaluation throughput: tunelab's reward scoring, classifier eval and greedy generation vs plain transformers.

  python bench/eval_throughput.py [--runs DIR] [--pairs 24] [--rows 48] [--gen-rows 4] [--max-new-tokens 24]
                                  [--tasks reward,classify,generate] [--classifiers minilm-l6[,smollm2-135m]]

Runs (trained once into ``--runs DIR`` and reused by later invocations, so before/after measure the
same weights; a temp dir without it): a LoRA reward run on smollm2-135m (HH-RLHF train pairs), LoRA
classify runs on the bundled classifiers (SMS spam), a LoRA sft run on smollm2-135m (Dolly). Each is
a few optimizer steps: the weights only need to be a real trained adapter, not a good model.

Tasks, each timed on the same rows for both paths in this one process (model already loaded):
  reward    the held-out HH pairs (data/preference/hh_helpful_eval.jsonl), chosen and rejected
            tunelab: `tunelab eval`'s reward evaluation (pairwise accuracy + margin), and
            ``score`` (what `tunelab score` and RLHF call) on the same 2 x pairs sequences
  classify  the spam test rows (data/spam/email_test.jsonl): `tunelab eval`'s classify evaluation
  generate  greedy replies to Dolly prompts: the generation `tunelab eval --generate` runs
  plain     the run's model as `tunelab.load` returns it (transformers + peft, adapter unmerged),
            driven the obvious way: batches of --batch in file order, padded by the tokenizer
            (left for generation), torch.no_grad; the same token ids as tunelab's path.

Figures: seq/s (sequences scored, or replies generated, per second), tok/s (real, non-padding
tokens per second: for generation prompt + generated tokens), GFLOP/s achieved on real tokens at
2 FLOPs per linear weight of the base model per token (the LM head only on generated tokens;
attention and LoRA's own matmuls not counted), and that as a share of the best 2048^2 matmul
FLOP/s measured here in fp32 and bf16. The machine line comes first, the ratios last.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))
from _common import matmul_peak_flops, scratch_dir  # noqa: E402  (one matmul probe for every bench)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PAIRS = REPO / "data/preference/hh_helpful_eval.jsonl"
SPAM_TEST = REPO / "data/spam/email_test.jsonl"
SPAM_TRAIN = REPO / "data/spam/sms_train_200.jsonl"
DOLLY = REPO / "data/instruct/dolly_subset.jsonl"


def linear_weights(model) -> tuple[int, int]:
    """(weights in the base model's body linear layers, weights of the LM head or 0): LoRA's own excluded."""
    import torch

    head = getattr(model, "get_output_embeddings", lambda: None)()
    head_n = head.weight.numel() if isinstance(head, torch.nn.Linear) else 0
    body = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name and module is not head:
            body += module.weight.numel()
    return body, head_n


def _config(stage: str, model: str, data: str, out: Path, max_length: int, **stage_cfg) -> dict:
    return {"model": model, "stage": {"name": stage, **stage_cfg},
            "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
            "data": {"train": data, "eval_fraction": 0.01},
            "train": {"max_steps": 1, "batch_size": 2, "max_length": max_length, "lr": 1e-3, "warmup_ratio": 0.0,
                      "logging_steps": 1, "save_steps": 0, "eval_before": False, "eval_steps": None},
            "output_dir": str(out), "name": f"bench-{stage}-{model}"}


def ensure_run(root: Path, key: str, config: dict) -> Path:
    """A finished run under ``root/key``, trained now if it is not there yet."""
    import tunelab

    marker = root / f"{key}.path"
    if marker.is_file() and (Path(marker.read_text().strip()) / "summary.json").is_file():
        return Path(marker.read_text().strip())
    config["output_dir"] = str(root / key)
    print(f"training {key} (a few steps) ...", file=sys.stderr, flush=True)
    run_dir = tunelab.train(config, quiet=True)
    marker.write_text(str(run_dir))
    return Path(run_dir)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------- plain transformers paths


def plain_scores(model, tokenizer, sequences: list[list[int]], batch: int, column: int | None = 0) -> "list":
    """Logits of padded batches of ``batch`` sequences in file order, torch.no_grad."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch):
            padded = tokenizer.pad({"input_ids": sequences[start:start + batch]}, return_tensors="pt")
            logits = model(**padded).logits.float()
            out.extend(logits[:, column].tolist() if column is not None else torch.softmax(logits, -1).tolist())
    return out


def plain_generate(model, tokenizer, prompts: list[list[int]], batch: int, max_new_tokens: int) -> list[list[int]]:
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    replies = []
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch):
                padded = tokenizer.pad({"input_ids": prompts[start:start + batch]}, return_tensors="pt")
                out = model.generate(**padded, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
                replies.extend(_reply_ids(row[padded["input_ids"].shape[1]:].tolist(), tokenizer) for row in out)
    finally:
        tokenizer.padding_side = side
    return replies


def _reply_ids(ids: list[int], tokenizer) -> list[int]:
    """Generated tokens up to and including the first end-of-sequence token (the rest is padding)."""
    eos = tokenizer.eos_token_id
    return ids[: ids.index(eos) + 1] if eos in ids else ids


# --------------------------------------------------------------------------- tasks


def bench_reward(run_dir: Path, args) -> list[dict]:
    from tunelab.runs.open import load
    from tunelab.stages import reward
    from tunelab.stages.base import EvalOptions

    loaded = load(run_dir)
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()][: args.pairs]
    pairs = reward.build_examples(loaded.tokenizer, rows, loaded.config.train.max_length)
    sequences = [s for p in pairs for s in (p["input_ids"], p["rejected_ids"])]  # chosen, rejected per pair
    tokens = sum(map(len, sequences))
    body, _ = linear_weights(loaded.model)
    flops = 2 * body * tokens
    options = EvalOptions(batch_size=args.batch, max_rows=args.pairs)
    report, eval_s = timed(lambda: reward.evaluate(loaded, "hh", str(PAIRS), options))
    prompts = [r["prompt"] for r in rows for _ in range(2)]
    responses = [x for r in rows for x in (r["chosen"], r["rejected"])]
    scores, score_s = timed(lambda: reward.score(loaded, prompts, responses, args.batch))
    plain, plain_s = timed(lambda: plain_scores(loaded.model, loaded.tokenizer, sequences, args.batch))
    acc = lambda s: sum(c > r for c, r in zip(s[0::2], s[1::2])) / len(rows)  # noqa: E731
    diff = max(abs(a - b) for a, b in zip(scores, plain))
    note = f"acc {report['pairwise_accuracy']:.4f} margin {report['margin']:+.4f}"
    return [
        {"task": "reward", "path": "tunelab eval", "n": len(sequences), "tokens": tokens, "s": eval_s, "flops": flops,
         "note": note},
        {"task": "reward", "path": "tunelab score", "n": len(sequences), "tokens": tokens, "s": score_s,
         "flops": flops, "note": f"acc {acc(scores):.4f}, max |score - plain| {diff:.2e}"},
        {"task": "reward", "path": "plain", "n": len(sequences), "tokens": tokens, "s": plain_s, "flops": flops,
         "note": f"acc {acc(plain):.4f}"},
    ]


def bench_classify(run_dir: Path, model_name: str, args) -> list[dict]:
    from tunelab.inference.classify import encode_texts
    from tunelab.runs.open import load
    from tunelab.stages import classify
    from tunelab.stages.base import EvalOptions

    loaded = load(run_dir)
    labels = loaded.config.stage.labels
    rows = [json.loads(line) for line in SPAM_TEST.read_text().splitlines()][: args.rows]
    sequences = encode_texts(loaded.tokenizer, [r["text"] for r in rows], loaded.config.train.max_length)
    tokens = sum(map(len, sequences))
    body, _ = linear_weights(loaded.model)
    flops = 2 * body * tokens
    options = EvalOptions(batch_size=args.batch, max_rows=args.rows)
    report, eval_s = timed(lambda: classify.evaluate(loaded, "email", str(SPAM_TEST), options))
    probs, plain_s = timed(lambda: plain_scores(loaded.model, loaded.tokenizer, sequences, args.batch, column=None))
    plain_acc = sum(labels[max(range(len(p)), key=p.__getitem__)] == r["label"] for p, r in zip(probs, rows)) / len(rows)
    task = f"classify {model_name}"
    return [
        {"task": task, "path": "tunelab eval", "n": len(rows), "tokens": tokens, "s": eval_s, "flops": flops,
         "note": f"acc {report['accuracy']:.4f}"},
        {"task": task, "path": "plain", "n": len(rows), "tokens": tokens, "s": plain_s, "flops": flops,
         "note": f"acc {plain_acc:.4f}"},
    ]


def bench_generate(run_dir: Path, args) -> list[dict]:
    from tunelab.runs.open import load
    from tunelab.stages._answers import generate_replies, prompt_ids

    loaded = load(run_dir)
    tokenizer = loaded.tokenizer
    rows = [json.loads(line) for line in DOLLY.read_text().splitlines()][: args.gen_rows]
    prompts = [prompt_ids(tokenizer, [{"role": "user", "content": r["instruction"] + (
        f"\n\n{r['context']}" if r.get("context") else "")}]) for r in rows]
    prompts = [p[-(loaded.config.train.max_length):] for p in prompts]
    body, head = linear_weights(loaded.model)
    replies, tl_s = timed(lambda: generate_replies(loaded.model, tokenizer, prompts, args.max_new_tokens, args.batch))
    plain, plain_s = timed(lambda: plain_generate(loaded.model, tokenizer, prompts, args.batch, args.max_new_tokens))
    plain_text = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in plain]
    same = sum(a == b for a, b in zip(replies, plain_text))
    prompt_tokens = sum(map(len, prompts))

    def row(path, seconds, generated, note):
        return {"task": "generate", "path": path, "n": len(prompts), "tokens": prompt_tokens + generated, "s": seconds,
                "flops": 2 * body * (prompt_tokens + generated) + 2 * head * generated, "note": note}

    plain_new = sum(map(len, plain))
    tl_new = sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in replies)  # ~: re-encoded + eos
    return [row("tunelab eval", tl_s, tl_new, f"{same}/{len(prompts)} replies equal to plain's"),
            row("plain", plain_s, plain_new, f"{plain_new} generated tokens")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, help="where the bench's runs are trained once and reused (default: temp)")
    parser.add_argument("--pairs", type=int, default=24, help="held-out HH pairs scored (2 sequences each)")
    parser.add_argument("--rows", type=int, default=48, help="spam test rows classified")
    parser.add_argument("--gen-rows", type=int, default=4, help="prompts answered greedily")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch", type=int, default=16, help="batch size (rows) of both paths")
    parser.add_argument("--tasks", default="reward,classify,generate")
    parser.add_argument("--classifiers", default="minilm-l6")
    parser.add_argument("--reward-model", default="smollm2-135m")
    parser.add_argument("--lm", default="smollm2-135m", help="model of the sft run that generates")
    args = parser.parse_args()

    import torch

    from tunelab.core.machine import machine_line

    print(f"machine: {machine_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    peak = {"fp32": matmul_peak_flops("float32"), "bf16": matmul_peak_flops("bfloat16")}
    print(f"square-matmul peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s", flush=True)
    root = args.runs or scratch_dir("eval-bench-")
    root.mkdir(parents=True, exist_ok=True)
    tasks = args.tasks.split(",")
    results: list[dict] = []

    def show(rows: list[dict]) -> None:  # each task's rows as soon as they are measured
        for r in rows:
            achieved = r["flops"] / r["s"]
            print(f"{r['task']:<24} {r['path']:<14} {r['n']:>5} {r['tokens']:>7} {r['s']:>7.2f} {r['n'] / r['s']:>7.2f} "
                  f"{r['tokens'] / r['s']:>8.0f} {achieved / 1e9:>8.1f} {achieved / peak['fp32']:>8.1%} "
                  f"{achieved / peak['bf16']:>8.1%}  {r['note']}", flush=True)
        results.extend(rows)

    print(f"{'task':<24} {'path':<14} {'seqs':>5} {'tokens':>7} {'s':>7} {'seq/s':>7} {'tok/s':>8} {'GFLOP/s':>8} "
          f"{'/fp32 pk':>8} {'/bf16 pk':>8}  notes", flush=True)
    if "reward" in tasks:
        run = ensure_run(root, f"reward-{args.reward_model}", _config(
            "reward", args.reward_model, str(REPO / "data/preference/hh_helpful_train.jsonl"), root, 256))
        show(bench_reward(run, args))
    if "classify" in tasks:
        for name in args.classifiers.split(","):
            run = ensure_run(root, f"classify-{name}", _config("classify", name, str(SPAM_TRAIN), root, 256))
            show(bench_classify(run, name, args))
    if "generate" in tasks:
        run = ensure_run(root, f"sft-{args.lm}", _config("sft", args.lm, str(DOLLY), root, 512))
        show(bench_generate(run, args))
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    by_task: dict[str, dict[str, float]] = {}
    for r in results:
        by_task.setdefault(r["task"], {})[r["path"]] = r["s"]
    ratios = []
    for task, paths in by_task.items():
        for path, seconds in paths.items():
            if path != "plain" and "plain" in paths:
                ratios.append(f"{task} {path.removeprefix('tunelab ')} {paths['plain'] / seconds:.2f}x")
    print("ratios tunelab/plain (seq/s): " + "; ".join(ratios))


if __name__ == "__main__":
    main()
