"""(IA)³ (Liu et al. 2022) through peft: learned vectors rescale keys, values and FFN activations."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..core.errors import TunelabError
from . import _peft
from .base import MethodConfig


class Config(MethodConfig):
    name: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(
        None, description="Modules whose output is rescaled (default: peft's choice per architecture, e.g. k/v/down_proj)."
    )
    feedforward_modules: list[str] | None = Field(
        None, description="Subset of target_modules rescaled at the input instead (feed-forward layers)."
    )


def apply(model, cfg: Config):
    from peft import IA3Config

    if cfg.feedforward_modules is not None and cfg.target_modules is None:
        raise TunelabError("method.feedforward_modules needs method.target_modules to be set too")
    if cfg.target_modules is not None and not set(cfg.feedforward_modules or []) <= set(cfg.target_modules):
        raise TunelabError("method.feedforward_modules must be a subset of method.target_modules")
    peft_cfg = IA3Config(task_type=_peft.task_type(model), target_modules=cfg.target_modules,
                         feedforward_modules=cfg.feedforward_modules if cfg.target_modules is not None else None)
    return _peft.wrap(model, peft_cfg)


# Saved/loaded in standard peft format (adapter/), foldable into the base weights.
save, load, merge = _peft.save, _peft.load, _peft.merge
