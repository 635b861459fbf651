"""Stage `sft`: supervised fine-tuning on instruction/chat data; loss on assistant tokens only."""
from __future__ import annotations

from typing import Literal

from ..data import load_examples
from ..data.tokenize import encode_chat
from ..models import CAUSAL_LM
from ._lm import PadCollator, build_lm, causal_lm_loss, evaluate_lm, finish_datasets
from .base import StageConfig


class Config(StageConfig):
    name: Literal["sft"] = "sft"


MODEL_KIND = CAUSAL_LM
ACCEPTS = ("instruction", "messages")
KEY_METRIC = "eval_perplexity"
LOSS_IS_NLL = True  # eval loss is a per-token negative log-likelihood: exp(loss) is perplexity


def build_datasets(cfg, tokenizer) -> tuple[list[dict], list[dict]]:
    examples = load_examples(cfg.data, cfg.train.seed, ACCEPTS)
    max_length = cfg.train.max_length

    def encode(rows):
        encoded = [encode_chat(tokenizer, row["messages"], max_length) for row in rows]
        return [e for e in encoded if e is not None], sum(e is None for e in encoded)

    (train, dropped), (eval_, _) = encode(examples.train), encode(examples.eval)
    return finish_datasets(train, eval_, cfg.train, dropped, cfg.data.describe())


def collate(tokenizer):
    return PadCollator(tokenizer.pad_token_id)


build_model = build_lm
compute_loss = causal_lm_loss
evaluate = evaluate_lm  # loss and perplexity on held-out text or chats
EVAL_OPTIONS = ("generate", "max_new_tokens")  # ROUGE-L of greedy replies on top of perplexity
