"""Training improves what each stage optimises, on a tiny task it can learn in a few seeded steps.

Every other stage test checks shapes, parity with a formula or that weights moved; these check
direction: held-out loss falls (pretrain, sft), held-out accuracy rises (classify, reward), the
DPO margin grows, RLOO raises a rule-based reward while the KL penalty holds the policy near its
reference. All data is SYNTHETIC and made up here; runs go through the engine in-process.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_config, write_rows
from tunelab.training.engine import train

# SYNTHETIC sums: 40 to train on, the other 9 held out (no held-out prompt is seen in training).
SUMS = [(a, b) for a in range(2, 9) for b in range(2, 9)]
TRAIN_SUMS, HELD_OUT_SUMS = SUMS[:40], SUMS[40:]


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["metrics"]


def _run(tmp_path, stage, rows, held_out, *, model="tiny-llama", method="full", stage_options=None, **train_options):
    data = write_rows(tmp_path / "train.jsonl", rows)
    cfg = tiny_config(stage, method, data, tmp_path / "runs", eval_before=True, **train_options)
    cfg["model"] = model
    cfg["data"]["eval"] = str(write_rows(tmp_path / "held_out.jsonl", held_out))
    cfg["stage"] = {"name": stage, **(stage_options or {})}
    return train(cfg, quiet=True)


# --------------------------------------------------------------------------- language models


@torch.no_grad()
def _plain_nll(model, examples: list[dict]) -> float:
    """Mean next-token NLL over labelled tokens with full logits and F.cross_entropy: independent
    of the stages' chunked loss, so a wrong training loss cannot also fool the measurement."""
    total, count = 0.0, 0
    for example in examples:
        ids, labels = torch.tensor([example["input_ids"]]), torch.tensor(example["labels"][1:])
        logits = model.eval()(input_ids=ids).logits[0, :-1]
        total += torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
        count += int((labels != -100).sum())
    return total / count


def _held_out_nll_before_and_after(run: Path, examples) -> tuple[float, float]:
    import tunelab
    from tunelab.models import load_model

    return _plain_nll(load_model("tiny-llama")[0], examples), _plain_nll(tunelab.load(run).model, examples)


def test_pretrain_lowers_held_out_loss(tmp_path, tiny_tokenizer):
    from tunelab.data.tokenize import encode_text

    text = lambda a, b: {"text": f"The sum of {a} and {b} is {a + b}. The sum of {b} and {a} is {a + b}."}
    held_out = [text(a, b) for a, b in HELD_OUT_SUMS]
    run = _run(tmp_path, "pretrain", [text(a, b) for a, b in TRAIN_SUMS], held_out,
               max_steps=6, batch_size=4, lr=5e-3)
    m = _summary(run)
    assert m["eval_loss"] < m["before_eval_loss"] - 2.0, m
    assert m["eval_perplexity"] < m["before_eval_perplexity"]
    before, after = _held_out_nll_before_and_after(
        run, [w for row in held_out for w in encode_text(tiny_tokenizer, row["text"], 64)])
    assert after < before - 2.0, (before, after)


def test_sft_lowers_held_out_loss(tmp_path, tiny_tokenizer):
    from tunelab.data.tokenize import encode_chat

    row = lambda a, b: {"instruction": f"What is {a} plus {b}?", "context": "", "response": f"The answer is {a + b}."}
    held_out = [row(a, b) for a, b in HELD_OUT_SUMS]
    run = _run(tmp_path, "sft", [row(a, b) for a, b in TRAIN_SUMS], held_out,
               max_steps=6, batch_size=4, lr=5e-3, packing=False)
    m = _summary(run)
    assert m["eval_loss"] < m["before_eval_loss"] - 2.0, m
    chats = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["response"]}]}
             for r in held_out]
    before, after = _held_out_nll_before_and_after(run, [encode_chat(tiny_tokenizer, c["messages"], 64) for c in chats])
    assert after < before - 2.0, (before, after)


# --------------------------------------------------------------------------- classify


def test_classify_raises_held_out_accuracy(tmp_path):
    from tunelab.config import load_config
    from tunelab.evaluate import evaluate
    from tunelab.inference.classify import predict_proba
    from tunelab.stages import classify

    things = ["snow", "grass", "coal", "rust", "plums", "carrots", "bananas", "the sky", "rain", "tea",
              "music", "books", "dogs", "cats", "trains", "bread"]
    row = lambda i, thing: {"text": f"I {'love' if i % 2 else 'hate'} {thing}.", "label": "pos" if i % 2 else "neg"}
    train_rows = [row(i + j, t) for j, t in enumerate(things[:12]) for i in (0, 1)]
    held_out = [row(i + j, t) for j, t in enumerate(things[12:]) for i in (0, 1)]
    run = _run(tmp_path, "classify", train_rows, held_out, model="tiny-bert", max_steps=12, batch_size=8, lr=1e-3,
               max_length=16, stage_options={"head_dropout": 0.0})
    test_file = str(tmp_path / "held_out.jsonl")
    after = evaluate(run, {"held": test_file})["data"]["held"]["accuracy"]

    cfg = load_config(run / "config.yaml")  # an untrained classifier built the same way, same seed
    torch.manual_seed(cfg.train.seed)
    untrained, tokenizer = classify.build_model(cfg)
    probs = predict_proba(untrained.eval(), tokenizer, [r["text"] for r in held_out], 16, 16)
    before = float((probs.argmax(1) == torch.tensor([cfg.stage.labels.index(r["label"]) for r in held_out]))
                   .float().mean())
    assert after == 1.0 and after > before, (before, after)
    m = _summary(run)
    assert m["eval_loss"] < m["before_eval_loss"], m


