"""A tiny classify world for sweeps: tiny-bert on SYNTHETIC love/hate sentences (learnt within a few steps)."""
from __future__ import annotations

from pathlib import Path

import yaml
from conftest import write_rows

THINGS = ["snow", "grass", "coal", "rust", "plums", "carrots", "bananas", "the sky", "rain", "tea",
          "music", "books", "dogs", "cats", "trains", "bread"]


def _row(i: int, thing: str, flip: bool = False) -> dict:
    positive = bool(i % 2) != flip
    return {"text": f"I {'love' if i % 2 else 'hate'} {thing}.", "label": "pos" if positive else "neg"}


def tiny_world(tmp_path: Path) -> dict[str, Path]:
    """Train rows, a held-out file, and the same held-out file with every label flipped (a metric made bad)."""
    train = [_row(i + j, t) for j, t in enumerate(THINGS[:12]) for i in (0, 1)]
    held = [_row(i + j, t) for j, t in enumerate(THINGS[12:]) for i in (0, 1)]
    flipped = [_row(i + j, t, flip=True) for j, t in enumerate(THINGS[12:]) for i in (0, 1)]
    return {"train": write_rows(tmp_path / "train.jsonl", train), "held": write_rows(tmp_path / "held.jsonl", held),
            "flipped": write_rows(tmp_path / "flipped.jsonl", flipped)}


def base_config(files: dict[str, Path], **train) -> dict:
    settings = {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "max_length": 16, "warmup_ratio": 0.0,
                "scheduler": "constant", "logging_steps": 1, "save_steps": 0, "eval_before": False, "eval_steps": 1}
    settings.update(train)
    return {"model": "tiny-bert", "stage": {"name": "classify", "head_dropout": 0.0}, "method": "full",
            "data": {"train": str(files["train"]), "eval": str(files["held"])}, "train": settings}


def sweep_file(tmp_path: Path, sweep: dict, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path
