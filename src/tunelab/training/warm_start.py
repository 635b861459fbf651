"""``init_from: RUN_DIR`` — start a run from a finished run's trained weights.

The new run uses the same base model, stage and method as the earlier one; after the method is
applied, every weight of the earlier run's trained model (base, adapter, head — whatever its
method saved) is copied in by name. The new run then trains and saves as usual, so its run
directory is self-contained: loading it never needs the earlier run.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import TunelabError


def previous_config(cfg):
    """The earlier run's config, checked against this one (one-line error if incompatible)."""
    from ..models import resolve
    from ..runs.open import open_run

    info = open_run(cfg.init_from, "init_from")
    if info.baseline:
        raise TunelabError(f"init_from: {info.path} is {info.describe}; it has no trained weights to start from")
    prev = info.config
    if prev.model != cfg.model and resolve(prev.model) != resolve(cfg.model):
        raise TunelabError(f"init_from: run {info.path} was trained from model '{prev.model}', this run uses '{cfg.model}'")
    if prev.stage.name != cfg.stage.name:
        raise TunelabError(f"init_from: run {info.path} is a {prev.stage.name} run, this run is {cfg.stage.name}")
    if prev.method.name != cfg.method.name:
        raise TunelabError(
            f"init_from: run {info.path} used method '{prev.method.name}', this run uses '{cfg.method.name}'; "
            f"continue with the same method"
        )
    return prev


def inherit(cfg, stage) -> None:
    """Check the earlier run; let the stage take the settings it keeps across runs (e.g. labels)."""
    previous = previous_config(cfg)
    if hasattr(stage, "inherit"):
        stage.inherit(cfg, previous)


def _key_prefix(source: dict, target: dict, where: Path) -> str:
    """The prefix that maps the earlier model's parameter names onto this one's (a method may wrap the model)."""
    if all(key in target for key in source):
        return ""
    first = next(iter(source))
    for key in target:
        if key.endswith("." + first):
            prefix = key[: -len(first)]
            if all(prefix + k in target for k in source):
                return prefix
    unknown = next(k for k in source if k not in target)
    raise TunelabError(f"init_from: the weights of run {where} do not fit this model (no parameter '{unknown}'); "
                       f"use the same method settings")


def load_weights(model, cfg) -> None:
    """Copy the earlier run's trained weights into ``model`` (already built and method-applied)."""
    from ..runs.open import load

    where = Path(cfg.init_from)
    source = load(where).model.state_dict()
    target = model.state_dict()
    prefix = _key_prefix(source, target, where)
    for key, value in source.items():
        if target[prefix + key].shape != value.shape:
            raise TunelabError(
                f"init_from: '{key}' has shape {tuple(value.shape)} in run {where} but {tuple(target[prefix + key].shape)} "
                f"here; use the same labels and method settings"
            )
    model.load_state_dict({prefix + key: value for key, value in source.items()}, strict=False)
