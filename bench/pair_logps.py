"""Response log-probabilities for DPO/RLHF: vocab projection on response positions only vs every position.

  python bench/pair_logps.py [--model smollm2-135m] [--pairs 32] [--batch 4] [--max-length 192] [--repeats 3]

Both paths compute the same per-sequence sums (the parity test is in tests/stages/test_dpo.py);
`full` projects every position onto the vocabulary, `kept` passes `logits_to_keep` (a boolean
mask of the positions that predict a response token). Timed in this one process on the same
batches of HH-RLHF held-out pairs (data/preference/hh_helpful_eval.jsonl) with a LoRA policy:
a training step's work (policy forward + backward, reference forward with the adapter off) and
an eval batch's work (both forwards, no gradients). Prints seconds and the kept/full ratios.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tunelab.methods import lora  # noqa: E402
from tunelab.models import CAUSAL_LM, load_model  # noqa: E402
from tunelab.stages import _reference, dpo  # noqa: E402


def _batches(tokenizer, args) -> list[dict]:
    rows = [json.loads(line) for line in (REPO / "data/preference/hh_helpful_eval.jsonl").read_text().splitlines()][: args.pairs]
    collate = dpo.PairCollator(tokenizer.pad_token_id)
    examples = [dpo.encode_pair(tokenizer, row, args.max_length) for row in rows]
    return [collate(examples[i:i + args.batch]) for i in range(0, len(examples), args.batch)]


def _time(model, reference, batches, train: bool) -> float:
    started = time.perf_counter()
    for batch in batches:
        args = (batch["input_ids"], batch["attention_mask"], batch["response_labels"])
        if train:
            _reference.sequence_logps(model, *args).sum().backward()
        else:
            with torch.no_grad():
                _reference.sequence_logps(model, *args)
        with reference.active() as ref:
            _reference.sequence_logps(ref, *args)
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model, CAUSAL_LM)
    model = lora.apply(model, lora.Config(r=16, alpha=32, dropout=0.0)).train()
    reference = _reference.Reference(model)
    batches = _batches(tokenizer, args)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    response = sum(int((b["response_labels"][:, 1:] != -100).sum()) for b in batches)
    print(f"{args.model}, {args.pairs} pairs in batches of {args.batch}: {tokens} tokens, "
          f"{response} response tokens ({100 * response / tokens:.1f}%), torch threads {torch.get_num_threads()}")
    real = _reference._accepts_logits_to_keep
    paths = {"full": lambda m: False, "kept": real}
    _time(model, reference, batches[:1], train=True)  # warm-up
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeats):  # interleaved so drift in machine load hits both paths alike
        for name, accepts in paths.items():
            _reference._accepts_logits_to_keep = accepts
            for work, train in (("train", True), ("eval", False)):
                seconds = _time(model, reference, batches, train)
                best[name, work] = min(best.get((name, work), float("inf")), seconds)
    _reference._accepts_logits_to_keep = real
    print(f"{'path':<6} {'train-step work s':>18} {'eval work s':>12}   (best of {args.repeats})")
    for name in paths:
        print(f"{name:<6} {best[name, 'train']:>18.2f} {best[name, 'eval']:>12.2f}")
    print(f"ratios kept/full: train {best['kept', 'train'] / best['full', 'train']:.2f}x time, "
          f"eval {best['kept', 'eval'] / best['full', 'eval']:.2f}x time; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (process)")


if __name__ == "__main__":
    main()
