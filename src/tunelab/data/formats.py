"""Detect a row format from its fields and normalise rows to canonical examples.

Canonical examples:
  text            {"text": str}
  instruction     {"messages": [...]}   (Dolly instruction/context/response, Alpaca instruction/input/output)
  messages        {"messages": [{"role", "content"}, ...]}   (OpenAI; ShareGPT from/value is converted)
  classification  {"text": str, "label": str}
  preference      {"prompt": str, "chosen": str, "rejected": str}
  rating          {"prompt": str, "response": str, "score": float}   (score in RATING_RANGE)
"""
from __future__ import annotations

from ..core.errors import TunelabError

FORMATS = ("text", "instruction", "messages", "classification", "preference", "rating")
RATING_RANGE = (1, 5)  # the scale people use on the feedback page

# Required canonical fields per format, in detection order (most specific first).
REQUIRED = {
    "preference": ("prompt", "chosen", "rejected"),
    "rating": ("prompt", "response", "score"),
    "messages": ("messages",),
    "instruction": ("instruction", "response"),
    "classification": ("text", "label"),
    "text": ("text",),
}
# Other datasets' names for canonical fields (Alpaca, ShareGPT, question-answering sets such as MedQuAD).
ALIASES = {"output": "response", "input": "context", "conversations": "messages", "question": "instruction",
           "answer": "response"}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


def map_fields(row: dict, fields: dict[str, str]) -> dict:
    """Rename the file's columns to canonical names (explicit mapping first, then aliases)."""
    out = dict(row)
    for canonical, column in fields.items():
        if column in row:
            out[canonical] = row[column]
    for alias, canonical in ALIASES.items():
        if alias in out and canonical not in out:
            out[canonical] = out[alias]
    return out


def detect_format(row: dict, source: str) -> str:
    for fmt, required in REQUIRED.items():
        if all(key in row for key in required):
            return fmt
    raise TunelabError(
        f"data {source}: cannot detect the format from fields {sorted(row)}; set data.format "
        f"and map columns with data.fields (formats: {', '.join(FORMATS)})"
    )


def _text(row: dict, key: str, fmt: str, where: str, allow_empty: bool = False) -> str:
    if key not in row or row[key] is None:
        raise TunelabError(f"{where}: field '{key}' is missing (format '{fmt}')")
    value = row[key]
    if not isinstance(value, (str, int, float, bool)):
        raise TunelabError(f"{where}: field '{key}' must be text, got {type(value).__name__}")
    value = str(value)
    if not allow_empty and not value.strip():
        raise TunelabError(f"{where}: field '{key}' is empty (format '{fmt}')")
    return value


def _score(row: dict, where: str) -> float:
    value = row.get("score")
    low, high = RATING_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TunelabError(f"{where}: field 'score' must be a number {low}..{high}, got {value!r}")
    try:
        score = float(value)
    except ValueError:
        raise TunelabError(f"{where}: field 'score' must be a number {low}..{high}, got {value!r}") from None
    if not low <= score <= high:
        raise TunelabError(f"{where}: field 'score' is {value!r}, outside the rating range {low}..{high}")
    return score


def _messages(row: dict, where: str) -> list[dict]:
    raw = row.get("messages")
    if not isinstance(raw, list) or not raw:
        raise TunelabError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}")
    messages = []
    for turn, message in enumerate(raw):
        if not isinstance(message, dict):
            raise TunelabError(f"{where}: messages[{turn}] is not an object")
        if "from" in message and "value" in message:  # ShareGPT
            role = _SHAREGPT_ROLES.get(str(message["from"]).lower())
            content = message["value"]
        else:
            role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise TunelabError(f"{where}: messages[{turn}] has role {role!r}; use system, user or assistant")
        if not isinstance(content, str):
            raise TunelabError(f"{where}: messages[{turn}] has no text 'content'")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise TunelabError(f"{where}: no assistant message with text to train on")
    return messages


def normalise(row: dict, fmt: str, where: str, system_prompt: str | None = None) -> dict:
    """One raw (already field-mapped) row -> one canonical example."""
    if fmt == "text":
        return {"text": _text(row, "text", fmt, where)}
    if fmt == "classification":
        if "label" not in row or row["label"] is None or str(row["label"]).strip() == "":
            raise TunelabError(f"{where}: field 'label' is missing (format 'classification')")
        return {"text": _text(row, "text", fmt, where), "label": str(row["label"]).strip()}
    if fmt == "preference":
        pair = {key: _text(row, key, fmt, where, allow_empty=key == "prompt") for key in REQUIRED["preference"]}
        if pair["chosen"].strip() == pair["rejected"].strip():
            raise TunelabError(f"{where}: fields 'chosen' and 'rejected' are identical (format 'preference')")
        return pair
    if fmt == "rating":
        return {"prompt": _text(row, "prompt", fmt, where, allow_empty=True),
                "response": _text(row, "response", fmt, where), "score": _score(row, where)}
    if fmt == "instruction":
        instruction = _text(row, "instruction", fmt, where)
        context = row.get("context")
        user = f"{instruction}\n\n{context}" if isinstance(context, str) and context.strip() else instruction
        messages = [{"role": "user", "content": user},
                    {"role": "assistant", "content": _text(row, "response", fmt, where)}]
    elif fmt == "messages":
        messages = _messages(row, where)
    else:
        raise TunelabError(f"unknown data format '{fmt}'; choose from: {', '.join(FORMATS)}")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    return {"messages": messages}
