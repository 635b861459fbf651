"""Stage `pretrain`: continued self-supervised next-token training on raw domain text."""
from __future__ import annotations

from typing import Literal

from ..data import load_examples
from ..data.tokenize import encode_text
from ..models import CAUSAL_LM
from ._lm import PadCollator, build_lm, causal_lm_loss, evaluate_lm, finish_datasets
from .base import StageConfig


class Config(StageConfig):
    name: Literal["pretrain"] = "pretrain"


MODEL_KIND = CAUSAL_LM
ACCEPTS = ("text",)
KEY_METRIC = "eval_perplexity"
LOSS_IS_NLL = True  # eval loss is a per-token negative log-likelihood: exp(loss) is perplexity


def build_datasets(cfg, tokenizer) -> tuple[list[dict], list[dict]]:
    examples = load_examples(cfg.data, cfg.train.seed, ACCEPTS)
    max_length = cfg.train.max_length

    def encode(rows):
        return [window for row in rows for window in encode_text(tokenizer, row["text"], max_length)]

    return finish_datasets(encode(examples.train), encode(examples.eval), cfg.train, len(examples.train),
                           cfg.data.describe())


def collate(tokenizer):
    return PadCollator(tokenizer.pad_token_id)


build_model = build_lm
compute_loss = causal_lm_loss
evaluate = evaluate_lm  # loss and perplexity on held-out text or chats
# No --generate: a pretrain run continues raw-text training, so it has no answering behaviour to
# score (ROUGE-L of a base model's replies measures the chat template, not the adaptation).
EVAL_OPTIONS = ()
