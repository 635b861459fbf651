"""Prefix tuning (Li & Liang 2021) through peft: trained key/value vectors prepended in every layer.

Checked with transformers 5 llama: peft hands the prefix to the model as a ``DynamicCache``
holding ``num_virtual_tokens`` positions per layer, in training and in ``generate`` (tests
compare cached generation with an uncached greedy loop).

Classifiers: peft runs their prefix only through a ``past_key_values`` argument, which transformers
5.24 renamed; where the model no longer names it, ``_prefix_kv`` injects the same prefix at each
attention layer instead, and the saved adapter stays peft's (stock ``PeftModel`` loads it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..core.errors import TunelabError
from . import _peft
from .base import MethodConfig


# Packed rows rely on transformers' position_ids-based block mask, which it skips when a KV cache
# (here: the prefix) is present, so packed examples would attend to each other.
PACKING_UNSUPPORTED = "with a prefix in the KV cache transformers cannot keep packed examples apart"
# The prefix reaches the attention layers through peft's cache or runtime hooks, not through the weights.
ONNX_UNSUPPORTED = "its trained key/value prefix is injected into every attention layer at run time, not held in the weights"


class Config(MethodConfig):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, ge=1, description="Prefix length: key/value positions added in every layer.")
    prefix_projection: bool = Field(
        False, description="Reparameterise the prefix through a 2-layer MLP while training (Li & Liang 2021, sec. 4.3)."
    )
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="Hidden size of that MLP (default: the model's hidden size)."
    )


def apply(model, cfg: Config):
    from peft import PrefixTuningConfig

    from . import _prefix_kv

    if cfg.encoder_hidden_size is not None and not cfg.prefix_projection:
        raise TunelabError("method.encoder_hidden_size applies only with method.prefix_projection=true")
    width = cfg.encoder_hidden_size
    if cfg.prefix_projection and width is None:
        width = model.config.get_text_config().hidden_size  # peft has no default MLP width
    peft_cfg = PrefixTuningConfig(
        task_type=_peft.task_type(model),
        num_virtual_tokens=cfg.num_virtual_tokens,
        prefix_projection=cfg.prefix_projection,
        encoder_hidden_size=width,
    )
    return _prefix_kv.attach(_peft.wrap(model, peft_cfg))


def save(model, run_dir: Path) -> None:
    # With prefix_projection peft saves the MLP's output, so the loaded prefix needs no MLP.
    _peft.save(model, run_dir)


def load(model, run_dir: Path, cfg: Config):
    from . import _prefix_kv

    return _prefix_kv.attach(_peft.load(model, run_dir))
