"""Sequence classifiers on pretrained backbones: pooling, a new head, pooled features, prediction.

The model is transformers' own ``AutoModelForSequenceClassification`` (so peft and every method
see a stock model), adjusted in two places only:

- decoders (llama family) pool the last non-padding token — transformers already does this,
  taking the rightmost token that is not ``pad_token_id``, which is right for right padding;
- encoders (BERT family) get a weight-free pooler: the mean over non-padding tokens (what
  sentence-transformers models were trained with) or the first ([CLS]) token's hidden state;
- the head (``score`` / ``classifier``) is a fresh linear layer or a small MLP.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.errors import TunelabError
from .loading import SEQ_CLS, load_model

POOLINGS = ("auto", "last", "mean", "cls")
DECODER, ENCODER = "decoder", "encoder"


class MaskedPooler(nn.Module):
    """Replaces an encoder's pooler: mean over non-padding tokens, or the [CLS] token. No weights."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.mask: torch.Tensor | None = None  # set by a pre-hook on the encoder for each call

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, H)
        if self.mode == "cls":
            return hidden[:, 0]
        if self.mask is None:
            return hidden.mean(dim=1)
        mask = self.mask[:, -hidden.shape[1]:]  # prefix tuning prepends virtual-token columns
        mask = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def _remember_mask(module, args, kwargs):
    """Pre-hook on the encoder: hand this call's attention mask to its pooler.

    It finds the pooler through the module it runs on (not a closure over one pooler), so a
    deep copy of the model (an evaluation's merged copy) feeds its own pooler.
    """
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    if isinstance(module.pooler, MaskedPooler):
        module.pooler.mask = mask


def family(model) -> str:
    """``decoder`` (head ``score`` over the last token) or ``encoder`` (pooler + ``classifier``)."""
    base = getattr(model, "base_model", None)
    if hasattr(model, "score") and base is not None and not hasattr(base, "pooler"):
        return DECODER
    if hasattr(model, "classifier") and base is not None and hasattr(base, "pooler"):
        return ENCODER
    raise TunelabError(
        f"{type(model).__name__} is not a supported classifier (need a llama-style decoder or a BERT-style encoder)"
    )


def head_name(model) -> str:
    return "score" if family(model) == DECODER else "classifier"


def head_module(model) -> nn.Module:
    return getattr(model, head_name(model))


def is_classifier(model) -> bool:
    try:
        family(model)
    except TunelabError:
        return False
    return True


def resolve_pooling(model, pooling: str) -> str:
    kind = family(model)
    if pooling == "auto":
        return "last" if kind == DECODER else "mean"
    allowed = ("last",) if kind == DECODER else ("mean", "cls")
    if pooling not in allowed:
        raise TunelabError(f"stage.pooling={pooling} does not apply to {kind} models; use: auto, {', '.join(allowed)}")
    return pooling


def _new_head(hidden: int, num_labels: int, head: str, head_hidden: int | None, dropout: float) -> nn.Module:
    if head == "linear":
        return nn.Linear(hidden, num_labels)
    width = head_hidden or hidden
    return nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, num_labels))


def build_classifier(spec: str, labels: list[str], head: str = "linear", pooling: str = "auto",
                     head_hidden: int | None = None, head_dropout: float = 0.1):
    """(model, tokenizer): ``spec``'s backbone with the given pooling and a new head for ``labels``."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is new by design: no "newly initialized" report
    try:
        model, tokenizer = load_model(spec, SEQ_CLS, num_labels=len(labels))
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    mode = resolve_pooling(model, pooling)
    if family(model) == ENCODER:
        pooler = MaskedPooler(mode)
        model.base_model.pooler = pooler
        model.base_model.register_forward_pre_hook(_remember_mask, with_kwargs=True)
    hidden = model.config.get_text_config().hidden_size
    setattr(model, head_name(model), _new_head(hidden, len(labels), head, head_hidden, head_dropout))
    return model, tokenizer


def pooling_signature(model) -> str:
    """What decides the pooled features besides the weights (part of the head method's cache key)."""
    if family(model) == ENCODER:
        pooler = model.base_model.pooler
        return f"encoder:{getattr(pooler, 'mode', type(pooler).__name__)}"
    return f"decoder:last-non-pad:{model.config.get_text_config().pad_token_id}"


def pooled_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The vector the head sees for each example: (B, T) ids -> (B, H) features."""
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask)
    if family(model) == ENCODER:
        return out.pooler_output
    hidden = out.last_hidden_state  # (B, T, H)
    pad_id = model.config.get_text_config().pad_token_id
    # transformers' rule: the rightmost token that is not padding.
    non_pad = (input_ids != pad_id).to(torch.int32)
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32)
    last = (positions * non_pad).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def head_logits(model, features: torch.Tensor) -> torch.Tensor:
    """Apply the head (and the encoder's classifier dropout) to pooled features: (B, H) -> (B, L)."""
    if family(model) == ENCODER:
        features = model.dropout(features)
    return head_module(model)(features)
