"""Pieces shared by the causal-LM stages (pretrain, sft): batching and the next-token loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.tokenize import IGNORE


class PadCollator:
    """Right-pad input_ids/labels of a list of examples into a batch."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        width = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def causal_lm_loss(model, batch: dict, num_items_in_batch=None):
    """Next-token cross-entropy over labelled positions.

    Summed and divided by the number of loss-bearing tokens in the whole (accumulated)
    batch when the Trainer provides it, so gradient accumulation matches one big batch.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    outputs = model(**inputs)
    logits = outputs.logits[:, :-1, :]  # (B, T-1, V): position t predicts token t+1
    targets = batch["labels"][:, 1:]
    loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE).sum()
    return loss_sum / torch.clamp(torch.as_tensor(denominator, device=loss_sum.device), min=1), outputs


def check_not_empty(train: list, eval_: list, max_length: int, dropped: int, source: str) -> None:
    from ..errors import TunelabError

    if not train:
        raise TunelabError(
            f"data {source}: train.max_length={max_length} is too small for any example "
            f"({dropped} examples had no response tokens left after truncation)"
        )
