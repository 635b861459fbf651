"""Answer quality on instruction/chat rows: how well a causal LM answers, not only how it predicts text.

Shared by the sft stage's evaluation and the generation baselines (zero-shot, ICL), so their
numbers compare: answer perplexity is the NLL of the reference final assistant reply given the
prompt (for single-turn rows exactly what ``evaluate_lm`` computes), ROUGE-L F is of greedy replies
to the first ``options.generate`` rows. A caller decides what each row is conditioned on
(``prompt_of``): the row's own prompt, or that prompt with demonstrations before it.
"""
from __future__ import annotations

import math
import time
from typing import Callable

from ..core.errors import TunelabError
from ..core.lazy import inference_mode
from ..data.tokenize import encode_chat, ensure_chat_template

CHAT_FORMATS = ("instruction", "messages")  # formats with a reference reply to score and compare against
SAMPLES = 5  # generated replies kept in the report, to read next to the numbers


def split_answer(messages: list[dict]) -> tuple[list[dict], str]:
    """(the messages before the final assistant reply, that reply): the prompt and its reference answer."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def final_prompts(rows: list[dict]) -> list[list[dict]]:
    """Each row conditioned on its own prompt only (no context): the sft stage and zero-shot."""
    return [split_answer(row["messages"])[0] for row in rows]


def prompt_ids(tokenizer, chat: list[dict]) -> list[int]:
    """The tokens a chat becomes with the generation prompt appended: what the model answers from."""
    ensure_chat_template(tokenizer)
    rendered = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def answer_nll(model, tokenizer, rows: list[dict], prompts: list[list[dict]], max_length: int,
               batch_size: int) -> dict:
    """NLL of each row's reference final reply after its prompt, on the reply's tokens only."""
    from ._lm import summed_nll

    examples = [encode_chat(tokenizer, prompt + [{"role": "assistant", "content": split_answer(row["messages"])[1]}],
                            max_length, last_only=True) for row, prompt in zip(rows, prompts)]
    kept = [e for e in examples if e is not None]
    total, tokens = summed_nll(model, tokenizer, kept, batch_size)
    if tokens == 0:
        raise TunelabError(f"no reference reply left to score within {max_length} tokens")
    mean = total / tokens
    return {"tokens": tokens, "loss": mean, "perplexity": math.exp(min(mean, 50)),
            "answers_cut": len(examples) - len(kept)}  # prompts so long that no answer token fit


@inference_mode
def generate_replies(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy replies to token prompts, batched (left-padded, so every row's reply starts at the same column).

    Every decoding step runs the whole model once per batch, so an unmerged adapter's extra
    matmuls cost on each of ``max_new_tokens`` steps: the adapter is merged once, on a copy.
    """
    from ..data.collate import pad_right
    from ..methods.inference import inference_model

    model = inference_model(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: little padding
    replies = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        input_ids, attention_mask = pad_right([prompts[i] for i in index], pad, left=True)  # (B, T)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad)  # (B, T + new)
        for row, i in enumerate(index):
            replies[i] = tokenizer.decode(out[row, input_ids.shape[1]:], skip_special_tokens=True).strip()
    return replies


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence of stemmed, lower-cased words; Lin 2004)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return sum(scores) / len(scores) if scores else float("nan")


def answer_quality(model, tokenizer, rows: list[dict], prompt_of: Callable[[list[dict]], list[list[dict]]],
                   options, max_length: int, score: bool = True) -> dict:
    """Prompt tokens per query, answer loss/perplexity (``score``) and latency; with ``options.generate``,
    ROUGE-L F of greedy replies to the first N rows.

    ``prompt_of(rows)`` gives the chat each row is answered from (batched, so a baseline can embed
    every query at once); ``max_length`` caps a scored prompt + reply, as ``train.max_length`` does.
    """
    model.eval()
    started = time.perf_counter()
    prompts = prompt_of(rows)
    ids = [prompt_ids(tokenizer, chat) for chat in prompts]
    report = answer_nll(model, tokenizer, rows, prompts, max_length, options.batch_size) if score else {}
    report["prompt_tokens_per_query"] = sum(map(len, ids)) / len(ids)
    if score:
        report["score_seconds_per_query"] = (time.perf_counter() - started) / len(rows)
    if options.generate:
        n = min(options.generate, len(rows))
        positions = getattr(model.config, "max_position_embeddings", None)
        room = positions - options.max_new_tokens if positions else None
        if room is not None and room < 1:
            raise TunelabError(f"--max-new-tokens {options.max_new_tokens} leaves no room for a prompt in the "
                               f"model's {positions} positions")
        cut = [p[-room:] if room is not None else p for p in ids[:n]]  # the end of an over-long prompt is kept
        started = time.perf_counter()
        replies = generate_replies(model, tokenizer, cut, options.max_new_tokens, options.batch_size)
        seconds = time.perf_counter() - started
        references = [split_answer(row["messages"])[1] for row in rows[:n]]
        report.update({"generated": n, "rouge_l": rouge_l(replies, references),
                       "generate_seconds_per_query": seconds / n, "max_new_tokens": options.max_new_tokens,
                       "prompts_cut": sum(len(a) != len(b) for a, b in zip(cut, ids)),
                       "samples": [{"reference": ref, "reply": reply}
                                   for ref, reply in zip(references[:SAMPLES], replies[:SAMPLES])]})
    return report
