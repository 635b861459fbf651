"""`tunelab data inspect`: format, size, token-length stats and one rendered example."""
from __future__ import annotations

import statistics

from . import load_examples, load_file
from .tokenize import IGNORE, encode_chat, render_chat

TRAIN_OPEN, TRAIN_CLOSE = "⟦", "⟧"  # marks the span that carries loss


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _lengths(fmt: str, examples: list[dict], tokenizer) -> list[int]:
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    if fmt in ("instruction", "messages"):
        return [len(tokenizer(render_chat(tokenizer, e["messages"])[0], add_special_tokens=False)["input_ids"])
                for e in examples]
    if fmt == "preference":
        return [count(e["prompt"] + e["chosen"]) for e in examples]
    if fmt == "rating":
        return [count(e["prompt"] + e["response"]) for e in examples]
    return [count(e["text"]) for e in examples]


def mark_trained(tokenizer, encoded: dict) -> str:
    """Decode an encoded example, wrapping loss-bearing runs of tokens in ⟦ ⟧."""
    pieces, inside = [], False
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        trained = label != IGNORE
        if trained != inside:
            pieces.append(TRAIN_OPEN if trained else TRAIN_CLOSE)
            inside = trained
        pieces.append(tokenizer.decode([token]))
    if inside:
        pieces.append(TRAIN_CLOSE)
    return "".join(pieces)


def inspect_data(source: str, tokenizer, data_format: str = "auto", fields: dict | None = None) -> dict:
    """``tokenizer``: a tokenizer, or a model spec whose tokenizer is loaded once the data has been read."""
    fmt, examples = load_file(source, data_format, fields)
    return {"source": source, **_describe(fmt, examples, _tokenizer(tokenizer))}


def inspect_mix(data_cfg, seed: int, accept: tuple[str, ...], tokenizer) -> dict:
    """A run config's training data as its run sees it: rows each source gives (``mix``), the eval split, and
    token stats and an example of the mixed training rows."""
    examples = load_examples(data_cfg, seed, accept)
    report = {"source": data_cfg.describe(), **_describe(examples.format, examples.train, _tokenizer(tokenizer))}
    report.update(eval_rows=len(examples.eval), eval_source=data_cfg.eval or examples.sources[0]["key"],
                  mix=examples.sources)
    return report


def _tokenizer(tokenizer):
    if isinstance(tokenizer, str):
        from ..models import load_tokenizer

        return load_tokenizer(tokenizer)
    return tokenizer


def _describe(fmt: str, examples: list[dict], tokenizer) -> dict:
    lengths = _lengths(fmt, examples, tokenizer)
    first = examples[0]
    if fmt in ("instruction", "messages"):
        rendered = mark_trained(tokenizer, encode_chat(tokenizer, first["messages"], max_length=10**9))
    elif fmt == "text":
        rendered = f"{TRAIN_OPEN}{first['text']}{TRAIN_CLOSE}"
    elif fmt == "classification":
        rendered = f"{first['text']}\n-> label: {first['label']}"
    elif fmt == "rating":
        rendered = f"PROMPT: {first['prompt']}\nRESPONSE: {first['response']}\nSCORE: {first['score']:g}"
    else:
        rendered = f"PROMPT: {first['prompt']}\nCHOSEN: {first['chosen']}\nREJECTED: {first['rejected']}"
    stats = {"min": min(lengths), "median": int(statistics.median(lengths)), "p95": _percentile(lengths, 0.95),
             "max": max(lengths)}
    report = {"format": fmt, "rows": len(examples), "tokens": stats, "example": rendered}
    if fmt == "classification":
        labels = [e["label"] for e in examples]
        report["labels"] = {label: labels.count(label) for label in sorted(set(labels))}
    return report
