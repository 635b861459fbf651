"""LoRA (Hu et al. 2021) through peft: low-rank updates W + (alpha/r)·B·A on chosen linear layers."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from . import _peft
from .base import MethodConfig


class Config(MethodConfig):
    name: Literal["lora"] = "lora"
    r: int = Field(16, ge=1, description="Rank of the update matrices.")
    alpha: float = Field(32, gt=0, description="Scaling numerator: the update is scaled by alpha/r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch input (0 as in peft: no extra activation copy).")
    target_modules: str | list[str] = Field(
        "all-linear", description="`all-linear`, or module names/suffixes such as [q_proj, v_proj]."
    )
    use_dora: bool = Field(False, description="DoRA: learn a magnitude vector beside the LoRA direction.")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha/sqrt(r), stabler at high rank.")


def apply(model, cfg: Config):
    from peft import LoraConfig

    peft_cfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        task_type=_peft.task_type(model),
    )
    return _peft.wrap(model, peft_cfg)


# Saved/loaded in standard peft format (adapter/), foldable into the base weights.
save, load, merge = _peft.save, _peft.load, _peft.merge
