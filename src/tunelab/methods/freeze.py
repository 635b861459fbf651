"""Partial fine-tuning: freeze the backbone except its top ``k`` blocks and/or named parameters.

The task head (``score``/``classifier`` of a sequence-classification model) always trains.
Only the trainable tensors are saved; loading copies them into a fresh base.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..core.errors import TunelabError
from ._structure import find_blocks, head_parameter_names, load_into, train_only, trainable_state
from .base import MethodConfig

WEIGHTS = Path("weights") / "trainable.safetensors"


class Config(MethodConfig):
    name: Literal["freeze"] = "freeze"
    k: int = Field(2, ge=0, description="Train the top k transformer blocks (0: none, only patterns and head).")
    trainable_patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions searched in parameter names; matches also train (e.g. 'norm', 'embed_tokens').",
    )


def _pattern_matches(model, patterns: list[str]) -> set[str]:
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    matched: set[str] = set()
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise TunelabError(f"method.trainable_patterns: {pattern!r} is not a regular expression ({exc})") from None
        hits = {name for name in names if regex.search(name)}
        if not hits:
            raise TunelabError(f"method.trainable_patterns: {pattern!r} matches no parameter of the model "
                               f"(e.g. {names[0]}, {names[-1]})")
        matched |= hits
    return matched


def apply(model, cfg: Config):
    blocks_name, blocks = find_blocks(model, "method.k")
    if cfg.k > len(blocks):
        raise TunelabError(f"method.k={cfg.k} but {type(model).__name__} has only {len(blocks)} "
                           f"transformer blocks ({blocks_name})")
    top = tuple(f"{blocks_name}.{i}." for i in range(len(blocks) - cfg.k, len(blocks)))
    names = {name for name, _ in model.named_parameters(remove_duplicate=False) if name.startswith(top)}
    names |= _pattern_matches(model, cfg.trainable_patterns)
    names |= set(head_parameter_names(model))
    if not names:
        raise TunelabError("method.k=0 with no method.trainable_patterns and no task head: nothing would train")
    train_only(model, names)
    return model


def save(model, run_dir: Path) -> None:
    from safetensors.torch import save_file

    (run_dir / WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(run_dir / WEIGHTS), metadata={"method": "freeze"})


def load(model, run_dir: Path, cfg: Config):
    model = apply(model, cfg)
    load_into(model, run_dir / WEIGHTS, "freeze")
    return model


def merge(model):
    return model  # the weights are already plain transformers weights
