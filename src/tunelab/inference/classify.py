"""Class probabilities for raw texts from a sequence classifier."""
from __future__ import annotations

from ..core.lazy import torch


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def predict_proba(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 16) -> "torch.Tensor":
    """Class probabilities (N, L) for raw texts.

    At most ``batch_size x max_length`` tokens per forward: packed without padding where the model
    allows it, else in length-sorted padded batches (``stages._scoring``). A whole evaluation should
    hand in ``methods.inference.inference_model(model)``, the adapter merged once.
    """
    from ..stages._scoring import classifier_logits

    model.eval()
    encoded = encode_texts(tokenizer, texts, max_length)
    logits = classifier_logits(model, encoded, batch_size * max_length, tokenizer.pad_token_id)
    return torch.softmax(logits, dim=-1)
