"""Prompt tuning (Lester et al. 2021) through peft: trained embeddings prepended to the input.

peft returns logits for the virtual tokens too, (B, n + T, V); a forward hook drops them so
the stage's loss sees (B, T, V) like every other method. ``generate`` is unaffected.

A decoder classifier (``LlamaForSequenceClassification``) pools the rightmost token that is not
padding by looking at ``input_ids``; peft passes ``inputs_embeds`` instead, so transformers falls
back to the last position, a pad token in every shorter row of a right-padded batch. Two hooks
restore the intended pooling from the attention mask.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..core.lazy import torch
from pydantic import Field

from . import _peft
from .base import MethodConfig


# peft drops position_ids for prompt tuning, and the virtual tokens would only lead a packed row.
PACKING_UNSUPPORTED = "peft ignores position_ids for prompt tuning and prepends the prompt once per row"
# The trained prompt is prepended by peft around the model (and re-pooled by hooks), not in its weights.
ONNX_UNSUPPORTED = "its trained virtual tokens are prepended around the model at run time, not held in the weights"


class Config(MethodConfig):
    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, ge=1, description="Trained embeddings prepended to every input.")
    init_text: str | None = Field(
        None, description="Initialise the prompt from this text's token embeddings (default: random)."
    )


def _drop_virtual_logits(model, args, kwargs, output):
    logits = getattr(output, "logits", None)
    if logits is not None and logits.dim() == 3:  # token-level logits: (B, n + T, V) -> (B, T, V)
        output.logits = logits[:, model.active_peft_config.num_virtual_tokens:]
    return output


def _pool_last_real_token(peft_model) -> None:
    base = peft_model.get_base_model()
    if not (type(base).__name__.endswith("ForSequenceClassification") and hasattr(base, "score")):
        return  # encoders pool the first token or a masked mean: nothing to fix
    seen = {}

    def remember_mask(module, args, kwargs):
        seen["mask"] = kwargs.get("attention_mask")  # (B, n + T), virtual tokens included

    def move_last_real_to_end(module, args, logits):  # (B, n + T, L): transformers then takes [:, -1]
        mask = seen.get("mask")
        if mask is None or logits.dim() != 3 or mask.shape[1] != logits.shape[1]:
            return logits
        positions = torch.arange(mask.shape[1], device=logits.device)
        last = (positions * mask.to(logits.device)).argmax(-1)  # rightmost real token per row
        logits = logits.clone()
        logits[:, -1] = logits[torch.arange(logits.shape[0], device=logits.device), last]
        return logits

    base.register_forward_pre_hook(remember_mask, with_kwargs=True)
    base.score.register_forward_hook(move_last_real_to_end)


def _with_hook(model):
    model.register_forward_hook(_drop_virtual_logits, with_kwargs=True)
    _pool_last_real_token(model)
    return model


def apply(model, cfg: Config):
    from peft import PromptTuningConfig

    text = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": cfg.init_text,
            "tokenizer_name_or_path": model.config._name_or_path} if cfg.init_text else {}
    peft_cfg = PromptTuningConfig(task_type=_peft.task_type(model), num_virtual_tokens=cfg.num_virtual_tokens, **text)
    return _with_hook(_peft.wrap(model, peft_cfg))


def save(model, run_dir: Path) -> None:
    _peft.save(model, run_dir)


def load(model, run_dir: Path, cfg: Config):
    return _with_hook(_peft.load(model, run_dir))
