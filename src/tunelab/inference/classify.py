"""Class probabilities for raw texts from a sequence classifier."""
from __future__ import annotations

from ..core.lazy import torch
from ..data.collate import pad_right


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def predict_proba(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 16) -> "torch.Tensor":
    """Class probabilities (N, L) for raw texts; batches sorted by length so padding stays small."""
    encoded = encode_texts(tokenizer, texts, max_length)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    probs = [None] * len(encoded)
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            input_ids, attention_mask = pad_right([encoded[i] for i in index], tokenizer.pad_token_id)
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float()
            for i, row in zip(index, torch.softmax(logits, dim=-1).cpu()):
                probs[i] = row
    return torch.stack(probs)