# --------------------------------------------------------------------------- preferences

# The preferred reply always ends in "thanks", the other in "sorry": same length, same sum.
PAIR = lambda a, b: {"prompt": f"What is {a} plus {b}?", "chosen": f"{a + b}, thanks.", "rejected": f"{a + b}, sorry."}


def test_reward_model_learns_an_obvious_preference(tmp_path):
    run = _run(tmp_path, "reward", [PAIR(a, b) for a, b in TRAIN_SUMS], [PAIR(a, b) for a, b in HELD_OUT_SUMS],
               max_steps=10, batch_size=4, lr=1e-3)
    m = _summary(run)
    assert m["eval_accuracy"] == 1.0 and m["eval_accuracy"] > m["before_eval_accuracy"], m
    assert m["eval_margin"] > m["before_eval_margin"] + 1.0, m


def test_dpo_raises_the_held_out_margin(tmp_path):
    run = _run(tmp_path, "dpo", [PAIR(a, b) for a, b in TRAIN_SUMS], [PAIR(a, b) for a, b in HELD_OUT_SUMS],
               method="lora", max_steps=8, batch_size=4, lr=1e-2)
    m = _summary(run)
    assert m["before_eval_margin"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as its reference
    assert m["eval_margin"] > 0.2 and m["eval_accuracy"] == 1.0, m
    assert m["eval_reward_chosen"] > m["eval_reward_rejected"]


# --------------------------------------------------------------------------- rlhf (RLOO)


class ShortReplies(nn.Module):
    """A rule-based reward model: minus the number of tokens it scores, over max_new_tokens.

    Shaped like a loaded reward run's model (``model(input_ids, attention_mask).logits[:, 0]``), so
    the real ``reward.score`` drives it. The prompt's length is the same for every sample of a
    prompt, so only the response's length reaches the leave-one-out advantage.
    """

    def __init__(self, max_new_tokens: int):
        super().__init__()
        self.per_token = nn.Parameter(torch.tensor(1.0 / max_new_tokens))

    def forward(self, input_ids, attention_mask):
        return types.SimpleNamespace(logits=(-self.per_token * attention_mask.sum(1).float())[:, None])


def _rloo_steps(beta: float, steps: int) -> list[dict]:
    """Train tiny-llama (full) with the RLOO loss against ShortReplies; the logged metrics per step."""
    from tunelab.config import load_config
    from tunelab.methods import full
    from tunelab.runs.open import Loaded
    from tunelab.stages import rlhf
    from tunelab.stages._pairs import encode_prompt

    # Temperature 0.1: the random model then samples "\n" (stripped away: an empty reply) about a
    # third of the time, so short replies occur and can be reinforced.
    cfg = load_config({"model": "tiny-llama", "method": "full", "data": {"train": "unused.jsonl"},
                       "stage": {"name": "rlhf", "beta": beta, "samples_per_prompt": 4, "max_new_tokens": 6,
                                 "temperature": 0.1}})
    torch.manual_seed(0)
    policy, tokenizer = rlhf.build_model(cfg)
    policy = full.apply(policy, cfg.method)
    scorer = Loaded(ShortReplies(cfg.stage.max_new_tokens), tokenizer, cfg)
    loss_fn = rlhf.RLOOLoss(cfg, policy, tokenizer, scorer)
    prompts = ["What colour is snow?", "Name a fruit."]
    batch = rlhf.PromptCollator(tokenizer.pad_token_id)(
        [{"input_ids": encode_prompt(tokenizer, p, 48), "prompt": p} for p in prompts])
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    logged = []
    for _ in range(steps):
        policy.train()
        loss, _ = loss_fn(policy, batch, len(prompts))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logged.append(loss_fn.pop_metrics(training=True))
    return logged


def test_rloo_raises_a_rule_based_reward_and_the_kl_penalty_holds_the_policy_back():
    mean = lambda records, key: sum(r[key] for r in records) / len(records)
    free = _rloo_steps(beta=0.05, steps=6)
    assert free[0]["kl"] == 0.0  # the first samples come from the reference itself
    assert mean(free[-3:], "reward") > free[0]["reward"] + 0.5, free  # shorter replies
    held = _rloo_steps(beta=2.0, steps=6)
    assert mean(held[-3:], "kl") < 1.0 and mean(held[-3:], "kl") < mean(free[-3:], "kl") / 2, (held, free)
