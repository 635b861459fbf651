"""Full fine-tuning: every weight trains."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from .base import MethodConfig


class Config(MethodConfig):
    name: Literal["full"] = "full"


def apply(model, cfg: Config):
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def save(model, run_dir: Path) -> None:
    model.save_pretrained(run_dir / "model", safe_serialization=True)


def load(model, run_dir: Path, cfg: Config):
    return type(model).from_pretrained(run_dir / "model", dtype=model.dtype)
