"""Repurposing: the whole backbone is frozen and only a new task head trains.

The backbone never changes, so each example's pooled features are computed once and cached
(``models/feature_cache.py``): every later epoch, and every later run on the same model and
data, trains the head on cached features only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..core.errors import TunelabError
from ..models import SEQ_CLS
from .base import MethodConfig

DIRECTORY = "head"  # run_dir/head/head.safetensors (+ head.json)


def _needs_a_classifier(stage: str = "sft/pretrain") -> TunelabError:
    return TunelabError(f"method 'head' trains a task head on frozen features; it needs stage classify, "
                        f"not a generative stage ({stage})")


def check_stage(stage) -> None:
    """Before anything loads: only a stage that trains a classifier (classify, reward) has a head."""
    if stage.MODEL_KIND != SEQ_CLS:
        raise _needs_a_classifier(stage.Config.model_fields["name"].default)


# The backbone runs once per example, outside autocast, for fp32 features the cache keeps.
FP32_BASE = "its backbone runs once per example, in fp32, for the feature cache"


class Config(MethodConfig):
    name: Literal["head"] = "head"
    cache_dir: str | None = Field(
        None, description="Where cached features live (default: <tunelab cache>/features, e.g. ~/.cache/tunelab)."
    )


def apply(model, cfg: Config):
    from ..models.classifier import head_module, is_classifier
    from ..models.feature_cache import CachedFeatureHead

    if not is_classifier(model):
        raise _needs_a_classifier()
    for param in model.parameters():
        param.requires_grad_(False)
    for param in head_module(model).parameters():
        param.requires_grad_(True)
    from ..models import cache_root

    return CachedFeatureHead(model, Path(cfg.cache_dir) if cfg.cache_dir else cache_root() / "features")


def _unwrap(model):
    from ..models.feature_cache import CachedFeatureHead

    return model.model if isinstance(model, CachedFeatureHead) else model


def save(model, run_dir: Path) -> None:
    from safetensors.torch import save_file

    from ..models.classifier import head_module, head_name
    from ..models.feature_cache import fingerprint

    model = _unwrap(model)
    directory = run_dir / DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous() for key, value in head_module(model).state_dict().items()}
    save_file(state, str(directory / "head.safetensors"), metadata={"method": "head"})
    info = {"head_module": head_name(model), "params": sum(v.numel() for v in state.values()),
            "backbone_fingerprint": fingerprint(model)}
    (directory / "head.json").write_text(json.dumps(info, indent=2) + "\n")


def load(model, run_dir: Path, cfg: Config):
    from safetensors.torch import load_file

    from ..models.classifier import head_module, is_classifier

    file = run_dir / DIRECTORY / "head.safetensors"
    if not file.is_file():
        raise TunelabError(f"run {run_dir} has no {DIRECTORY}/head.safetensors to load")
    if not is_classifier(model):
        raise TunelabError(f"run {run_dir}: method 'head' needs a classifier model")
    try:
        head_module(model).load_state_dict(load_file(str(file)))
    except RuntimeError as exc:
        raise TunelabError(f"run {run_dir}: the saved head does not fit this model ({str(exc).splitlines()[0]})") from None
    return model


def merge(model):
    return _unwrap(model)  # the backbone never changed: base + head is already a plain model
