"""Pieces shared by the preference stages (reward, dpo, rlhf): prompts, pairs, ratings -> pairs.

A prompt is either plain text (one user turn) or an HH-RLHF transcript
("\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:"), which is split into
chat turns so a chat model sees it in its own template.
"""
from __future__ import annotations

import itertools
import re

from ..core import console
from ..core.errors import TunelabError
from ..data import load_examples
from ..data.tokenize import ensure_chat_template

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def prompt_messages(prompt: str) -> list[dict]:
    """A prompt as chat messages ending with a user turn (HH transcripts keep their turns)."""
    parts = _HH_TURN.split(prompt)
    if len(parts) < 3:  # no "Human:" marker: the whole prompt is one user message
        return [{"role": "user", "content": prompt.strip()}]
    messages = []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        if text.strip():
            messages.append({"role": _HH_ROLES[speaker], "content": text.strip()})
    return messages or [{"role": "user", "content": prompt.strip()}]  # HH prompts end with an empty "Assistant:"


def _uses_chat(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer, prompt: str) -> str:
    """The text a policy continues: the chat-rendered prompt with the assistant turn opened."""
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(prompt_messages(prompt), tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, prompt: str, max_length: int) -> list[int]:
    """Prompt tokens for generation, cut from the left so the latest turn survives."""
    ids = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    return ids[-max_length:]


def encode_prompt_response(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """(token ids, number of leading prompt tokens) for one prompt + response.

    Chat tokenizers: the chat template with the response as the assistant reply (the reply's
    tokens are the ones after ``prompt_len``). Others (BERT): a text pair with [CLS]/[SEP].
    Too long: the prompt loses tokens from its start; the response keeps at least half the budget.
    """
    if _uses_chat(tokenizer):
        head = prompt_text(tokenizer, prompt)
        full = tokenizer.apply_chat_template(prompt_messages(prompt) + [{"role": "assistant", "content": response.strip()}],
                                             tokenize=False)
        tail = full[len(head):] if full.startswith(head) else response.strip()
        specials = 0
    else:
        head, tail = prompt.strip(), response.strip()
        specials = 3 if tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None else 0
    p_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    budget = max_length - specials
    r_ids = r_ids[: max(budget // 2, budget - len(p_ids))]
    p_ids = p_ids[len(p_ids) - (budget - len(r_ids)):] if len(p_ids) + len(r_ids) > budget else p_ids
    if specials:
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        return [cls] + p_ids + [sep] + r_ids + [sep], len(p_ids) + 2
    return p_ids + r_ids, len(p_ids)


def ratings_to_pairs(rows: list[dict]) -> tuple[list[dict], int]:
    """Rated responses -> preference pairs: for one prompt, a higher score beats a lower one.

    Returns (pairs, ties): equal scores make no pair (counted in ``ties``); a response rated
    twice counts once (its mean score).
    """
    by_prompt: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt"], {}).setdefault(row["response"].strip(), []).append(row["score"])
    pairs, ties = [], 0
    for prompt, responses in by_prompt.items():
        scored = sorted(((sum(s) / len(s), text) for text, s in responses.items()), key=lambda x: -x[0])
        for (high, better), (low, worse) in itertools.combinations(scored, 2):
            if high == low:
                ties += 1
                continue
            pairs.append({"prompt": prompt, "chosen": better, "rejected": worse, "margin": high - low})
    return pairs, ties


def load_pairs(cfg, stage_name: str) -> tuple[list[dict], list[dict]]:
    """Train/eval preference pairs from `preference` data, or from `rating` data turned into pairs."""
    examples = load_examples(cfg.data, cfg.train.seed, ("preference", "rating"))
    if examples.format == "preference":
        return examples.train, examples.eval
    train, train_ties = ratings_to_pairs(examples.train)
    eval_, eval_ties = ratings_to_pairs(examples.eval)
    console.note(f"note: {stage_name}: {len(examples.train) + len(examples.eval)} ratings -> {len(train)} train / "
                 f"{len(eval_)} eval pairs (higher score beats lower for the same prompt; "
                 f"{train_ties + eval_ties} equal-score pairs skipped)")
    if not train:
        raise TunelabError(f"data {cfg.data.describe()}: the ratings make no preference pairs (a pair needs two "
                           f"responses to the same prompt with different scores)")
    return train, eval_


def item_labels(n: int) -> dict:
    """One dummy label per item (pair or prompt), for a batch whose loss averages over items.

    The Trainer needs "labels" to compute an eval loss, and counts them (num_items_in_batch) so
    gradient accumulation averages over every item of a step. For causal LMs it counts
    ``labels[..., 1:]`` (token labels shift), which would drop one item per batch; a
    ``shift_labels`` entry is counted as is.
    """
    from ..core.lazy import torch

    labels = torch.zeros(n, dtype=torch.long)
    return {"labels": labels, "shift_labels": labels}


class Meter:
    """Averages of named numbers since the last ``pop``, kept apart for training and evaluation."""

    def __init__(self):
        self.sums: dict[bool, dict[str, float]] = {True: {}, False: {}}
        self.counts: dict[bool, dict[str, int]] = {True: {}, False: {}}

    def add(self, training: bool, name: str, total: float, count: int = 1) -> None:
        self.sums[training][name] = self.sums[training].get(name, 0.0) + float(total)
        self.counts[training][name] = self.counts[training].get(name, 0) + count

    def pop(self, training: bool, prefix: str = "") -> dict:
        out = {prefix + k: v / max(self.counts[training][k], 1) for k, v in self.sums[training].items()}
        self.sums[training], self.counts[training] = {}, {}
        return out


# --------------------------------------------------------------------------- evaluation


def read_eval_file(name: str, file: str, options, accepts=("preference", "rating")) -> tuple[str, list[dict]]:
    """(format, rows) of a test file for a preference stage's evaluation."""
    from ..data import load_file
    from .base import cap

    fmt, rows = load_file(file)
    if fmt not in accepts:
        raise TunelabError(f"--data {name}={file} is in format '{fmt}'; this run is scored on "
                           f"{' or '.join(accepts)} data")
    return fmt, cap(rows, options)


def eval_pairs(name: str, file: str, fmt: str, rows: list[dict]) -> list[dict]:
    """Preference pairs of a test file (rating rows are turned into pairs)."""
    pairs = rows if fmt == "preference" else ratings_to_pairs(rows)[0]
    if not pairs:
        raise TunelabError(f"--data {name}={file}: no preference pairs to score (ratings of one prompt need "
                           "different scores to make a pair)")
    return pairs


def metered_eval(loss_fn, model, examples: list[dict], collator, batch_size: int) -> dict:
    """Run a stage's loss over ``examples`` in eval mode; the metrics its meter collected (eval_ prefix dropped)."""
    from ..core.lazy import torch

    model.eval()
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            loss_fn(model, collator(examples[start : start + batch_size]))
    return {key.removeprefix("eval_"): value for key, value in loss_fn.pop_metrics(training=False).items()}
