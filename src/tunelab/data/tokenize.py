"""Tokenise canonical examples for causal-LM stages, marking which tokens carry loss."""
from __future__ import annotations

IGNORE = -100  # label value ignored by the loss

# ChatML, used only when a tokenizer ships no chat template of its own.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def _render(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render_chat(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation with the tokenizer's chat template.

    Returns the text and the character spans of every assistant reply (including the
    template's end-of-turn marker, so the model learns to stop).
    """
    ensure_chat_template(tokenizer)
    full = _render(tokenizer, messages)
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1])
        if full.startswith(upto) and upto.startswith(before):
            start, end = len(before), len(upto)
        else:  # template not prefix-stable (e.g. it injects dates): locate the reply text itself
            start = full.find(message["content"], cursor)
            end = start + len(message["content"])
        spans.append((start, end))
        cursor = end
    return full, spans


def encode_chat(tokenizer, messages: list[dict], max_length: int, last_only: bool = False) -> dict | None:
    """Tokens of a rendered chat with labels only on assistant replies (``last_only``: only on the final
    one, e.g. a reference answer after demonstrations); None if none survive truncation."""
    text, spans = render_chat(tokenizer, messages)
    spans = spans[-1:] if last_only else spans
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][:max_length]
    labels = [IGNORE] * len(ids)
    for index, (start, end) in enumerate(enc["offset_mapping"][: len(ids)]):
        if end > start and any(s <= start and end <= e for s, e in spans):
            labels[index] = ids[index]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def encode_text(tokenizer, text: str, max_length: int) -> list[dict]:
    """Raw text -> one or more windows of at most max_length tokens, every token trained."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    windows = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
    return [{"input_ids": w, "labels": list(w)} for w in windows if len(w) > 1]
