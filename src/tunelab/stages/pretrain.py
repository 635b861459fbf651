"""Stage `pretrain`: continued self-supervised next-token training on raw domain text."""
from __future__ import annotations

from typing import Literal

from ..data import load_examples
from ..data.tokenize import encode_text
from ..models import CAUSAL_LM
from ._lm import PadCollator, causal_lm_loss, check_not_empty
from .base import StageConfig


class Config(StageConfig):
    name: Literal["pretrain"] = "pretrain"


MODEL_KIND = CAUSAL_LM
ACCEPTS = ("text",)
KEY_METRIC = "eval_perplexity"


def build_datasets(cfg, tokenizer) -> tuple[list[dict], list[dict]]:
    examples = load_examples(cfg.data, cfg.train.seed, ACCEPTS)
    max_length = cfg.train.max_length

    def encode(rows):
        return [window for row in rows for window in encode_text(tokenizer, row["text"], max_length)]

    train, eval_ = encode(examples.train), encode(examples.eval)
    check_not_empty(train, eval_, max_length, len(examples.train), cfg.data.train)
    return train, eval_


def collate(tokenizer):
    return PadCollator(tokenizer.pad_token_id)


compute_loss = causal_lm_loss
