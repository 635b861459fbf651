"""Turning token-id lists into padded batches: the one padding helper every stage and eval uses."""
from __future__ import annotations

from ..core.lazy import torch


def pad_right(sequences: list[list[int]], pad_id: int, left: bool = False):
    """Pad token-id lists to one width -> (input_ids, attention_mask), both (B, T).

    Right padding by default; ``left=True`` pads on the left (prompts that generation extends).
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask
