"""Sequence-classifier logits for many token sequences at once, without padding where the model allows.

Decoders (llama family) with SDPA attention: sequences are packed end to end into rows of at
most ``max_tokens`` tokens, positions restarting at 0 for each, and run through the backbone
with tunelab's per-example attention (:mod:`.packed_attention`), so no token attends across
sequences and no padding is computed at all. Each sequence is pooled the way transformers pools
a padded batch — its rightmost token that is not ``pad_token_id`` — and the head applied to
those vectors only. Anything else (encoders, which attend both ways; peft-wrapped models; eager
attention) runs in length-sorted batches padded to their longest row, each at most
``max_tokens`` padded slots, so padding stays small and memory bounded.

Both give the stock padded forward's logits up to float rounding (tests/stages/test_scoring.py).
"""
from __future__ import annotations

import contextlib

from ..core.lazy import torch

PACKED = "tunelab_packed_sdpa"  # models.packed_attention.NAME (that module imports torch: imported when used)


def sorted_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices, shortest first, in batches whose rows x longest row stays within ``max_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[i] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def packed_rows(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices, longest first, in rows of at most ``max_tokens`` tokens (a longer one alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    used: list[int] = []
    for i in order:  # first fit: lengths only fall, so earlier rows take the short tail
        for r, total in enumerate(used):
            if total + lengths[i] <= max_tokens:
                rows[r].append(i)
                used[r] += lengths[i]
                break
        else:
            rows.append([i])
            used.append(lengths[i])
    return rows


def can_pack(model) -> bool:
    """Whether ``model``'s own forward can run packed rows with per-example attention."""
    if hasattr(model, "peft_config"):  # a peft wrapper: prompt learning would leak across sequences
        return False
    config = getattr(model, "config", None)  # None: a plain module scoring by its own rule (tests' rule rewards)
    return config is not None and config._attn_implementation in ("sdpa", PACKED)


@contextlib.contextmanager
def packed_attention_on(model):
    """Per-example attention for maskless packed rows, switched on for the block and back after."""
    from ..models import packed_attention

    before = model.config._attn_implementation
    if before != PACKED:
        model.set_attn_implementation(packed_attention.register())
    try:
        yield model
    finally:
        if before != PACKED:
            model.set_attn_implementation(before)


def _last_kept(ids: list[int], pad_id) -> int:
    """transformers' pooling rule: the rightmost token that is not padding (the first when all are)."""
    for j in range(len(ids) - 1, -1, -1):
        if ids[j] != pad_id:
            return j
    return 0


def _packed_logits(model, sequences: list[list[int]], max_tokens: int, device) -> list:
    from ..models.classifier import head_logits

    pad_id = model.config.get_text_config().pad_token_id
    out: list = [None] * len(sequences)
    with packed_attention_on(model):
        for row in packed_rows([len(s) for s in sequences], max_tokens):
            ids, positions, pooled, start = [], [], [], 0
            for i in row:
                ids += sequences[i]
                positions += range(len(sequences[i]))
                pooled.append(start + _last_kept(sequences[i], pad_id))
                start += len(sequences[i])
            hidden = model.base_model(input_ids=torch.tensor([ids], device=device),
                                      position_ids=torch.tensor([positions], device=device),
                                      use_cache=False).last_hidden_state  # (1, T, H)
            logits = head_logits(model, hidden[0, torch.tensor(pooled, device=device)]).float().cpu()
            for i, value in zip(row, logits):
                out[i] = value
    return out


def _padded_logits(model, sequences: list[list[int]], max_tokens: int, pad_id: int, device) -> list:
    from ..data.collate import pad_right

    out: list = [None] * len(sequences)
    for batch in sorted_batches([len(s) for s in sequences], max_tokens):
        input_ids, attention_mask = pad_right([sequences[i] for i in batch], pad_id)
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float().cpu()
        for i, value in zip(batch, logits):
            out[i] = value
    return out


def classifier_logits(model, sequences: list[list[int]], max_tokens: int, pad_id: int) -> torch.Tensor:
    """Logits (N, L) of a sequence classifier for token sequences, in their order, in inference mode."""
    if not sequences:
        return torch.empty(0, model.config.num_labels)
    device = next(model.parameters()).device
    max_tokens = max(max_tokens, max(map(len, sequences)))
    from ..models.classifier import DECODER, family

    with torch.inference_mode():
        if can_pack(model) and family(model) == DECODER:
            rows = _packed_logits(model, sequences, max_tokens, device)
        else:
            rows = _padded_logits(model, sequences, max_tokens, pad_id, device)
    return torch.stack(rows)
